;;; llmd-probe.el --- One run and one request through llmd.el -*- lexical-binding: t; -*-

;;; Commentary:

;; emacs --batch -Q -L editors/emacs -l editors/emacs/tests/llmd-probe.el
;; The socket is the package's choice ($LLMD_SOCKET, else the default path)
;; unless $LLMD_PROBE_SOCKET names one for `llmd-socket'.  Asks daemon.info and
;; runs the blueprint echo on $LLMD_PROBE_PROMPT, both sent before either is
;; answered, waits for both answers (at most $LLMD_PROBE_WAIT_MS) and writes
;; them to $LLMD_TEST_OUT as one JSON object
;; {run: {text, error}, info: {pid, error}, finished}.  With
;; $LLMD_PROBE_THEN_PRIVATE naming a directory, it then makes that directory
;; 0700 and asks daemon.info once more: {after: {pid, error}}.

;;; Code:

(require 'llmd)

(let* ((named (getenv "LLMD_PROBE_SOCKET"))
       (llmd-socket (and named (not (string-empty-p named)) named))
       (wait (string-to-number (or (getenv "LLMD_PROBE_WAIT_MS") "20000")))
       (deadline (+ (float-time) (/ wait 1000.0)))
       (private (getenv "LLMD_PROBE_THEN_PRIVATE"))
       (left 2)
       run info after)
  ;; The run goes last: a refused request that stayed queued would be the run.
  (llmd-request "daemon.info" nil
                (lambda (result error)
                  (setq info (list :pid (or (plist-get result :pid) :null)
                                   :error (or error :null))
                        left (1- left))))
  (llmd-run-async "echo" (or (getenv "LLMD_PROBE_PROMPT") "")
                  :on-done (lambda (result error)
                             (setq run (list :text (or (plist-get result :text) :null)
                                             :error (or error :null))
                                   left (1- left))))
  (while (and (> left 0) (< (float-time) deadline))
    (accept-process-output nil 0.005))
  (when (and private (not (string-empty-p private)))
    (set-file-modes private #o700)
    (llmd-request "daemon.info" nil
                  (lambda (result error)
                    (setq after (list :pid (or (plist-get result :pid) :null)
                                      :error (or error :null)))))
    (while (and (null after) (< (float-time) deadline))
      (accept-process-output nil 0.005)))
  (with-temp-file (getenv "LLMD_TEST_OUT")
    (insert (json-serialize (list :socket (llmd-socket-path)
                                  :run (or run :null) :info (or info :null)
                                  :after (or after :null)
                                  :finished (if (zerop left) t :false))))))

(provide 'llmd-probe)
;;; llmd-probe.el ends here
