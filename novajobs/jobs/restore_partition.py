"""restore-partition TABLE YYYY-MM: bring one archived month back, S3 -> PostgreSQL.

Reads the month's manifest (see ``pgarchive``), then in one transaction: creates the
partition's table like the parent (defaults and constraints), ``COPY ... FROM STDIN``
from the archive (uncompressed as it streams), checks what S3 sent and what the table
now holds against the manifest (rows, SHA-256 of the COPY text), and attaches it for
the month's bounds. Any mismatch, overlap or error rolls it all back: the parent never
shows a half-restored month. A table archive-partitions kept detached is checked the
same way and attached without copying. The archive stays in S3.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from novajobs.context import JobContext, Result
from novajobs.errors import ConfigError, JobFailed, Outcome, UsageError
from novajobs.partitioning import Parent, TableProblem, inspect_parent
from novajobs.pgarchive import (
    Slot,
    archive_dir,
    columns,
    copy_out,
    copy_sql,
    pin_text_format,
    read_manifest,
    read_marker,
    set_marker,
)
from novajobs.pgfence import check_pg
from novajobs.pgsession import exclusive_run, pg_session
from novajobs.s3archive import Digest, digest_of, stream_object

if TYPE_CHECKING:
    import psycopg

    from novajobs.settings import Settings

STATE_SQL = """
SELECT c.relkind, i.inhparent = to_regclass(%(parent)s) AS ours, c.relispartition
FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
WHERE c.oid = to_regclass(%(name)s)
"""


def check_params(settings: Settings, table: str | None = None,
                 month: str | None = None) -> tuple[str, str]:
    """Called before the lock (and again by ``run``)."""
    if not table or not month:
        raise UsageError("restore-partition needs TABLE and YYYY-MM, e.g. "
                         "`novajobs restore-partition chat_messages 2025-01`")
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise UsageError(f"restore-partition: {month!r} is not a month (YYYY-MM)")
    return table, month


def run(ctx: JobContext, table: str | None = None, month: str | None = None) -> Result:
    table, month = check_params(ctx.settings, table, month)
    s = ctx.settings
    with pg_session(ctx, lock_timeout_sec=s.pg_lock_timeout_sec) as conn:
        pin_text_format(conn)
        try:
            parent = inspect_parent(conn, table)
        except TableProblem as exc:
            raise ConfigError(str(exc)) from None
        manifest = read_manifest(ctx, parent.label, month)
        if manifest is None:
            folder = archive_dir(ctx, parent.label, month)
            raise UsageError(f"no archive of {parent.label} {month}: "
                             f"s3://{s.archive_bucket}/{folder}manifest.json does not exist")
        slot = Slot(parent.schema, manifest["partition"], manifest["from"], manifest["to"],
                    month, attached=False)
        details = {"table": parent.label, "month": month, "partition": slot.label,
                   "rows": manifest["rows"],
                   "object": f"s3://{s.archive_bucket}/{manifest['data_key']}"}
        with exclusive_run(conn, "archive-partitions"):  # never beside an archive run
            state = table_state(conn, parent, slot)
            if state == "attached":
                return Result(Outcome.NOTHING_TO_DO, f"{slot.label} is already a partition "
                              f"of {parent.label}", details)
            if ctx.dry_run:
                how = "attach the kept detached table" if state == "detached" else (
                    f"restore {manifest['rows']} rows from {details['object']}")
                return Result(Outcome.DRY_RUN, f"would {how} as {slot.label} for "
                              f"[{slot.lo}, {slot.hi})", details)
            ctx.checkpoint()
            restore(ctx, conn, parent, slot, manifest, reuse=state == "detached")
    ctx.count("rows_restored", manifest["rows"])
    return Result(Outcome.SUCCESS, f"restored {parent.label} {month}: {manifest['rows']} rows "
                  f"in {slot.label}, verified and attached", details)


def table_state(conn: psycopg.Connection[Any], parent: Parent, slot: Slot) -> str:
    """``missing``, ``attached`` (already a partition of parent), or ``detached`` (the
    table archive-partitions kept). Anything else by that name is refused."""
    from psycopg import sql

    params = {"parent": sql.Identifier(parent.schema, parent.table).as_string(conn),
              "name": slot.ident().as_string(conn)}
    row = conn.execute(STATE_SQL, params).fetchone()
    if row is None:
        return "missing"
    _, ours, is_partition = row
    if is_partition and ours:
        return "attached"
    marker = read_marker(conn, slot.schema, slot.name)
    if not is_partition and marker and marker.get("parent") == parent.label:
        return "detached"
    raise JobFailed(f"a table {slot.label} exists and is not the archived partition; "
                    "rename or drop it, then restore again")


def restore(ctx: JobContext, conn: psycopg.Connection[Any], parent: Parent, slot: Slot,
            manifest: dict[str, Any], *, reuse: bool) -> None:
    import psycopg
    from psycopg import sql

    names = [c for c, _ in manifest["columns"]]
    missing = sorted(set(names) - {c for c, _ in columns(conn, parent.schema, parent.table)})
    if missing:
        raise JobFailed(f"{parent.label} no longer has the archive's column(s) "
                        f"{', '.join(missing)}; restore it by hand (COPY the archive's data)")
    try:
        with conn.transaction():
            check_pg(ctx, conn, f"restore {slot.label}")
            conn.execute("SET LOCAL synchronize_seqscans = off")  # read back in load order
            if reuse:
                set_marker(conn, slot, None)
            else:
                conn.execute(sql.SQL(
                    "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                ).format(slot.ident(), sql.Identifier(parent.schema, parent.table)))
                sent = load(ctx, conn, slot, names, manifest["data_key"])
                check(manifest, sent, f"s3://{ctx.settings.archive_bucket}/"
                      f"{manifest['data_key']}")
            check(manifest, digest_of(copy_out(conn, slot, names)), slot.label)
            ctx.checkpoint()
            conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) "
                                 "TO ({})").format(
                sql.Identifier(parent.schema, parent.table), slot.ident(),
                sql.Literal(slot.lo), sql.Literal(slot.hi)))
    except (psycopg.errors.InvalidObjectDefinition, psycopg.errors.CheckViolation) as exc:
        # Overlaps an existing partition, or the default partition holds rows of the month.
        detail = str(exc).splitlines()[0]
        raise JobFailed(f"cannot attach {slot.label} to {parent.label}: {detail}; nothing "
                        "was restored") from None


def load(ctx: JobContext, conn: psycopg.Connection[Any], slot: Slot, names: list[str],
         key: str) -> Digest:
    """COPY the archive into the new table; returns the digest of what S3 sent."""
    import hashlib

    hasher, rows, size = hashlib.sha256(), 0, 0
    with ctx.progress(f"restoring {slot.label}") as bar, conn.cursor() as cur, cur.copy(
            copy_sql(slot, names, "in")) as copy:
        for data in stream_object(ctx, ctx.settings.archive_bucket, key):
            hasher.update(data)
            rows += data.count(b"\n")
            size += len(data)
            copy.write(data)
            bar.advance(data.count(b"\n"))
    return Digest(rows, size, hasher.hexdigest(), 0)


def check(manifest: dict[str, Any], got: Digest, what: str) -> None:
    if (got.rows, got.sha256) != (manifest["rows"], manifest["sha256"]):
        raise JobFailed(f"{what} holds {got.rows} rows, sha256 {got.sha256[:12]}..., but the "
                        f"manifest says {manifest['rows']} rows, {manifest['sha256'][:12]}...; "
                        "nothing was restored")
