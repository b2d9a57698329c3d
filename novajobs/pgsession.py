"""The PostgreSQL session a job works in: autocommit, bounded waits, errors with exit codes.

Jobs run each write in an explicit ``with conn.transaction():`` block, so reads never
leave a transaction open ("idle in transaction") while the job thinks or waits.
``statement_timeout`` is the run's remaining time, so a slow query ends as the run's
timeout (exit 124) instead of being cut by SIGALRM in the middle of the protocol;
``lock_timeout`` keeps DDL from queueing forever behind a long transaction (and every
query on that table from queueing behind the DDL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from novajobs.errors import JobFailed, JobTimeout

if TYPE_CHECKING:
    import psycopg

    from novajobs.context import JobContext


def open_session(ctx: JobContext, *, lock_timeout_sec: float = 0) -> psycopg.Connection[Any]:
    """``ctx.pg`` in autocommit mode with the run's timeouts set for the session."""
    conn = ctx.pg
    conn.autocommit = True
    left = ctx.guard.remaining()
    statement_ms = max(1000, int(left * 1000)) if left is not None else 0
    conn.execute(
        "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
        [f"{statement_ms}ms", f"{int(lock_timeout_sec * 1000)}ms"],
    )
    return conn


@contextmanager
def pg_session(
    ctx: JobContext, *, lock_timeout_sec: float = 0
) -> Iterator[psycopg.Connection[Any]]:
    """The job's session (``open_session``), with the server-side stops we ask for turned
    into the run's outcomes (``pg_errors``): ``with pg_session(ctx) as conn: ...``."""
    with pg_errors(ctx.job):
        yield open_session(ctx, lock_timeout_sec=lock_timeout_sec)


@contextmanager
def pg_errors(what: str) -> Iterator[None]:
    """Turn the two server-side stops we ask for into the run's own outcomes."""
    import psycopg

    try:
        yield
    except psycopg.errors.QueryCanceled as exc:  # our statement_timeout
        raise JobTimeout(f"{what}: a query ran into the run's timeout ({exc})") from None
    except psycopg.errors.LockNotAvailable:  # our lock_timeout
        raise JobFailed(
            f"{what}: a table lock was not granted within lock_timeout "
            "(a long transaction holds it); the next run tries again"
        ) from None


@contextmanager
def exclusive_run(conn: psycopg.Connection[Any], name: str) -> Iterator[None]:
    """Hold a session-level advisory lock named ``name`` for the block, so two runs of a
    job that must not overlap stay apart even without the Redis lock (``--no-lock``, or a
    lease lost mid-run). Held elsewhere: the run is skipped (exit 75).

    The lock is per schema (``novajobs:<name>:<current_schema>``): advisory locks are
    database-wide, and two deployments in two schemas of one database, each with its own
    tables, must not skip each other's runs."""
    from novajobs.errors import LockHeld

    key, taken = conn.execute(
        "SELECT k, pg_try_advisory_lock(hashtext(k))"
        " FROM (SELECT %s || ':' || coalesce(current_schema(), '') AS k) AS lock",
        [f"novajobs:{name}"]).fetchone() or ("", False)
    if not taken:
        raise LockHeld(f"another {name} run holds the PostgreSQL advisory lock {key!r}")
    try:
        yield
    finally:
        # A broken connection has released it with its session.
        with suppress(Exception):
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])
