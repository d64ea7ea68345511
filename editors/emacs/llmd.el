;;; llmd.el --- Run LLM command-line agents through the llmd daemon -*- lexical-binding: t; -*-

;; Author: llmd contributors
;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1"))
;; Keywords: tools, processes

;; This file is not part of GNU Emacs.

;;; Commentary:

;; llmd is a per-user daemon that runs LLM command-line agents (claude,
;; codex, gemini, llm, ...) as supervised processes behind a Unix socket.
;; This package talks to it over one persistent connection (newline-delimited
;; JSON-RPC 2.0, read by a process filter), opened on first use and opened
;; again after the daemon restarts.
;;
;; Commands: `llmd-run' streams an answer into a "*llmd: JOB*" buffer,
;; `llmd-cancel' cancels it, `llmd-jobs' lists the daemon's jobs,
;; `llmd-status' shows each blueprint's health, and `llmd-mode-line-mode'
;; shows the runs in flight in the mode line.
;;
;; Lisp API: `llmd-run-async' and `llmd-cancel-run'; `llmd-request' for any
;; other method.  Runs never block the command loop: answers arrive through
;; the process filter.  Results and errors are plists with keyword keys, as
;; jsonrpc.el gives them (JSON arrays are vectors, null is nil, false is
;; :json-false).
;;
;; Only a daemon of the user's own uid is spoken to.  The socket the path
;; leads to must be the user's (another uid's, root's included, is someone
;; else's listener), and the default socket's directory must be the user's
;; own, not a symbolic link, and writable by no one else.  A socket refused
;; is an error of code `llmd-unreachable' whose data names it, with :reason
;; "foreign" or "unsafe"; nothing is connected or sent.

;;; Code:

(require 'cl-lib)
(require 'json)
(require 'parse-time)
(require 'subr-x)
(require 'tabulated-list)

(defgroup llmd nil
  "Run LLM command-line agents through the llmd daemon."
  :group 'tools
  :prefix "llmd-")

(defcustom llmd-socket nil
  "The daemon's socket path.
nil means $LLMD_SOCKET, else $XDG_RUNTIME_DIR/llmd/llmd.sock, else
/tmp/llmd-UID/llmd.sock, as the daemon computes it."
  :type '(choice (const :tag "Default" nil) file))

(defcustom llmd-default-blueprint nil
  "The blueprint `llmd-run' uses without asking; nil means ask."
  :type '(choice (const :tag "Ask" nil) string))

(defconst llmd-unreachable -32000
  "Code of the errors made here: llmd unreachable, refused, or connection lost.")

(define-error 'llmd-refused "Refusing to talk to llmd's socket")

(defvar llmd--process nil
  "The connection to the daemon, or nil before first use.")

(defvar llmd--next-id 0
  "The id of the last request sent.")

(defvar llmd--runs (make-hash-table :test #'eql)
  "Runs of this Emacs in flight, by request id.")

(defvar-local llmd--job nil
  "The job shown in this buffer.")

(defvar-local llmd--state nil
  "The state of the job shown in this buffer.")

(cl-defstruct (llmd-handle (:constructor llmd--make-handle))
  "A run started by `llmd-run-async'."
  request job done process)

(defun llmd--default-socket-path ()
  "Return the daemon's own default socket path, when none is named."
  (let ((runtime (getenv "XDG_RUNTIME_DIR")))
    (if (and runtime (not (string-empty-p runtime)))
        (expand-file-name "llmd/llmd.sock" runtime)
      (format "/tmp/llmd-%d/llmd.sock" (user-uid)))))

(defun llmd-socket-path ()
  "Return the socket path in use (see the variable `llmd-socket')."
  (or llmd-socket
      (let ((env (getenv "LLMD_SOCKET")))
        (and env (not (string-empty-p env)) env))
      (llmd--default-socket-path)))

;;; Connection

(defun llmd--error (message &optional reason)
  "An error plist made here, saying MESSAGE, with REASON in its data if given."
  (list :code llmd-unreachable :message message
        :data (append (list :socket (llmd-socket-path))
                      (and reason (list :reason reason)))))

(defun llmd--check-socket (path)
  "Signal `llmd-refused' unless the socket at PATH may be spoken to.
The error's data is (MESSAGE REASON), REASON \"unsafe\" for the default
path's directory and \"foreign\" for a socket of another uid.  A missing
socket or directory passes: connecting then says llmd is not running."
  (let ((me (user-uid)))
    ;; On shared ground such as /tmp another user can create llmd-UID first
    ;; and listen in it, so the default path's directory must be ours alone.
    ;; A path named by the user is the user's own choice of place.
    (when (equal (expand-file-name path)
                 (expand-file-name (llmd--default-socket-path)))
      (let* ((directory (directory-file-name (file-name-directory
                                              (expand-file-name path))))
             (attributes (file-attributes directory 'integer))
             (owner (and attributes (file-attribute-user-id attributes)))
             (mode (and attributes (file-modes directory 'nofollow)))
             (problem
              (cond ((null attributes) nil)
                    ((stringp (file-attribute-type attributes))
                     (format "is a symbolic link (owner uid %d)" owner))
                    ((/= owner me)
                     (format "belongs to uid %d, not to you (uid %d)" owner me))
                    ((and mode (/= 0 (logand mode #o022)))
                     (format "is writable by others (mode %04o, owner uid %d)"
                             mode owner)))))
        (when problem
          (signal 'llmd-refused
                  (list (format "refusing to connect to %s: its directory %s %s; another user could be listening there"
                                path directory problem)
                        "unsafe")))))
    ;; The daemon checks its peers' uid with SO_PEERCRED, and llmc checks the
    ;; listener's the same way; Emacs cannot read it.  bind() makes the
    ;; socket's inode the binder's, so the owner of the inode the path leads to
    ;; (symbolic links followed) stands in for the listener's uid: a socket of
    ;; another uid, root's included, is someone else's listener.  It is read
    ;; before connecting, so it holds where no one else can replace the socket
    ;; between the two: the default path's directory, checked above, is such a
    ;; place.
    (let* ((attributes (file-attributes (file-truename path) 'integer))
           (owner (and attributes (file-attribute-user-id attributes))))
      (when (and owner (/= owner me))
        (signal 'llmd-refused
                (list (format "refusing to talk to %s: it belongs to uid %d, not to you (uid %d); llmd runs as the user it serves, so this is someone else's listener"
                              path owner me)
                      "foreign"))))))

(defun llmd--fail-all (process message)
  "Answer every request of PROCESS still waiting with the error MESSAGE."
  (let ((pending (process-get process 'llmd-pending))
        callbacks)
    (process-put process 'llmd-pending (make-hash-table :test #'eql))
    (maphash (lambda (_id request) (push (car request) callbacks)) pending)
    (dolist (on-reply (nreverse callbacks))
      (funcall on-reply nil (llmd--error message)))))

(defun llmd--sentinel (process _event)
  "Fail the requests of PROCESS once it is closed."
  (unless (process-live-p process)
    (when (eq process llmd--process)
      (setq llmd--process nil))
    (llmd--fail-all process "connection to llmd lost")))

(defun llmd--dispatch (process message)
  "From PROCESS, hand MESSAGE to the request it belongs to."
  (let ((pending (process-get process 'llmd-pending))
        (method (plist-get message :method)))
    (if method
        (let* ((params (plist-get message :params))
               (request (and (plist-get params :request)
                             (gethash (plist-get params :request) pending))))
          (when (and request (cdr request))
            (funcall (cdr request) method params)))
      (let* ((id (plist-get message :id))
             (request (gethash id pending)))
        (when request
          (remhash id pending)
          (funcall (car request) (plist-get message :result)
                   (plist-get message :error)))))))

(defun llmd--filter (process bytes)
  "Read what PROCESS sent, BYTES: one JSON message per line.
Only BYTES is searched for a newline; the pieces of an unfinished line wait,
newest first, in the process property `llmd-partial' and are joined once, when
its newline arrives, so a long line costs time in proportion to its length."
  (let ((start 0)
        end)
    (while (setq end (string-search "\n" bytes start))
      (let* ((pieces (cons (substring bytes start end)
                           (process-get process 'llmd-partial)))
             (line (decode-coding-string (apply #'concat (nreverse pieces))
                                         'utf-8 t)))
        (setq start (1+ end))
        (process-put process 'llmd-partial nil)
        (condition-case err
            (llmd--dispatch process
                            (json-parse-string line :object-type 'plist
                                               :null-object nil
                                               :false-object :json-false))
          (json-error (message "llmd: unreadable message: %S" err)))))
    (when (< start (length bytes))
      (process-put process 'llmd-partial
                   (cons (substring bytes start)
                         (process-get process 'llmd-partial))))))

(defun llmd--connection ()
  "The live connection, opened now if there is none.
Signals `llmd-refused' when the socket is not the user's own (see
`llmd--check-socket'), `file-error' when the daemon cannot be reached."
  (unless (process-live-p llmd--process)
    (llmd--check-socket (llmd-socket-path))
    (let ((process (make-network-process
                    :name "llmd" :family 'local :service (llmd-socket-path)
                    :coding 'binary :noquery t
                    :filter #'llmd--filter :sentinel #'llmd--sentinel)))
      (process-put process 'llmd-pending (make-hash-table :test #'eql))
      (process-put process 'llmd-partial nil)
      (setq llmd--process process)))
  llmd--process)

(defun llmd--send (process message)
  "To PROCESS, send MESSAGE (a plist) as one line."
  (process-send-string
   process (concat (encode-coding-string (json-serialize message) 'utf-8) "\n")))

(defun llmd--params (plist)
  "PLIST without its nil values (the JSON object of a request's params)."
  (let (out)
    (while plist
      (unless (null (cadr plist))
        (setq out (cons (cadr plist) (cons (car plist) out))))
      (setq plist (cddr plist)))
    (nreverse out)))

(defun llmd-request (method params on-reply &optional on-notify)
  "Send a request for METHOD with PARAMS (a plist, or nil for none).
ON-REPLY is called once with (RESULT ERROR), from the process filter.
ON-NOTIFY, if given, is called with (METHOD PARAMS) for each notification
that belongs to this request.  Return the request's id, or nil when the
daemon could not be reached or its socket was refused (ON-REPLY is then
called from a timer, with an error of code `llmd-unreachable'): ON-REPLY
never runs before this returns."
  (condition-case err
      (let* ((process (llmd--connection))
             (id (cl-incf llmd--next-id))
             (message (list :jsonrpc "2.0" :id id :method method)))
        (when params
          (setq message (append message (list :params (llmd--params params)))))
        (puthash id (cons on-reply on-notify) (process-get process 'llmd-pending))
        (llmd--send process message)
        id)
    (file-error
     (run-at-time 0 nil on-reply nil
                  (llmd--error (format "llmd is not reachable at %s: %s (start it with `llmd serve' or `systemctl --user start llmd.socket')"
                                       (llmd-socket-path) (error-message-string err))))
     nil)
    (llmd-refused
     (run-at-time 0 nil on-reply nil (llmd--error (nth 1 err) (nth 2 err)))
     nil)))

;;; Runs

(cl-defun llmd-run-async (blueprint prompt &key cwd model session timeout
                                    on-output on-state on-done)
  "Run BLUEPRINT on PROMPT through llmd, streaming its output.
CWD, MODEL, SESSION and TIMEOUT are passed on to `llm.run' when non-nil.
ON-OUTPUT is called with each piece of the CLI's stdout, in order (the
pieces joined are the result's text).  ON-STATE is called with the params
plist of each `llm.state' notification.  ON-DONE is called once with
\(RESULT ERROR): RESULT is the run result plist (:job :text :state
:exit_code ...) and ERROR nil, or RESULT nil and ERROR the JSON-RPC error
plist (:code :message :data).
Return a handle for `llmd-cancel-run'; `llmd-handle-job' is its job id once
known."
  (let ((handle (llmd--make-handle)))
    (setf (llmd-handle-request handle)
          (llmd-request
           "llm.run"
           (list :blueprint blueprint :prompt prompt :stream t :cwd cwd
                 :model model :session session :timeout timeout)
           (lambda (result error)
             (setf (llmd-handle-done handle) t)
             (remhash (llmd-handle-request handle) llmd--runs)
             (unless (llmd-handle-job handle)
               (setf (llmd-handle-job handle)
                     (or (plist-get result :job)
                         (plist-get (plist-get error :data) :job))))
             (llmd--update-mode-line)
             (when on-done (funcall on-done result error)))
           (lambda (method params)
             (unless (llmd-handle-job handle)
               (setf (llmd-handle-job handle) (plist-get params :job)))
             (cond ((equal method "llm.output")
                    (when (and on-output (equal (plist-get params :stream) "stdout"))
                      (funcall on-output (plist-get params :text))))
                   ((equal method "llm.state")
                    (when on-state (funcall on-state params)))))))
    (setf (llmd-handle-process handle) llmd--process)
    (if (llmd-handle-request handle)
        (puthash (llmd-handle-request handle) handle llmd--runs)
      (setf (llmd-handle-done handle) t))
    (llmd--update-mode-line)
    handle))

(defun llmd-cancel-run (handle)
  "Cancel the run of HANDLE, from `llmd-run-async'.
Once its job is known this is `llm.cancel' (the run ends with error
-32802); before, a `$/cancelRequest' for its request (error -32800)."
  (unless (llmd-handle-done handle)
    (if (llmd-handle-job handle)
        (llmd-request "llm.cancel" (list :job (llmd-handle-job handle)) #'ignore)
      (let ((process (llmd-handle-process handle)))
        (when (process-live-p process)
          (llmd--send process (list :jsonrpc "2.0" :method "$/cancelRequest"
                                    :params (list :id (llmd-handle-request handle)))))))))

(defun llmd-running ()
  "Return the count of this Emacs's requests of `llmd-run-async' in flight."
  (hash-table-count llmd--runs))

;;; Mode line

(defun llmd-lighter ()
  "Return the mode-line text: \" llmd:N\" with N from `llmd-running', or \"\"."
  (let ((n (llmd-running)))
    (if (zerop n) "" (format " llmd:%d" n))))

(defconst llmd--mode-line '(:eval (llmd-lighter))
  "The mode-line construct added by `llmd-mode-line-mode'.")
(put 'llmd--mode-line 'risky-local-variable t)

;;;###autoload
(define-minor-mode llmd-mode-line-mode
  "Show the llmd runs of this Emacs in the mode line."
  :global t
  :group 'llmd
  (setq global-mode-string (delete 'llmd--mode-line (or global-mode-string '(""))))
  (when llmd-mode-line-mode
    (setq global-mode-string (append global-mode-string '(llmd--mode-line)))))

(defun llmd--update-mode-line ()
  "Redraw the mode lines when the lighter is shown."
  (when llmd-mode-line-mode
    (force-mode-line-update t)))

;;; Output buffers

(defvar llmd-output-mode-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "c") #'llmd-cancel)
    map)
  "Keymap of `llmd-output-mode'.")

(define-derived-mode llmd-output-mode special-mode "llmd"
  "Mode of the *llmd: JOB* buffers that show a run's answer.
\\{llmd-output-mode-map}")

(defun llmd--output-buffer (job)
  "The buffer *llmd: JOB*, made ready for output."
  (let ((buffer (get-buffer-create (format "*llmd: %s*" job))))
    (with-current-buffer buffer
      (unless (derived-mode-p 'llmd-output-mode)
        (llmd-output-mode))
      (setq llmd--job job))
    buffer))

(defun llmd--append (buffer text)
  "In BUFFER, append TEXT, keeping point where it was unless at the end."
  (when (buffer-live-p buffer)
    (with-current-buffer buffer
      (let ((inhibit-read-only t)
            (at-end (= (point) (point-max))))
        (save-excursion
          (goto-char (point-max))
          (insert text))
        (when at-end (goto-char (point-max)))))))

(defun llmd--describe (error)
  "One line saying what ERROR (a JSON-RPC error plist) was."
  (format "llmd: error %s: %s" (plist-get error :code) (plist-get error :message)))

(defun llmd-run-to-buffer (blueprint prompt)
  "Run BLUEPRINT on PROMPT, streaming into a *llmd: JOB* buffer.
Return the run's handle."
  (let (buffer handle (early nil))
    (cl-flet ((ensure ()
                (when (and (null buffer) (llmd-handle-job handle))
                  (setq buffer (llmd--output-buffer (llmd-handle-job handle)))
                  (display-buffer buffer)
                  (dolist (text (nreverse early)) (llmd--append buffer text))
                  (setq early nil))
                buffer))
      (setq handle
            (llmd-run-async
             blueprint prompt :cwd (expand-file-name default-directory)
             :on-state
             (lambda (params)
               (when-let ((b (ensure)))
                 (with-current-buffer b
                   (setq llmd--state (plist-get params :state))
                   (when (and (equal llmd--state "retrying")
                              (eq (plist-get params :restart_output) t))
                     (let ((inhibit-read-only t)) (erase-buffer))))))
             :on-output
             (lambda (text)
               (if-let ((b (ensure))) (llmd--append b text) (push text early)))
             :on-done
             (lambda (result error)
               (let ((b (ensure)))
                 (if error
                     (progn
                       (when b
                         (with-current-buffer b
                           (setq llmd--state (or (plist-get (plist-get error :data) :state)
                                                 "failed")))
                         (llmd--append b (format "\n[%s]\n" (llmd--describe error))))
                       (message "%s" (llmd--describe error)))
                   (when b
                     (with-current-buffer b
                       (setq llmd--state (plist-get result :state))))))))))
    handle))

;;; Commands

(defun llmd--request-sync (method params &optional seconds)
  "The result of METHOD with PARAMS, waiting at most SECONDS (default 5).
Only for what a command needs before it starts a run: \\[keyboard-quit]
leaves nothing running.  Signals `user-error' on an error reply."
  (let (done result error
        (deadline (+ (float-time) (or seconds 5))))
    (llmd-request method params
                  (lambda (r e) (setq result r error e done t)))
    (while (and (not done) (< (float-time) deadline))
      (accept-process-output llmd--process 0.05))
    (cond (error (user-error "%s" (llmd--describe error)))
          ((not done) (user-error "No answer to %s from llmd in time" method)))
    result))

(defun llmd--read-blueprint ()
  "Ask for a blueprint among the daemon's."
  (let ((names (mapcar (lambda (bp) (plist-get bp :name))
                       (plist-get (llmd--request-sync "blueprints.list" nil)
                                  :blueprints))))
    (completing-read "llmd blueprint: " names nil t nil nil
                     llmd-default-blueprint)))

(defun llmd--prompt-here ()
  "The prompt of `llmd-run': the region, else the buffer, else asked."
  (cond ((use-region-p)
         (buffer-substring-no-properties (region-beginning) (region-end)))
        ((and (> (buffer-size) 0) (not (derived-mode-p 'llmd-output-mode)))
         (buffer-substring-no-properties (point-min) (point-max)))
        (t (read-string "llmd prompt: "))))

;;;###autoload
(defun llmd-run (blueprint prompt)
  "Run BLUEPRINT on PROMPT, streaming the answer into *llmd: JOB*.
Interactively the prompt is the region if active, else the buffer's text,
else read from the minibuffer; the blueprint is `llmd-default-blueprint',
or read with completion when it is nil or with a prefix argument."
  (interactive
   (let ((blueprint (if (or current-prefix-arg (null llmd-default-blueprint))
                        (llmd--read-blueprint)
                      llmd-default-blueprint)))
     (list blueprint (llmd--prompt-here))))
  (llmd-run-to-buffer blueprint prompt))

(defun llmd--handle-of (job)
  "The handle of this Emacs's run of JOB, if it is in flight."
  (catch 'found
    (maphash (lambda (_id handle)
               (when (equal (llmd-handle-job handle) job) (throw 'found handle)))
             llmd--runs)
    nil))

(defun llmd-cancel-job (job &optional callback)
  "Cancel JOB (any job of the daemon).
CALLBACK, if given, is called with (RESULT ERROR); otherwise the outcome
is shown in the echo area."
  (llmd-request "llm.cancel" (list :job job)
                (or callback
                    (lambda (result error)
                      (message "%s" (cond (error (llmd--describe error))
                                          ((eq (plist-get result :cancelled) t)
                                           (format "llmd: cancelled %s" job))
                                          (t (format "llmd: %s had already finished"
                                                     job))))))))

;;;###autoload
(defun llmd-cancel (job)
  "Cancel JOB: the current *llmd: JOB* buffer's, else one read with completion."
  (interactive
   (list (or llmd--job
             (let (jobs)
               (maphash (lambda (_id h) (when (llmd-handle-job h)
                                          (push (llmd-handle-job h) jobs)))
                        llmd--runs)
               (completing-read "llmd cancel job: " jobs)))))
  (let ((handle (llmd--handle-of job)))
    (if handle (llmd-cancel-run handle) (llmd-cancel-job job))))

;;; Jobs

(defvar llmd-jobs-mode-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "RET") #'llmd-jobs-open)
    (define-key map (kbd "c") #'llmd-jobs-cancel)
    map)
  "Keymap of `llmd-jobs-mode'.")

(define-derived-mode llmd-jobs-mode tabulated-list-mode "llmd jobs"
  "The daemon's jobs: RET opens the answer, c cancels, g refreshes.
\\{llmd-jobs-mode-map}"
  (setq tabulated-list-format
        [("Job" 28 t) ("Blueprint" 14 t) ("State" 11 t) ("Started" 25 t)
         ("Duration" 10 nil :right-align t)])
  (setq tabulated-list-sort-key nil)
  (add-hook 'tabulated-list-revert-hook #'llmd--jobs-refresh nil t)
  (tabulated-list-init-header))

(defun llmd--duration (record)
  "RECORD's run time as text, from its result or its timestamps."
  (let* ((result (plist-get record :result))
         (seconds (and result (plist-get result :duration_s))))
    (cond (seconds (format "%.1f s" seconds))
          ((and (plist-get record :started_at) (plist-get record :finished_at))
           (format "%.1f s" (float-time
                              (time-subtract
                               (parse-iso8601-time-string (plist-get record :finished_at))
                               (parse-iso8601-time-string (plist-get record :started_at))))))
          (t ""))))

(defun llmd--jobs-entries (jobs)
  "Tabulated-list entries of JOBS (a vector of job records)."
  (mapcar (lambda (r)
            (list (plist-get r :job)
                  (vector (plist-get r :job) (plist-get r :blueprint) (plist-get r :state)
                          (or (plist-get r :started_at) "") (llmd--duration r))))
          jobs))

(defvar-local llmd--jobs-refreshed nil
  "Called with no argument after the list was refreshed (for tests).")

(defun llmd--jobs-refresh ()
  "Fetch the job list again; the buffer is redrawn when it arrives."
  (let ((buffer (current-buffer)))
    (llmd-request "jobs.list" (list :limit 50)
                  (lambda (result error)
                    (if error
                        (message "%s" (llmd--describe error))
                      (when (buffer-live-p buffer)
                        (with-current-buffer buffer
                          (setq tabulated-list-entries
                                (llmd--jobs-entries (plist-get result :jobs)))
                          (tabulated-list-print t)
                          (when llmd--jobs-refreshed
                            (funcall llmd--jobs-refreshed)))))))))

;;;###autoload
(defun llmd-jobs ()
  "List the daemon's newest jobs (see `llmd-jobs-mode')."
  (interactive)
  (let ((buffer (get-buffer-create "*llmd jobs*")))
    (with-current-buffer buffer
      (llmd-jobs-mode)
      (llmd--jobs-refresh))
    (pop-to-buffer buffer)
    buffer))

(defun llmd-open-job (job)
  "Show JOB's answer in *llmd: JOB* (its live buffer while it streams here)."
  (let ((live (get-buffer (format "*llmd: %s*" job))))
    (if (and live (llmd--handle-of job))
        (pop-to-buffer live)
      (llmd-request "jobs.get" (list :job job)
                    (lambda (record error)
                      (if error
                          (message "%s" (llmd--describe error))
                        (let ((buffer (llmd--output-buffer job))
                              (result (plist-get record :result)))
                          (with-current-buffer buffer
                            (setq llmd--state (plist-get record :state))
                            (let ((inhibit-read-only t))
                              (erase-buffer)
                              (insert (cond (result (plist-get result :text))
                                            ((plist-get record :error)
                                             (format "[%s]\n" (llmd--describe
                                                                (plist-get record :error))))
                                            (t (format "[llmd: %s is %s]\n" job
                                                       llmd--state)))))
                            (goto-char (point-min)))
                          (pop-to-buffer buffer))))))))

(defun llmd-jobs-open ()
  "Open the answer of the job at point."
  (interactive)
  (when-let ((job (tabulated-list-get-id)))
    (llmd-open-job job)))

(defun llmd-jobs-cancel ()
  "Cancel the job at point, then refresh the list."
  (interactive)
  (when-let ((job (tabulated-list-get-id)))
    (let ((buffer (current-buffer)))
      (llmd-cancel-job job (lambda (_result error)
                             (when error (message "%s" (llmd--describe error)))
                             (when (buffer-live-p buffer)
                               (with-current-buffer buffer (llmd--jobs-refresh))))))))

;;; Status

;;;###autoload
(defun llmd-status (&optional callback)
  "Show each blueprint's health, from the daemon's cache.
CALLBACK, if given, is called with the text shown."
  (interactive)
  (llmd-request "health.status" nil
                (lambda (result error)
                  (let ((text
                         (if error
                             (llmd--describe error)
                           (let ((blueprints (plist-get result :blueprints))
                                 lines)
                             (while blueprints
                               (let ((name (substring (symbol-name (car blueprints)) 1))
                                     (health (cadr blueprints)))
                                 (push (format "%-16s %-12s %s" name
                                               (plist-get health :state)
                                               (or (plist-get health :version)
                                                   (plist-get health :detail) ""))
                                       lines))
                               (setq blueprints (cddr blueprints)))
                             (string-join (cons (format "llmd at %s" (llmd-socket-path))
                                                (sort lines #'string<))
                                          "\n")))))
                    (message "%s" text)
                    (when callback (funcall callback text))))))

(provide 'llmd)
;;; llmd.el ends here
