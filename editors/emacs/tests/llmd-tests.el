;;; llmd-tests.el --- Tests of llmd.el against a real daemon -*- lexical-binding: t; -*-

;;; Commentary:

;; emacs --batch -Q -L editors/emacs -l editors/emacs/tests/llmd-tests.el \
;;   -f ert-run-tests-batch-and-exit
;; with $LLMD_SOCKET naming a daemon whose registry has the blueprints echo,
;; lines (300 lines), flood (2000 lines), slow and missing, and $LLMD_TEST_OUT
;; a file for the figures measured.  A test that stops the daemon expects a new
;; one on the same socket.

;;; Code:

(require 'ert)
(require 'llmd)

(defun llmd-test--wait (seconds predicate what)
  "Wait up to SECONDS for PREDICATE, failing with WHAT."
  (let ((deadline (+ (float-time) seconds)))
    (while (and (not (funcall predicate)) (< (float-time) deadline))
      (accept-process-output nil 0.005))
    (unless (funcall predicate)
      (ert-fail (format "timed out after %s s waiting for %s" seconds what)))))

(defun llmd-test--figure (name value)
  "Write the figure NAME, VALUE to $LLMD_TEST_OUT."
  (let ((out (getenv "LLMD_TEST_OUT")))
    (when out
      (write-region (format "figure %s %s\n" name value) nil out t 'silent))))

(cl-defun llmd-test--run (blueprint prompt &rest args)
  "Run BLUEPRINT on PROMPT (with more ARGS); a plist that fills as it goes."
  (let ((state (list :outputs nil :states nil :done nil)))
    (plist-put state :handle
               (apply #'llmd-run-async blueprint prompt
                      :on-output (lambda (text)
                                   (plist-put state :outputs
                                              (cons text (plist-get state :outputs))))
                      :on-state (lambda (params)
                                  (plist-put state :states
                                             (cons (plist-get params :state)
                                                   (plist-get state :states))))
                      :on-done (lambda (result error)
                                 (plist-put state :result result)
                                 (plist-put state :error error)
                                 (plist-put state :done t))
                      args))
    state))

(defun llmd-test--finish (state &optional seconds)
  "Wait for the run of STATE to end (at most SECONDS); return STATE."
  (llmd-test--wait (or seconds 20) (lambda () (plist-get state :done)) "the run's answer")
  state)

(defun llmd-test--text (state)
  "The text streamed in STATE."
  (apply #'concat (reverse (plist-get state :outputs))))

(defun llmd-test--lines (n)
  "The text of fakecli's N lines."
  (mapconcat (lambda (i) (format "line %d\n" i)) (number-sequence 0 (1- n)) ""))

(defun llmd-test--accepting-p (path)
  "Whether a daemon accepts connections on PATH."
  (condition-case nil
      (progn (delete-process (make-network-process :name "llmd-probe" :family 'local
                                                   :service path :noquery t))
             t)
    (file-error nil)))

(ert-deftest llmd-streaming-order-and-completeness ()
  (let ((s (llmd-test--finish (llmd-test--run "lines" ""))))
    (should-not (plist-get s :error))
    (should (equal (llmd-test--text s) (llmd-test--lines 300)))
    (should (equal (plist-get (plist-get s :result) :text) (llmd-test--lines 300)))
    (should (equal (reverse (plist-get s :states)) '("queued" "running" "succeeded")))
    (should (equal (llmd-handle-job (plist-get s :handle))
                   (plist-get (plist-get s :result) :job)))))

(ert-deftest llmd-non-ascii-text ()
  (let* ((text "héllo wörld ✓ 日本語 🎉 ça\n")
         (s (llmd-test--finish (llmd-test--run "echo" text))))
    (should (equal (llmd-test--text s) text))
    (should (equal (plist-get (plist-get s :result) :text) text))))

(ert-deftest llmd-cancel-once-the-job-is-known ()
  (let ((s (llmd-test--run "slow" "")))
    (llmd-test--wait 10 (lambda () (member "running" (plist-get s :states))) "the job to run")
    (should (equal (llmd-lighter) " llmd:1"))
    (llmd-cancel-run (plist-get s :handle))
    (llmd-test--finish s)
    (should (= (plist-get (plist-get s :error) :code) -32802))
    (should (equal (plist-get (plist-get (plist-get s :error) :data) :job)
                   (llmd-handle-job (plist-get s :handle))))
    (should (equal (llmd-lighter) ""))))

(ert-deftest llmd-cancel-before-the-job-is-known ()
  (let ((s (llmd-test--run "slow" "")))
    (llmd-cancel-run (plist-get s :handle))
    (llmd-test--finish s)
    (should (= (plist-get (plist-get s :error) :code) -32800))))

(ert-deftest llmd-errors ()
  (let ((unknown (llmd-test--finish (llmd-test--run "nope" "x")))
        (missing (llmd-test--finish (llmd-test--run "missing" "x"))))
    (should (= (plist-get (plist-get unknown :error) :code) -32001))
    (should (= (plist-get (plist-get missing :error) :code) -32002))
    (should (string-search "llm-cli-that-is-not-there"
                           (plist-get (plist-get missing :error) :message))))
  (let* ((llmd-socket (concat (getenv "LLMD_SOCKET") ".absent"))
         (llmd--process nil)
         (gone (llmd-test--finish (llmd-test--run "echo" "x")))
         (to-buffer (llmd-run-to-buffer "echo" "x")))
    (should (= (plist-get (plist-get gone :error) :code) llmd-unreachable))
    (llmd-test--wait 10 (lambda () (llmd-handle-done to-buffer)) "the failed run")
    (should-not (llmd-handle-job to-buffer))))

(ert-deftest llmd-daemon-restart-between-two-runs ()
  (let* ((socket (getenv "LLMD_SOCKET"))
         (first (llmd-test--finish (llmd-test--run "echo" "one")))
         info)
    (should (equal (plist-get (plist-get first :result) :text) "one"))
    (llmd-request "daemon.info" nil (lambda (result _error) (setq info result)))
    (llmd-test--wait 10 (lambda () info) "daemon.info")
    (signal-process (plist-get info :pid) 'SIGTERM)
    (llmd-test--wait 20 (lambda () (not (file-exists-p socket)))
                     "the old daemon to remove its socket")
    (llmd-test--wait 30 (lambda () (llmd-test--accepting-p socket)) "a new daemon")
    (let ((second (llmd-test--finish (llmd-test--run "echo" "two")))
          again)
      (should-not (plist-get second :error))
      (should (equal (plist-get (plist-get second :result) :text) "two"))
      (llmd-request "daemon.info" nil (lambda (result _error) (setq again result)))
      (llmd-test--wait 10 (lambda () again) "daemon.info")
      (should-not (equal (plist-get again :pid) (plist-get info :pid))))))

(ert-deftest llmd-flood-of-2000-lines-keeps-the-command-loop-free ()
  (let* ((ticks nil)
         (timer (run-at-time 0 0.01 (lambda () (push (float-time) ticks))))
         (started (float-time))
         (handle (llmd-run-to-buffer "flood" ""))
         ended)
    (unwind-protect
        (llmd-test--wait 60 (lambda () (llmd-handle-done handle)) "the flood to end")
      (cancel-timer timer))
    (setq ended (float-time))
    (let ((largest 0) (previous started))
      (dolist (at (reverse ticks))
        (setq largest (max largest (- at previous)) previous at))
      (setq largest (* 1000 (max largest (- ended previous))))
      (with-current-buffer (format "*llmd: %s*" (llmd-handle-job handle))
        (should (equal (buffer-string) (llmd-test--lines 2000)))
        (should (equal llmd--state "succeeded"))
        (should (derived-mode-p 'special-mode)))
      (llmd-test--figure "flood_largest_gap_ms" (format "%.1f" largest))
      (llmd-test--figure "flood_duration_ms" (format "%.1f" (* 1000 (- ended started))))
      (should (< largest (string-to-number (or (getenv "LLMD_TEST_GAP_BOUND_MS") "1000")))))))

(ert-deftest llmd-run-command-on-the-region ()
  (with-temp-buffer
    (insert "first ✓\nsecond\nnot this")
    (transient-mark-mode 1)
    (goto-char (point-min))
    (set-mark (point))
    (forward-line 2)
    (activate-mark)
    (let* ((llmd-default-blueprint "echo")
           (handle (call-interactively #'llmd-run)))
      (llmd-test--wait 20 (lambda () (llmd-handle-done handle)) "the run")
      (with-current-buffer (format "*llmd: %s*" (llmd-handle-job handle))
        (should (equal (buffer-string) "first ✓\nsecond\n"))
        (should buffer-read-only)))))

(ert-deftest llmd-run-command-reads-blueprint-and-prompt ()
  (with-temp-buffer
    (cl-letf* ((asked nil)
               ((symbol-function 'completing-read)
                (lambda (_prompt names &rest _)
                  (setq asked (append names nil))
                  "echo"))
               ((symbol-function 'read-string) (lambda (&rest _) "asked")))
      (let* ((llmd-default-blueprint nil)
             (handle (call-interactively #'llmd-run)))
        (should (member "flood" asked))
        (llmd-test--wait 20 (lambda () (llmd-handle-done handle)) "the run")
        (with-current-buffer (format "*llmd: %s*" (llmd-handle-job handle))
          (should (equal (buffer-string) "asked")))))))

(ert-deftest llmd-cancel-jobs-and-status-commands ()
  (let* ((handle (llmd-run-to-buffer "slow" "wait"))
         buffer)
    (llmd-test--wait 10 (lambda () (llmd-handle-job handle)) "the job id")
    (setq buffer (format "*llmd: %s*" (llmd-handle-job handle)))
    (llmd-test--wait 10 (lambda () (equal (buffer-local-value 'llmd--state
                                                              (get-buffer buffer))
                                          "running"))
                     "running")
    (with-current-buffer buffer
      (call-interactively #'llmd-cancel))
    (llmd-test--wait 20 (lambda () (llmd-handle-done handle)) "the cancelled run")
    (should (equal (buffer-local-value 'llmd--state (get-buffer buffer)) "cancelled"))
    ;; The job list: newest first, with its columns; RET opens the answer.
    (kill-buffer buffer)
    (let ((jobs (llmd-jobs)) refreshed)
      (with-current-buffer jobs
        (setq llmd--jobs-refreshed (lambda () (setq refreshed t)))
        (llmd-test--wait 10 (lambda () refreshed) "the job list")
        (goto-char (point-min))
        (should (equal (tabulated-list-get-id) (llmd-handle-job handle)))
        (should (equal (aref (tabulated-list-get-entry) 2) "cancelled"))
        (should (string-match-p "s\\'" (aref (tabulated-list-get-entry) 4)))
        (setq refreshed nil)
        (revert-buffer)
        (llmd-test--wait 10 (lambda () refreshed) "g to refresh")
        (goto-char (point-min))
        (llmd-jobs-open))
      (llmd-test--wait 10 (lambda () (get-buffer buffer)) "the job's answer")
      (with-current-buffer buffer
        (should (string-search "-32802" (buffer-string)))))
    (let (shown)
      (llmd-status (lambda (text) (setq shown text)))
      (llmd-test--wait 10 (lambda () shown) "health.status")
      (should (string-match-p "^echo " shown)))))

;; Work is counted, not timed: the bytes searched for a newline.  Reading a
;; line by searching all of it again on each chunk searches ~2 GiB here.
(ert-deftest llmd-long-line-read-in-small-chunks ()
  (let* ((n (* 4 1024 1024))
         (text (concat "é" (make-string n ?a) "✓"))
         (wire (encode-coding-string
                (concat (json-serialize (list :jsonrpc "2.0" :id 1
                                              :result (list :text text)))
                        "\n"
                        (json-serialize '(:jsonrpc "2.0" :id 2 :result (:text "b")))
                        "\n")
                'utf-8))
         (process (make-pipe-process :name "llmd-test-lines" :noquery t))
         (pending (make-hash-table :test #'eql))
         (replies nil)
         (searched 0)
         (count (lambda (search needle haystack &optional start)
                  (setq searched (+ searched (- (length haystack) (or start 0))))
                  (funcall search needle haystack start))))
    (dolist (id '(1 2))
      (puthash id (cons (lambda (result _error) (push (cons id result) replies)) nil)
               pending))
    (process-put process 'llmd-pending pending)
    (advice-add 'string-search :around count)
    (unwind-protect
        (let ((at 0))
          (while (< at (length wire))
            (llmd--filter process (substring wire at (min (length wire) (+ at 4093))))
            (setq at (+ at 4093))))
      (advice-remove 'string-search count)
      (delete-process process))
    (should (<= searched (* 2 (length wire))))
    (should (equal (mapcar #'car replies) '(2 1)))
    (should (equal (plist-get (cdr (assq 1 replies)) :text) text))
    (should (equal (plist-get (cdr (assq 2 replies)) :text) "b"))
    (should-not (process-get process 'llmd-partial))))

(ert-deftest llmd-mode-line-mode ()
  (llmd-mode-line-mode 1)
  (unwind-protect
      (should (member 'llmd--mode-line global-mode-string))
    (llmd-mode-line-mode -1))
  (should-not (member 'llmd--mode-line global-mode-string)))

(provide 'llmd-tests)
;;; llmd-tests.el ends here
