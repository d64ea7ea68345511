"""Jobs: admission, the queue, the retry loop, deadlines, records and their store.

- :mod:`llmd.jobs.manager`: the job manager (admission, queue, retries, deadlines).
- :mod:`llmd.jobs.job`: one job in memory, the source of its record and its store row.
- :mod:`llmd.jobs.state`: the job states and the table of which may follow which.
- :mod:`llmd.jobs.records`: the wire shapes of a run request, its result and a job record
  (and how a job's three shapes relate).
- :mod:`llmd.jobs.retry`: the back-off policy.
- :mod:`llmd.jobs.events`: state changes for `jobs.watch`; :mod:`llmd.jobs.output`: the
  output so far for `jobs.output`.
- :mod:`llmd.jobs.store` and :mod:`llmd.jobs.storedb`: every job's record in SQLite.
"""
