"""archive-audit-logs: move ``audit_logs`` rows past their retention to S3, batch by batch.

Rows with ``created_at`` before the cutoff (the database's ``now()`` at the start of the
run minus ``audit_archive_retention_days``; no default: off until set) go in keyset
batches of ``audit_archive_batch_rows`` (``id > last id``, never OFFSET). Each batch:

1. ``COPY (SELECT ... ORDER BY id) TO STDOUT``, gzip, one object named after the batch's
   first and last id (``audit_logs/<first>-<last>.copy.gz``: a re-run after a crash
   computes the same batch and overwrites it rather than adding a second copy);
2. read back and checked against what was sent (rows, bytes, SHA-256);
3. one transaction: lock the batch's rows (``FOR UPDATE``), read them again and compare
   with the archive, delete exactly those rows and record the object in
   ``novajobs_audit_archive``; a batch that changed meanwhile is left alone.

An object is an archive only once its row in ``novajobs_audit_archive`` is committed
(in the same transaction as the delete). Objects without one are leftovers of a run
that died before committing: their rows are still in the table, so the next run deletes
them before it starts. Hence no row is deleted without a verified archive, and none ends
up in two archives. Two runs at once are kept apart by a PostgreSQL advisory lock, so
safety does not depend on the Redis lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from novajobs.context import JobContext, Result
from novajobs.errors import Outcome
from novajobs.pgarchive import pin_text_format
from novajobs.pgfence import check_pg
from novajobs.pgsession import exclusive_run, pg_session
from novajobs.s3archive import (
    Digest,
    compress,
    digest_of,
    put_small,
    read_digest,
    require_bucket,
)
from novajobs.schema import require_tables

if TYPE_CHECKING:
    import psycopg

TABLE = "audit_logs"

CUTOFF_SQL = "SELECT now() - make_interval(days => %(days)s)"

COUNT_SQL = f"SELECT count(*), min(id), max(id) FROM {TABLE} WHERE created_at < %(cutoff)s"

BATCH_SQL = f"""
SELECT count(*), min(id), max(id) FROM (
    SELECT id FROM {TABLE}
    WHERE created_at < %(cutoff)s AND id > %(after)s
    ORDER BY id
    LIMIT %(limit)s
) AS batch
"""

IN_BATCH = "id BETWEEN %(first)s AND %(last)s AND created_at < %(cutoff)s"

LOCK_SQL = f"SELECT id FROM {TABLE} WHERE {IN_BATCH} ORDER BY id FOR UPDATE"

DELETE_SQL = f"DELETE FROM {TABLE} WHERE id = ANY(%(ids)s)"

RECORD_SQL = """
INSERT INTO novajobs_audit_archive
    (bucket, object_key, first_id, last_id, row_count, sha256, cutoff)
VALUES (%(bucket)s, %(key)s, %(first)s, %(last)s, %(rows)s, %(sha256)s, %(cutoff)s)
"""

RECORDED_SQL = """
SELECT object_key FROM novajobs_audit_archive
WHERE bucket = %(bucket)s AND object_key = ANY(%(keys)s)
"""

COLUMNS_SQL = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = to_regclass(%(table)s) AND attnum > 0 AND NOT attisdropped
ORDER BY attnum
"""


@dataclass(frozen=True)
class Batch:
    first: int
    last: int
    rows: int

    def params(self, cutoff: datetime, **more: Any) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "cutoff": cutoff, **more}


class Archiver:
    """One run: the cutoff, the column list and where the objects go."""

    def __init__(self, ctx: JobContext, conn: psycopg.Connection[Any], cutoff: datetime) -> None:
        s = ctx.settings
        self.ctx, self.conn, self.cutoff = ctx, conn, cutoff
        self.bucket = s.archive_bucket
        self.base = f"{s.archive_prefix}{TABLE}/"
        self.columns = [(r[0], r[1]) for r in conn.execute(COLUMNS_SQL, {"table": TABLE})]

    def key(self, batch: Batch) -> str:
        return f"{self.base}{batch.first:020d}-{batch.last:020d}.copy.gz"

    def copy_sql(self, where: str) -> Any:
        from psycopg import sql

        cols = sql.SQL(", ").join(sql.Identifier(name) for name, _ in self.columns)
        return sql.SQL("COPY (SELECT {} FROM {} WHERE {} ORDER BY id) TO STDOUT").format(
            cols, sql.Identifier(TABLE), sql.SQL(where))

    def read_rows(self, where: str, params: dict[str, Any]) -> bytes:
        """The rows as COPY text, in id order (one batch: it fits in memory)."""
        out = bytearray()
        with self.conn.cursor() as cur, cur.copy(self.copy_sql(where), params) as copy:
            for data in copy:
                out += data
        return bytes(out)

    def next_batch(self, after: int) -> Batch | None:
        params = {"cutoff": self.cutoff, "after": after,
                  "limit": self.ctx.settings.audit_archive_batch_rows}
        row = self.conn.execute(BATCH_SQL, params).fetchone()
        if row is None or not row[0]:
            return None
        return Batch(first=row[1], last=row[2], rows=row[0])

    def archive(self, batch: Batch) -> Digest:
        """Write the batch's object and read it back; returns its verified digest."""
        key = self.key(batch)
        data = self.read_rows(IN_BATCH, batch.params(self.cutoff))
        body, digest = compress(data, self.ctx.settings.archive_compression_level)
        meta = {"table": TABLE, "first-id": str(batch.first), "last-id": str(batch.last),
                "rows": str(digest.rows), "sha256": digest.sha256,
                "columns": ",".join(f"{n}:{t}" for n, t in self.columns)}
        self.ctx.checkpoint()
        put_small(self.ctx, self.bucket, key, body, meta)
        back = read_digest(self.ctx, self.bucket, key)
        if back != digest:
            raise VerifyFailed(f"s3://{self.bucket}/{key} read back differs from what was "
                               f"sent ({back.rows} rows, sha256 {back.sha256[:12]}... vs "
                               f"{digest.rows}, {digest.sha256[:12]}...); rows kept")
        return digest

    def delete(self, batch: Batch, digest: Digest) -> bool:
        """Delete the batch's rows if they are still exactly what was archived."""
        self.ctx.checkpoint()
        with self.conn.transaction():
            check_pg(self.ctx, self.conn, f"delete audit_logs {batch.first}..{batch.last}")
            ids = [r[0] for r in self.conn.execute(LOCK_SQL, batch.params(self.cutoff))]
            again = digest_of([self.read_rows("id = ANY(%(ids)s)", {"ids": ids})])
            if not again.same_data(digest):
                self.ctx.log.warning("batch changed since it was archived; rows kept for the "
                                     "next run", first_id=batch.first, last_id=batch.last)
                self.ctx.count("batches_changed")
                return False
            self.conn.execute(DELETE_SQL, {"ids": ids})
            self.conn.execute(RECORD_SQL, batch.params(
                self.cutoff, bucket=self.bucket, key=self.key(batch), rows=digest.rows,
                sha256=digest.sha256))
        return True

    def recorded(self, keys: list[str]) -> set[str]:
        rows = self.conn.execute(RECORDED_SQL, {"bucket": self.bucket, "keys": keys})
        return {r[0] for r in rows}

    def remove_leftovers(self) -> int:
        """Delete objects no committed batch owns (a run died between upload and commit).

        Their rows are still in the table, so their first id is at least the table's
        smallest id: only keys from there on are listed."""
        row = self.conn.execute(f"SELECT min(id) FROM {TABLE}").fetchone()
        start = f"{self.base}{(row[0] if row and row[0] is not None else 0):020d}"
        client, removed = self.ctx.s3, 0
        listed = self.ctx.retry(
            lambda: [o.object_name for o in client.list_objects(
                self.bucket, prefix=self.base, start_after=start, recursive=True)],
            f"list s3://{self.bucket}/{self.base}")
        for chunk_start in range(0, len(listed), 1000):
            chunk = listed[chunk_start:chunk_start + 1000]
            for key in sorted(set(chunk) - self.recorded(chunk)):
                self.ctx.checkpoint()
                self.ctx.retry(partial(client.remove_object, self.bucket, key),
                               f"remove leftover s3://{self.bucket}/{key}")
                self.ctx.log.info("removed an unfinished archive of an earlier run",
                                  bucket=self.bucket, key=key)
                removed += 1
        return removed


class VerifyFailed(Exception):
    pass


def run(ctx: JobContext) -> Result:
    s = ctx.settings
    if not s.audit_archive_retention_days:
        return ctx.not_configured("audit_archive_retention_days",
                                  "no audit_logs row is archived or deleted", "180")
    with pg_session(ctx) as conn:
        pin_text_format(conn)
        require_tables(conn, owned=("novajobs_audit_archive",), read=(TABLE,))
        require_bucket(ctx, s.archive_bucket)
        with exclusive_run(conn, "archive-audit-logs"):
            return archive_all(ctx, conn)


def archive_all(ctx: JobContext, conn: psycopg.Connection[Any]) -> Result:
    s = ctx.settings
    row = conn.execute(CUTOFF_SQL, {"days": s.audit_archive_retention_days}).fetchone()
    assert row is not None
    job = Archiver(ctx, conn, row[0])
    total, low, high = conn.execute(COUNT_SQL, {"cutoff": job.cutoff}).fetchone() or (0, 0, 0)
    details: dict[str, Any] = {"cutoff": job.cutoff.isoformat(), "bucket": job.bucket,
                               "prefix": job.base, "eligible_rows": total,
                               "first_id": low, "last_id": high}
    ctx.log.info("eligible audit_logs rows", rows=total, cutoff=details["cutoff"],
                 first_id=low, last_id=high)
    if ctx.dry_run:
        batches = -(-total // s.audit_archive_batch_rows)
        ctx.count("would_archive_rows", total)
        return Result(Outcome.DRY_RUN, f"would archive and delete {total} audit_logs rows "
                      f"older than {details['cutoff']} in about {batches} batches to "
                      f"s3://{job.bucket}/{job.base}", details)
    ctx.count("leftovers_removed", job.remove_leftovers())
    archived = archive_batches(ctx, job, total)
    details["rows_archived"] = archived
    if not total:
        return Result(Outcome.NOTHING_TO_DO, "no audit_logs row is past the retention", details)
    changed = ctx.counters["batches_changed"]
    return Result(Outcome.SUCCESS, f"archived and deleted {archived} audit_logs rows in "
                  f"{ctx.counters['batches_archived']} objects"
                  + (f"; {changed} batches changed meanwhile, kept" if changed else ""),
                  details)


def archive_batches(ctx: JobContext, job: Archiver, total: int) -> int:
    from novajobs.errors import JobFailed

    archived, after = 0, 0
    with ctx.progress("archiving audit_logs", total) as bar:
        while (batch := job.next_batch(after)) is not None:
            ctx.checkpoint()
            if job.recorded([job.key(batch)]):  # cannot happen unless ids were reused
                raise JobFailed(f"{job.key(batch)} is already a committed archive; refusing "
                                "to overwrite it (were audit_logs ids reused?)")
            try:
                digest = job.archive(batch)
            except VerifyFailed as exc:
                raise JobFailed(str(exc)) from None
            if job.delete(batch, digest):
                archived += digest.rows
                ctx.count("batches_archived")
                ctx.count("rows_archived", digest.rows)
                ctx.count("bytes_archived", digest.object_bytes)
                ctx.log.debug("archived", key=job.key(batch), rows=digest.rows)
            after = batch.last
            bar.advance(batch.rows)
    return archived
