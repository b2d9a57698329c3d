"""novajobs: idempotent, lock-guarded batch jobs for a social/chat platform's back office.

Every job is a plain function in ``novajobs.jobs.<name>`` taking a ``JobContext``; the
full run contract (lock, record, timeout, signals, exit code) is ``run_job``::

    from novajobs.runner import run_job
    record = run_job("refresh-trending")
    print(record.outcome, record.counters)
"""

__version__ = "0.1.0"
