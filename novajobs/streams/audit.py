"""The built-in ``audit-log`` handler: ``stream:audit:log`` entries -> PostgreSQL ``audit_logs``.

Entry fields (docs/jobs.md, Data contracts): ``user_id`` (integer), ``action`` (text),
``ts`` (Unix seconds, may have a fraction) -> one
``audit_logs(user_id, action, created_at = ts)`` row.

Exactly once however often an entry is delivered (a crash between the insert and the
XACK, a reclaim, a retry after a timeout whose call did commit, a DLQ replay): one
statement inserts the batch's (stream, first entry id) pairs into novajobs' own
``novajobs_stream_dedupe`` table with ON CONFLICT DO NOTHING, and only the pairs that
were new feed the ``audit_logs`` insert. Both happen in one transaction, so an audit row
exists if and only if its dedupe row does; two consumers racing on the same entry
serialise on the dedupe row's primary key. ``audit_logs`` itself is not altered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from novajobs.errors import ConfigError
from novajobs.streams.handlers import Handler, Message, PermanentError

if TYPE_CHECKING:
    import psycopg

    from novajobs.output import JobLog
    from novajobs.settings import Settings

INSERT_SQL = """
WITH incoming (entry_id, user_id, action, ts) AS (
    SELECT * FROM unnest(%(ids)s::text[], %(users)s::bigint[], %(actions)s::text[],
                         %(ts)s::float8[])
),
fresh AS (
    INSERT INTO novajobs_stream_dedupe (stream, entry_id)
    SELECT %(stream)s, entry_id FROM incoming
    ON CONFLICT (stream, entry_id) DO NOTHING
    RETURNING entry_id
)
INSERT INTO audit_logs (user_id, action, created_at)
SELECT incoming.user_id, incoming.action, to_timestamp(incoming.ts)
FROM incoming JOIN fresh USING (entry_id)
"""

# Small batches by ctid, so pruning never holds many row locks or runs one long DELETE.
PRUNE_SQL = """
DELETE FROM novajobs_stream_dedupe
WHERE ctid IN (
    SELECT ctid FROM novajobs_stream_dedupe
    WHERE handled_at < now() - make_interval(days => %(days)s)
    LIMIT %(limit)s
)
"""

_INTEGER = re.compile(r"-?[0-9]{1,19}")
_BIGINT = (-(2**63), 2**63 - 1)
_TS_RANGE = (-62_135_596_800.0, 253_402_300_799.0)  # years 1 .. 9999


class AuditLogHandler(Handler):
    batch_size: ClassVar[int] = 200

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._conn: psycopg.Connection[Any] | None = None

    def handle_batch(self, messages: Sequence[Message]) -> Mapping[str, BaseException]:
        failures: dict[str, BaseException] = {}
        rows: dict[str, tuple[int, str, float]] = {}  # by first id: one row per entry
        for message in messages:
            try:
                rows.setdefault(message.id, parse_event(message.fields))
            except PermanentError as exc:
                failures[message.entry_id] = exc
        if rows:
            self._write(messages[0].stream, rows)
        return failures

    def _write(self, stream: str, rows: dict[str, tuple[int, str, float]]) -> None:
        import psycopg

        params = {
            "stream": stream,
            "ids": list(rows),
            "users": [r[0] for r in rows.values()],
            "actions": [r[1] for r in rows.values()],
            "ts": [r[2] for r in rows.values()],
        }
        conn = self._connection()
        try:
            with conn.transaction():
                conn.execute(INSERT_SQL, params)
        except psycopg.errors.UndefinedTable as exc:
            raise ConfigError(_missing_table(exc)) from None
        except psycopg.OperationalError:
            self.close()  # reconnect on the next call
            raise

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, self.settings.drain_message_timeout_sec)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @classmethod
    def after_run(cls, settings: Settings, log: JobLog) -> None:
        """Forget handled ids older than the retention, at most 100k rows a run."""
        conn = connect(settings, 30.0)
        try:
            pruned = 0
            for _ in range(10):
                with conn.transaction():
                    cur = conn.execute(
                        PRUNE_SQL, {"days": settings.stream_dedupe_retention_days, "limit": 10_000}
                    )
                pruned += cur.rowcount
                if cur.rowcount < 10_000:
                    break
        finally:
            conn.close()
        if pruned:
            log.info("pruned the audit-log dedupe table", rows=pruned)


def parse_event(fields: Mapping[str, str]) -> tuple[int, str, float]:
    """(user_id, action, ts) of an audit entry; PermanentError says what is wrong."""
    missing = [name for name in ("user_id", "action", "ts") if name not in fields]
    if missing:
        raise PermanentError(f"audit entry lacks field {', '.join(missing)}")
    raw_user, action, raw_ts = fields["user_id"].strip(), fields["action"], fields["ts"].strip()
    if not _INTEGER.fullmatch(raw_user) or not _BIGINT[0] <= int(raw_user) <= _BIGINT[1]:
        raise PermanentError(f"user_id {raw_user[:40]!r} is not a 64-bit integer")
    if "\x00" in action:
        raise PermanentError("action contains a NUL character (PostgreSQL text cannot)")
    try:
        ts = float(raw_ts)
    except ValueError:
        raise PermanentError(f"ts {raw_ts[:40]!r} is not a Unix time in seconds") from None
    if not math.isfinite(ts) or not _TS_RANGE[0] <= ts <= _TS_RANGE[1]:
        raise PermanentError(f"ts {raw_ts[:40]!r} is out of range")
    return int(raw_user), action, ts


def connect(settings: Settings, statement_timeout_sec: float) -> psycopg.Connection[Any]:
    """A connection of the handler's own (each worker thread has one), autocommit with an
    explicit transaction per batch; statements are cut at the per-message timeout."""
    import psycopg

    conn = psycopg.connect(
        settings.database_url,
        autocommit=True,
        connect_timeout=max(1, round(settings.connect_timeout_sec)),
        application_name="novajobs drain-stream",
    )
    conn.execute(
        "SELECT set_config('statement_timeout', %s, false)",
        [f"{max(1, int(statement_timeout_sec * 1000))}ms"],
    )
    return conn


def _missing_table(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else "a table is missing"
    if "novajobs_stream_dedupe" in text:
        return f"{text}: create it with `novajobs init-db`"
    return f"{text} (audit_logs belongs to another service: check DATABASE_URL)"
