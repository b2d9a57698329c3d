"""archive-partitions: hot/cold migration of monthly partitions, PostgreSQL -> S3.

For each table of ``archive_retention_months`` (``table=months`` pairs; none by default,
so nothing is archived until configured), every monthly partition whose whole month
lies before the retention (the current month minus N months, in ``partition_timezone``)
goes through these steps, each one safe to repeat:

1. mark it (its comment, see ``pgarchive``) and detach it, ``CONCURRENTLY`` unless the
   parent has a default partition (then a plain DETACH under ``lock_timeout``); a detach
   interrupted half-way is finished with ``DETACH ... FINALIZE``;
2. in one transaction holding a SHARE lock on the detached table (writers wait, readers
   do not): ``COPY ... TO STDOUT`` gzip'd into a multipart upload (memory: a few parts),
   read back and checked, the manifest written (one PUT) and read back, older data
   objects of that month removed — or, if a manifest is there already, the table is
   read again and must match it; then ``DROP TABLE`` (or, with ``archive_keep_detached``,
   the marker says "archived") and commit.

A crash anywhere leaves a marked table (attached or detached) that the next run picks
up; a table is dropped only in the transaction that verified its archive, and a month
has one manifest, replaced atomically. A partition some transaction is writing to, the
default partition, and a table not range-partitioned by month are refused with one line
each; the other tables go on.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from novajobs.context import JobContext, Result
from novajobs.errors import ConfigError, JobFailed, Outcome, UsageError
from novajobs.partitioning import Parent, TableProblem, bound_literal, inspect_parent
from novajobs.pgarchive import (
    MANIFEST_FORMAT,
    TEXT_FORMAT,
    Slot,
    archive_dir,
    attached_slots,
    columns,
    copy_out,
    detached_slots,
    pin_text_format,
    read_manifest,
    set_marker,
    size_of,
    write_manifest,
    writers,
)
from novajobs.pgfence import check_pg
from novajobs.pgsession import exclusive_run, pg_session
from novajobs.s3archive import digest_of, read_digest, require_bucket, upload_stream

if TYPE_CHECKING:
    import psycopg

    from novajobs.settings import Settings


class Busy(Exception):
    """The partition is being written to: left for a later run."""


def retention_months(settings: Settings, only: tuple[str, ...] = ()) -> dict[str, int]:
    pairs = dict(p.split("=", 1) for p in settings.archive_retention_months)
    return {t.strip(): int(m) for t, m in pairs.items() if not only or t.strip() in only}


def check_params(settings: Settings, table: tuple[str, ...] = ()) -> None:
    """Called before the lock (and again by ``run``)."""
    configured = retention_months(settings)
    unknown = [t for t in table if t not in configured]
    if unknown:
        raise UsageError(f"--table {unknown[0]}: it has no retention in "
                         f"archive_retention_months ({', '.join(configured) or 'empty'})")


def month_index(month: str) -> int:
    year, mon = month.split("-")
    return int(year) * 12 + int(mon) - 1


class PartitionArchiver:
    def __init__(self, ctx: JobContext, conn: psycopg.Connection[Any]) -> None:
        self.ctx, self.conn = ctx, conn
        self.tz = ctx.settings.partition_timezone
        self.today = datetime.now(ZoneInfo(self.tz)).date()
        self.concurrently = conn.info.server_version >= 140000
        self.rows: list[dict[str, Any]] = []
        self.problems: list[str] = []  # a table refused: exit 78 at the end
        self.failures: list[str] = []  # a partition failed: exit 1 at the end

    def handle_table(self, name: str, months: int) -> None:
        try:
            parent = inspect_parent(self.conn, name)
            slots = attached_slots(self.conn, parent, self.tz)
            leftovers = detached_slots(self.conn, parent)
        except TableProblem as exc:
            self.problems.append(str(exc))
            self.ctx.log.error(f"refused: {exc}", table=name)
            self.ctx.count("tables_refused")
            return
        first_kept = month_index(f"{self.today:%Y-%m}") - months
        # What earlier runs left half-way first: a parent has at most one detach pending,
        # and detached tables should not pile up behind new detaches.
        old = [s for s in slots if month_index(s.month) < first_kept or (s.pending and s.marker)]
        due = [s for s in old if s.pending] + leftovers + [s for s in old if not s.pending]
        self.ctx.count("partitions_within_retention", len(slots) - len(old))
        self.note_default(parent, first_kept)
        for slot in due:
            self.handle_slot(parent, slot)

    def note_default(self, parent: Parent, first_kept: int) -> None:
        """The default partition is never archived; say so if it holds old rows."""
        from psycopg import sql

        if parent.default is None:
            return
        cutoff = date(first_kept // 12, first_kept % 12 + 1, 1)
        old = self.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} < {}").format(
            sql.Identifier(parent.schema, parent.default), sql.Identifier(parent.key),
            sql.Literal(bound_literal(cutoff, parent.key_type, self.tz)))).fetchone()
        if old and old[0]:
            self.ctx.log.warning(
                f"refused: the default partition {parent.schema}.{parent.default} holds "
                f"{old[0]} rows older than the retention; a default partition is never "
                "archived (move them into monthly partitions: docs/jobs.md#archive-partitions)",
                table=parent.label)
            self.ctx.count("default_rows_not_archived", old[0])

    def handle_slot(self, parent: Parent, slot: Slot) -> None:
        row: dict[str, Any] = {"table": parent.label, "partition": slot.name,
                               "month": slot.month}
        keep = self.ctx.settings.archive_keep_detached
        if keep and slot.marker and slot.marker.get("state") == "archived":
            self.ctx.count("partitions_detached_earlier")
            return
        if self.ctx.dry_run:
            self.plan(slot, row, keep)
            return
        self.ctx.checkpoint()
        try:
            if slot.attached:
                self.detach(parent, slot)
            self.archive(parent, slot, row, keep)
        except Busy as exc:
            self.note(row, f"refused: {exc}", "partitions_busy", warn=True)
        except JobFailed as exc:
            self.failures.append(f"{slot.label}: {exc}")
            self.note(row, f"failed: {exc}", "partitions_failed", warn=True)

    def plan(self, slot: Slot, row: dict[str, Any], keep: bool) -> None:
        size, rows = size_of(self.conn, slot)
        row.update(bytes=size, rows_estimate=rows)
        busy = writers(self.conn, slot)
        if busy:
            self.note(row, f"refused: receiving writes (pid {busy[0][0]})", "partitions_busy")
            return
        steps = ["detach"] if slot.attached else []
        steps += ["archive", "keep detached" if keep else "drop"]
        self.note(row, "would " + ", ".join(steps), "partitions_would_archive")

    def detach(self, parent: Parent, slot: Slot) -> None:
        import psycopg
        from psycopg import sql

        busy = writers(self.conn, slot)
        if busy:
            pid, mode = busy[0]
            raise Busy(f"receiving writes (pid {pid} holds {mode}); left for a later run")
        set_marker(self.conn, slot, {
            "parent": parent.label, "month": slot.month, "from": slot.lo, "to": slot.hi,
            "state": "detaching", "run_id": self.ctx.run_id})
        how = "FINALIZE" if slot.pending else (
            "CONCURRENTLY" if self.concurrently and parent.default is None else "")
        self.ctx.checkpoint()
        try:
            self.conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} {}").format(
                sql.Identifier(parent.schema, parent.table), slot.ident(), sql.SQL(how)))
        except psycopg.errors.LockNotAvailable:
            # A long transaction on the parent: DETACH waits for it (CONCURRENTLY: for
            # every transaction using the parent). The next run finishes the detach.
            raise Busy(f"the detach waited lock_timeout for a transaction on "
                       f"{parent.label}; left for a later run") from None
        except psycopg.errors.ObjectNotInPrerequisiteState:
            raise Busy(f"another partition of {parent.label} is still pending detach; "
                       "left for a later run") from None
        slot.attached = False
        self.ctx.log.info(f"detached {slot.label}", how=how or "plain", month=slot.month)

    def archive(self, parent: Parent, slot: Slot, row: dict[str, Any], keep: bool) -> None:
        """Archive (or check the archive of) the detached table, then drop it, in one
        transaction that keeps writers out of it."""
        import psycopg
        from psycopg import sql

        try:
            with self.conn.transaction():
                check_pg(self.ctx, self.conn, f"archive {slot.label}")
                self.conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(slot.ident()))
                manifest, reused = self.archive_locked(parent, slot)
                self.ctx.checkpoint()
                if keep:
                    set_marker(self.conn, slot, {**(slot.marker or {}), "state": "archived",
                                                 "sha256": manifest["sha256"]})
                else:
                    self.conn.execute(sql.SQL("DROP TABLE {}").format(slot.ident()))
        except psycopg.errors.LockNotAvailable:
            raise Busy("a writer holds the detached table; left for a later run") from None
        row.update(rows=manifest["rows"], object_bytes=manifest["object_bytes"],
                   object=f"s3://{self.ctx.settings.archive_bucket}/{manifest['data_key']}")
        verb = "checked against its archive" if reused else "archived"
        self.note(row, f"{verb}, {'kept detached' if keep else 'dropped'}",
                  "partitions_kept_detached" if keep else "partitions_archived")
        if not reused:
            self.ctx.count("rows_archived", manifest["rows"])
            self.ctx.count("bytes_archived", manifest["object_bytes"])

    def archive_locked(self, parent: Parent, slot: Slot) -> tuple[dict[str, Any], bool]:
        cols = columns(self.conn, slot.schema, slot.name)
        names = [c for c, _ in cols]
        existing = read_manifest(self.ctx, parent.label, slot.month)
        if existing and existing["columns"] == [list(c) for c in cols]:
            now = digest_of(copy_out(self.conn, slot, names))
            if (now.rows, now.sha256) == (existing["rows"], existing["sha256"]):
                return existing, True
        return self.upload(parent, slot, cols), False

    def upload(self, parent: Parent, slot: Slot, cols: list[tuple[str, str]]) -> dict[str, Any]:
        s, ctx = self.ctx.settings, self.ctx
        folder = archive_dir(ctx, parent.label, slot.month)
        data_key = f"{folder}data-{ctx.run_id}.copy.gz"
        estimate = size_of(self.conn, slot)[1]
        with ctx.progress(f"archiving {slot.label}", estimate or None) as bar:
            def advance(rows: int) -> None:
                ctx.checkpoint()
                bar.advance(rows)

            digest = upload_stream(
                ctx, s.archive_bucket, data_key, copy_out(self.conn, slot, [c for c, _ in cols]),
                level=s.archive_compression_level, part_size=s.archive_part_size_mb << 20,
                metadata={"table": parent.label, "month": slot.month}, on_block=advance)
        back = read_digest(ctx, s.archive_bucket, data_key)
        if back != digest:
            raise JobFailed(f"s3://{s.archive_bucket}/{data_key} reads back as {back.rows} "
                            f"rows, sha256 {back.sha256[:12]}..., not {digest.rows} rows, "
                            f"{digest.sha256[:12]}...; the table is kept")
        manifest = {
            "format": MANIFEST_FORMAT, "table": parent.label, "partition": slot.name,
            "month": slot.month, "key": parent.key, "key_type": parent.key_type,
            "from": slot.lo, "to": slot.hi, "columns": [list(c) for c in cols],
            "data_key": data_key, "compression": "gzip", "text_format": TEXT_FORMAT,
            "run_id": ctx.run_id,
            "archived_at": datetime.now(ZoneInfo("UTC")).isoformat(timespec="seconds"),
            **digest.as_dict(),
        }
        write_manifest(ctx, manifest)
        self.remove_other_data(folder, data_key)
        return manifest

    def remove_other_data(self, folder: str, keep: str) -> None:
        """Data objects of earlier attempts at this month: no manifest names them now."""
        client, bucket = self.ctx.s3, self.ctx.settings.archive_bucket
        names = self.ctx.retry(
            lambda: [o.object_name for o in client.list_objects(bucket, prefix=folder)],
            f"list s3://{bucket}/{folder}")
        for name in names:
            if name not in (keep, f"{folder}manifest.json"):
                self.ctx.retry(partial(client.remove_object, bucket, name),
                               f"remove s3://{bucket}/{name}")
                self.ctx.count("stale_objects_removed")

    def note(self, row: dict[str, Any], action: str, counter: str, warn: bool = False) -> None:
        row["action"] = action
        self.rows.append(row)
        self.ctx.count(counter)
        log = self.ctx.log.warning if warn else self.ctx.log.info
        log(f"{row['table']} {row['month']} ({row['partition']}): {action}")


def run(ctx: JobContext, table: tuple[str, ...] = ()) -> Result:
    s = ctx.settings
    check_params(s, table)
    tables = retention_months(s, table)
    if not tables:
        return ctx.not_configured("archive_retention_months", "no partition is archived",
                                  "chat_messages=12,chat_inbox=12")
    with pg_session(ctx, lock_timeout_sec=s.pg_lock_timeout_sec) as conn:
        pin_text_format(conn)
        if not ctx.dry_run:
            require_bucket(ctx, s.archive_bucket)
        with exclusive_run(conn, "archive-partitions"):
            job = PartitionArchiver(ctx, conn)
            for name, months in tables.items():
                job.handle_table(name, months)
    return summarize(ctx, job)


def summarize(ctx: JobContext, job: PartitionArchiver) -> Result:
    details = {"listing": "partitions", "partitions": job.rows,
               "bucket": ctx.settings.archive_bucket}
    if job.problems:
        raise ConfigError("; ".join(job.problems), details)
    if job.failures:
        raise JobFailed("; ".join(job.failures), details)
    c = ctx.counters
    if ctx.dry_run:
        busy = f"; {c['partitions_busy']} being written to" if c["partitions_busy"] else ""
        return Result(Outcome.DRY_RUN, f"would archive {c['partitions_would_archive']} "
                      f"partitions{busy}", details)
    done = c["partitions_archived"] + c["partitions_kept_detached"]
    busy = (f"; {c['partitions_busy']} busy (being written to), left for a later run"
            if c["partitions_busy"] else "")
    if not done and not busy:
        return Result(Outcome.NOTHING_TO_DO, "no partition past the retention", details)
    return Result(Outcome.SUCCESS, f"archived {c['partitions_archived']} partitions "
                  f"({c['rows_archived']} rows), {c['partitions_kept_detached']} kept "
                  f"detached{busy}", details)
