"""Monthly partitions as archive-partitions and restore-partition see them: their month
from the catalog, the marker a partition carries between detach and drop, COPY in and
out, and the archive's manifest in S3.

Where an archive lives (one per table and month; ``<data>`` changes with each attempt,
the manifest names the one that was verified)::

    <archive_prefix>partitions/<schema>.<table>/<YYYY-MM>/manifest.json
    <archive_prefix>partitions/<schema>.<table>/<YYYY-MM>/data-<run id>.copy.gz

The marker is the detached table's comment, ``novajobs-archive {json}``: it is set
before the detach (which cannot share a transaction with anything when CONCURRENTLY),
so a run that dies after the detach leaves a table the next run still finds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from novajobs.partitioning import Parent, TableProblem
from novajobs.s3archive import Chunk

if TYPE_CHECKING:
    import psycopg

    from novajobs.context import JobContext

MARKER = "novajobs-archive "
MANIFEST_FORMAT = "novajobs-partition-archive/1"
_BOUNDS = re.compile(r"^FOR VALUES FROM \('(.*)'\) TO \('(.*)'\)$")

ATTACHED_SQL = """
SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = to_regclass(%(parent)s)
ORDER BY c.relname
"""

MARKED_SQL = """
SELECT n.nspname, c.relname, d.description
FROM pg_description d
JOIN pg_class c ON c.oid = d.objoid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0
  AND d.description LIKE 'novajobs-archive %%' AND NOT c.relispartition
ORDER BY c.relname
"""

# Sessions that may be writing to the table right now (their transaction holds a lock
# only writers take).
WRITERS_SQL = """
SELECT pid, mode FROM pg_locks
WHERE relation = to_regclass(%(table)s) AND pid <> pg_backend_pid() AND granted
  AND mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
               'AccessExclusiveLock')
ORDER BY pid
"""

COLUMNS_SQL = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = to_regclass(%(table)s) AND attnum > 0 AND NOT attisdropped
  AND attgenerated = ''
ORDER BY attnum
"""

SIZE_SQL = """
SELECT pg_total_relation_size(to_regclass(%(table)s)),
       greatest((SELECT reltuples FROM pg_class WHERE oid = to_regclass(%(table)s)), 0)::bigint
"""


# How the archive's COPY text prints values. Its checksum is of that text, so archive and
# restore print alike whatever the server's, role's or PGTZ defaults are (a time zone
# changes every timestamptz; fewer float digits would even lose precision).
TEXT_FORMAT = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
               "extra_float_digits": "1", "bytea_output": "hex"}


def pin_text_format(conn: psycopg.Connection[Any]) -> None:
    """Set the session to ``TEXT_FORMAT``, so COPY prints every value the same way."""
    from psycopg import sql

    calls = sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(v))
        for k, v in TEXT_FORMAT.items())
    conn.execute(sql.SQL("SELECT {}").format(calls))


@dataclass
class Slot:
    """One month of a parent: a partition, attached or detached by an earlier run."""

    schema: str
    name: str
    lo: str  # the bounds as the catalog prints them (literals of the key's type)
    hi: str
    month: str  # YYYY-MM
    attached: bool
    pending: bool = False  # DETACH ... CONCURRENTLY was interrupted
    marker: dict[str, Any] | None = None

    def ident(self) -> Any:
        from psycopg import sql

        return sql.Identifier(self.schema, self.name)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"


def month_of(conn: psycopg.Connection[Any], parent: Parent, lo: str, hi: str,
             tz: str) -> str | None:
    """``YYYY-MM`` if [lo, hi) is exactly one calendar month in ``tz``, else None."""
    from psycopg import sql

    cast = sql.SQL("SELECT CAST({lo} AS {t}), CAST({hi} AS {t})").format(
        lo=sql.Literal(lo), hi=sql.Literal(hi), t=sql.SQL(parent.key_type))  # KEY_TYPES only
    row = conn.execute(cast).fetchone()
    assert row is not None
    start, end = (_local(v, tz) for v in row)
    if (start.day, start.hour, start.minute, start.second, start.microsecond) != (1, 0, 0, 0, 0):
        return None
    following = (start.year + start.month // 12, start.month % 12 + 1)
    if (end.year, end.month, end.day, end.time()) != (*following, 1, start.time()):
        return None
    return f"{start.year:04d}-{start.month:02d}"


def _local(value: date | datetime, tz: str) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(ZoneInfo(tz)).replace(tzinfo=None) if value.tzinfo else value
    return datetime(value.year, value.month, value.day)


def attached_slots(conn: psycopg.Connection[Any], parent: Parent, tz: str) -> list[Slot]:
    """The parent's monthly partitions (not the default). TableProblem if one of them
    is not exactly one month: the table is then not partitioned by month."""
    from psycopg import sql

    quoted = sql.Identifier(parent.schema, parent.table).as_string(conn)
    slots = []
    for schema, name, bound, pending in conn.execute(ATTACHED_SQL, {"parent": quoted}).fetchall():
        if bound == "DEFAULT":
            continue
        match = _BOUNDS.match(bound)
        lo, hi = match.groups() if match else ("", "")
        month = month_of(conn, parent, lo, hi, tz) if match else None
        if month is None:
            raise TableProblem(f"table {parent.label} is not range-partitioned by month: "
                               f"{schema}.{name} is {bound}")
        slots.append(Slot(schema, name, lo, hi, month, attached=True, pending=pending,
                          marker=read_marker(conn, schema, name)))
    return slots


def detached_slots(conn: psycopg.Connection[Any], parent: Parent) -> list[Slot]:
    """Tables an earlier run detached from ``parent`` and has not dropped yet."""
    out = []
    for schema, name, text in conn.execute(MARKED_SQL).fetchall():
        marker = parse_marker(text)
        if marker and marker.get("parent") == parent.label:
            out.append(Slot(schema, name, marker["from"], marker["to"], marker["month"],
                            attached=False, marker=marker))
    return out


def parse_marker(text: str | None) -> dict[str, Any] | None:
    if not text or not text.startswith(MARKER):
        return None
    try:
        value = json.loads(text[len(MARKER):])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_marker(conn: psycopg.Connection[Any], schema: str, name: str) -> dict[str, Any] | None:
    from psycopg import sql

    quoted = sql.Identifier(schema, name).as_string(conn)
    row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                       [quoted]).fetchone()
    return parse_marker(row[0] if row else None)


def set_marker(conn: psycopg.Connection[Any], slot: Slot, marker: dict[str, Any] | None) -> None:
    from psycopg import sql

    text = MARKER + json.dumps(marker, sort_keys=True) if marker is not None else None
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(slot.ident(), sql.Literal(text)))
    slot.marker = marker


def writers(conn: psycopg.Connection[Any], slot: Slot) -> list[tuple[int, str]]:
    quoted = slot.ident().as_string(conn)
    return [(r[0], r[1]) for r in conn.execute(WRITERS_SQL, {"table": quoted})]


def columns(conn: psycopg.Connection[Any], schema: str, name: str) -> list[tuple[str, str]]:
    from psycopg import sql

    quoted = sql.Identifier(schema, name).as_string(conn)
    return [(r[0], r[1]) for r in conn.execute(COLUMNS_SQL, {"table": quoted})]


def size_of(conn: psycopg.Connection[Any], slot: Slot) -> tuple[int, int]:
    """(bytes on disk, estimated rows)."""
    row = conn.execute(SIZE_SQL, {"table": slot.ident().as_string(conn)}).fetchone()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


def copy_sql(slot: Slot, cols: list[str], direction: str) -> Any:
    from psycopg import sql

    names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    verb = sql.SQL("TO STDOUT" if direction == "out" else "FROM STDIN")
    return sql.SQL("COPY {} ({}) {}").format(slot.ident(), names, verb)


def copy_out(conn: psycopg.Connection[Any], slot: Slot,
             cols: list[str]) -> Iterator[Chunk]:
    """The table as COPY text, row by row (inside the caller's transaction).

    Read straight from libpq (``conn.pgconn``): psycopg's Copy object costs about twice
    as much Python time per row, and a partition is millions of rows read while the
    GIL is all this thread has. If the reader stops early, the COPY is cancelled and
    drained, so the caller's transaction can still roll back."""
    from psycopg import errors, pq

    pgconn = conn.pgconn
    pgconn.send_query(copy_sql(slot, cols, "out").as_bytes(conn))
    first = pgconn.get_result()
    if first is None or first.status != pq.ExecStatus.COPY_OUT:
        error = _drain_results(pgconn, first)
        if error is not None:
            raise errors.error_from_result(error, conn.info.encoding)
        raise RuntimeError(f"the COPY of {slot.label} did not start")
    get = pgconn.get_copy_data
    finished = False
    try:
        while True:
            size, data = get(0)
            if size < 0:  # -1: the end; -2: an error, in the results that follow
                break
            yield data
        finished = True
    finally:
        if not finished:
            conn.cancel_safe()
            while get(0)[0] >= 0:
                pass
        error = _drain_results(pgconn, None)
        if finished and error is not None:
            raise errors.error_from_result(error, conn.info.encoding)


def _drain_results(pgconn: Any, result: Any) -> Any:
    """Read the connection's results to the end; the first error among them, or None."""
    from psycopg import pq

    errors = [] if result is None else [result]
    while (result := pgconn.get_result()) is not None:
        errors.append(result)
    return next((r for r in errors if r.status == pq.ExecStatus.FATAL_ERROR), None)


# -- the manifest ---------------------------------------------------------------------


def archive_dir(ctx: JobContext, parent_label: str, month: str) -> str:
    return f"{ctx.settings.archive_prefix}partitions/{parent_label}/{month}/"


def read_manifest(ctx: JobContext, parent_label: str, month: str) -> dict[str, Any] | None:
    from novajobs.errors import JobFailed
    from novajobs.s3archive import get_small

    key = archive_dir(ctx, parent_label, month) + "manifest.json"
    raw = get_small(ctx, ctx.settings.archive_bucket, key)
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise JobFailed(f"s3://{ctx.settings.archive_bucket}/{key} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise JobFailed(f"s3://{ctx.settings.archive_bucket}/{key} is not a novajobs "
                        f"manifest ({MANIFEST_FORMAT})")
    return manifest


def write_manifest(ctx: JobContext, manifest: dict[str, Any]) -> None:
    """One PUT: the manifest (and so the archive it names) is replaced atomically."""
    from novajobs.errors import JobFailed
    from novajobs.s3archive import put_small

    key = archive_dir(ctx, manifest["table"], manifest["month"]) + "manifest.json"
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    put_small(ctx, ctx.settings.archive_bucket, key, body, content_type="application/json")
    if read_manifest(ctx, manifest["table"], manifest["month"]) != manifest:
        raise JobFailed(f"s3://{ctx.settings.archive_bucket}/{key} reads back differently")
