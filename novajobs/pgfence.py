"""Fencing tokens in PostgreSQL (see novajobs/fencing.py): a write transaction first
advances the lock's row in ``novajobs_fences`` (``... WHERE fence <= mine``) and rolls
back when a newer fence is there. The row lock it takes orders the write transactions
of two holders of one lock: a stale one commits before the newer one writes, or is
refused."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from novajobs.errors import ConfigError
from novajobs.fencing import fence_of, lost

if TYPE_CHECKING:
    import psycopg

    from novajobs.context import JobContext

PG_ADVANCE_SQL = """
INSERT INTO novajobs_fences AS f (lock_key, fence) VALUES (%s, %s)
ON CONFLICT (lock_key) DO UPDATE SET fence = EXCLUDED.fence, updated_at = now()
    WHERE f.fence <= EXCLUDED.fence
RETURNING f.fence
"""



def check_pg(ctx: JobContext, conn: psycopg.Connection[Any], what: str) -> None:
    """Advance the lock's fence row inside the caller's open transaction; LockLost (the
    caller's transaction then rolls back) when a newer fence is there."""
    fence = fence_of(ctx)
    if fence is None:
        return
    if conn not in _PROVISIONED:
        _provision(conn)
    row = conn.execute(PG_ADVANCE_SQL, [fence.lock_key, fence.token]).fetchone()
    if row is None:
        seen = conn.execute("SELECT fence FROM novajobs_fences WHERE lock_key = %s",
                            [fence.lock_key]).fetchone()
        raise lost(ctx, what, seen[0] if seen else "?")


_PROVISIONED: weakref.WeakSet[Any] = weakref.WeakSet()  # connections that found the table


def _provision(conn: psycopg.Connection[Any]) -> None:
    """Make sure ``novajobs_fences`` exists (`novajobs init-db` creates it; so does the
    first fenced write after an upgrade), in the caller's transaction."""
    import psycopg

    from novajobs.schema import INIT_LOCK_SQL, OWNED_TABLES

    found = conn.execute("SELECT to_regclass('novajobs_fences')").fetchone()
    if found is None or found[0] is None:
        try:
            conn.execute(INIT_LOCK_SQL)  # as init-db: two creators at once must not collide
            conn.execute(OWNED_TABLES["novajobs_fences"])
        except psycopg.errors.InsufficientPrivilege:
            raise ConfigError("table novajobs_fences does not exist and this user may not "
                              "create it: run `novajobs init-db` as its owner") from None
        return  # created in the caller's transaction: probe again until one commits
    _PROVISIONED.add(conn)


@contextmanager
def pg_transaction(ctx: JobContext, what: str) -> Iterator[psycopg.Connection[Any]]:
    """``with ctx.pg.transaction()`` that first passes the fence check."""
    conn = ctx.pg
    with conn.transaction():
        check_pg(ctx, conn, what)
        yield conn
