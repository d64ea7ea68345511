"""The child process edge: argv and environment, one supervised process group per attempt.

- :mod:`llmd.process.argv`: a child's argv, stdin and environment (pure).
- :mod:`llmd.process.supervisor`: runs one attempt in its own process group.
- :mod:`llmd.process.procs`: ``/proc`` readings, and killing what a dead daemon left.
- :mod:`llmd.process.groups`: ending a process group; the groups outliving any job,
  listed for a restart after a crash.
"""
