"""gc-files: delete marked files from S3 and ``file_metadata`` without ever losing a referenced one.

A file is *eligible* when its row says ``status = 2`` (marked for deletion),
``ref_count = 0``, and it was last updated before the cutoff (the database's ``now()``
at the start of the run minus the grace period). Another service may reference a file
again at any moment: an upload of the same hash sets ``ref_count = 1, status = 0``.

Each page is one transaction that keeps that race safe:

1. keyset scan (``id > last id``, never OFFSET) for the next page of eligible ids;
2. lock those rows ``FOR UPDATE SKIP LOCKED`` *and re-check* the condition, so a row
   re-referenced since the scan, or held by a writer right now, is skipped;
3. delete the locked rows' objects with S3 multi-object deletes (``NoSuchKey`` = gone);
4. delete only the rows whose objects are gone (one ``DELETE ... = ANY``), commit.

A writer re-referencing a file either commits first (the re-check skips it and the
object stays) or waits on the row lock and then finds the row gone, so it uploads the
file again. Memory holds one page. Nothing here depends on the Redis lock for safety:
two runs of the same shard only skip each other's locked rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from novajobs.context import JobContext, Result, Shard
from novajobs.conversions import batched
from novajobs.dates import parse_duration
from novajobs.errors import JobFailed, Outcome
from novajobs.pgfence import check_pg
from novajobs.retry import describe_error, is_transient
from novajobs.schema import require_tables

S3_MAX_KEYS_PER_DELETE = 1000  # the S3 API's limit for one multi-object delete
GONE_CODES = {"NoSuchKey"}  # the object is not there: exactly what we wanted
LOGGED_FAILURES = 100  # one warning per failed file up to this many, then one per page

CUTOFF_SQL = "SELECT now() - make_interval(secs => %(grace)s)"

ELIGIBLE_WHERE = """
    status = 2
    AND ref_count = 0
    AND updated_at < %(cutoff)s
    AND mod(id, %(total)s) = %(remainder)s
"""

COUNT_SQL = f"""
SELECT count(*), coalesce(sum(size), 0)
FROM file_metadata
WHERE {ELIGIBLE_WHERE}
"""

SCAN_SQL = f"""
SELECT id, bucket, path, size
FROM file_metadata
WHERE {ELIGIBLE_WHERE}
  AND id > %(after)s
ORDER BY id
LIMIT %(limit)s
"""

# The re-check under the row lock: the scan's snapshot may be stale by now.
LOCK_SQL = f"""
SELECT id, bucket, path, size
FROM file_metadata
WHERE id = ANY(%(ids)s)
  AND {ELIGIBLE_WHERE}
ORDER BY id
FOR UPDATE SKIP LOCKED
"""

DELETE_SQL = "DELETE FROM file_metadata WHERE id = ANY(%(ids)s)"


class FileRow(NamedTuple):
    id: int
    bucket: str
    path: str
    size: int


@dataclass(frozen=True)
class Scope:
    """Which rows this run may touch: eligible before ``cutoff``, in this shard."""

    cutoff: datetime
    total: int
    remainder: int

    def params(self, **more: Any) -> dict[str, Any]:
        return {"cutoff": self.cutoff, "total": self.total, "remainder": self.remainder, **more}


@dataclass
class Tally:
    """What the run did, per bucket; small whatever the number of rows."""

    files: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: int = 0  # candidates from the scan
    locked: int = 0  # candidates that passed the re-check under the lock
    skipped: int = 0

    def by_bucket(self) -> dict[str, dict[str, int]]:
        names = sorted({*self.files, *self.failed})
        return {
            b: {"files": self.files[b], "bytes": self.bytes[b], "failed": self.failed[b]}
            for b in names
        }


class PageOutcome(NamedTuple):
    gone: list[FileRow]
    failed: list[tuple[FileRow, str]]  # with the S3 error code
    error: BaseException | None  # a transient error that ended the page early


def run(ctx: JobContext) -> Result:
    limit = ctx.settings.gc_limit or None
    shard = ctx.shard or Shard(1, 1)
    scope = open_scope(ctx, shard, parse_duration(ctx.settings.gc_grace))
    total_files, total_bytes = count_eligible(ctx, scope)
    expected = min(total_files, limit) if limit else total_files
    ctx.log.info(
        "eligible files",
        files=total_files,
        bytes=total_bytes,
        cutoff=scope.cutoff.isoformat(),
        limit=limit,
    )
    tally = Tally()
    verb = "checking" if ctx.dry_run else "deleting"
    with ctx.progress(f"{verb} marked files", expected) as bar:
        for page in scan_pages(ctx, scope, limit, tally):
            if ctx.dry_run:
                report_page(ctx, page, tally)
            else:
                collect_page(ctx, scope, page, tally)
            bar.advance(len(page))
    return summarize(ctx, tally, limit)


def open_scope(ctx: JobContext, shard: Shard, grace_sec: float) -> Scope:
    """Fix the cutoff once, on the database's clock (the one that wrote updated_at)."""
    try:
        require_tables(ctx.pg, read=("file_metadata",))
        row = ctx.pg.execute(CUTOFF_SQL, {"grace": grace_sec}).fetchone()
    finally:
        ctx.pg.rollback()
    assert row is not None
    return Scope(cutoff=row[0], total=shard.total, remainder=shard.remainder)


def count_eligible(ctx: JobContext, scope: Scope) -> tuple[int, int]:
    row = ctx.pg.execute(COUNT_SQL, scope.params()).fetchone()
    ctx.pg.rollback()  # end the read: no transaction stays open between pages
    assert row is not None
    return int(row[0]), int(row[1])


def scan_pages(
    ctx: JobContext, scope: Scope, limit: int | None, tally: Tally
) -> Iterator[list[FileRow]]:
    """Pages of candidates in id order. Each page is left open in a transaction that
    the consumer ends (commit or rollback) before asking for the next one."""
    page_size = ctx.settings.gc_page_size
    after = 0
    while True:
        wanted = page_size if limit is None else min(page_size, limit - tally.locked)
        if wanted <= 0:
            return
        ctx.checkpoint()
        rows = ctx.pg.execute(SCAN_SQL, scope.params(after=after, limit=wanted)).fetchall()
        page = [FileRow(*r) for r in rows]
        tally.seen += len(page)
        if page:
            yield page
            after = page[-1].id
        if len(page) < wanted:
            ctx.pg.rollback()
            return


def report_page(ctx: JobContext, page: list[FileRow], tally: Tally) -> None:
    """The dry-run path: say what would go, lock and change nothing."""
    ctx.pg.rollback()
    for row in page:
        ctx.log.info("would delete", file_id=row.id, bucket=row.bucket, path=row.path,
                     bytes=row.size)
        tally.files[row.bucket] += 1
        tally.bytes[row.bucket] += row.size
    tally.locked += len(page)
    ctx.count("would_delete_files", len(page))
    ctx.count("would_free_bytes", sum(r.size for r in page))


def collect_page(ctx: JobContext, scope: Scope, page: list[FileRow], tally: Tally) -> None:
    """Lock and re-check, delete objects, delete the rows whose objects are gone, commit."""
    conn = ctx.pg
    with ctx.critical():
        try:
            params = scope.params(ids=[r.id for r in page])
            locked = [FileRow(*r) for r in conn.execute(LOCK_SQL, params).fetchall()]
            ctx.checkpoint()  # the last point where stopping is free: nothing deleted yet
            # S3 checks no fence: the page's fence check, in its transaction, comes first
            # (a newer run's page transaction waits on the fence row until this one ends).
            check_pg(ctx, conn, "gc-files page")
            # From here on no checkpoint: the row locks, not the Redis lock, make the page
            # safe, and stopping now would leave rows whose objects are gone.
            outcome = delete_objects(ctx, locked)
            if outcome.gone:
                conn.execute(DELETE_SQL, {"ids": [r.id for r in outcome.gone]})
            conn.commit()
        except BaseException:
            _rollback_quietly(ctx)
            raise
        record_page(ctx, outcome, tally, skipped=len(page) - len(locked))
    if outcome.error is not None:
        raise outcome.error
    failed = sum(tally.failed.values())
    if failed > ctx.settings.gc_max_failures:
        raise JobFailed(
            f"{failed} object deletes failed, more than gc_max_failures "
            f"({ctx.settings.gc_max_failures}); their rows were kept"
        )


def delete_objects(ctx: JobContext, rows: list[FileRow]) -> PageOutcome:
    """Delete the objects of ``rows``, one multi-object delete per bucket and 1000 keys.

    A request the store refuses as a whole (no such bucket, access denied, a 5xx) fails
    its objects and the page goes on. A transient error that outlived the retries ends
    the page: the objects confirmed gone so far still lose their rows, then it is raised.
    """
    from minio.error import MinioException

    by_bucket: defaultdict[str, list[FileRow]] = defaultdict(list)
    for row in rows:
        by_bucket[row.bucket].append(row)
    gone: list[FileRow] = []
    failed: list[tuple[FileRow, str]] = []
    for bucket, bucket_rows in by_bucket.items():
        for chunk in batched(bucket_rows, S3_MAX_KEYS_PER_DELETE):
            try:
                errors = remove_objects(ctx, bucket, [r.path for r in chunk])
            except MinioException as exc:
                code = getattr(exc, "code", None) or type(exc).__name__
                failed.extend((r, code) for r in chunk)
                continue
            except Exception as exc:
                if not is_transient(exc):
                    raise
                return PageOutcome(gone, failed, exc)
            for row in chunk:
                code = errors.get(row.path)
                if code is None or code in GONE_CODES:
                    gone.append(row)
                else:
                    failed.append((row, code))
    return PageOutcome(gone, failed, None)


def remove_objects(ctx: JobContext, bucket: str, paths: list[str]) -> dict[str, str]:
    """One multi-object delete; returns {key: error code} for the keys that failed."""
    from minio.deleteobjects import DeleteObject

    objects = [DeleteObject(p) for p in paths]

    def call() -> dict[str, str]:
        # remove_objects is lazy: the request is only sent while its result is consumed.
        errors = ctx.s3.remove_objects(bucket, objects)
        return {e.name: e.code for e in errors if e.name is not None}

    return ctx.retry(call, f"delete {len(paths)} objects in S3 bucket {bucket}")


def record_page(ctx: JobContext, outcome: PageOutcome, tally: Tally, skipped: int) -> None:
    tally.locked += len(outcome.gone) + len(outcome.failed)
    tally.skipped += skipped
    for row in outcome.gone:
        tally.files[row.bucket] += 1
        tally.bytes[row.bucket] += row.size
        ctx.log.debug("deleted", file_id=row.id, bucket=row.bucket, path=row.path)
    for row, code in outcome.failed:
        tally.failed[row.bucket] += 1
        if sum(tally.failed.values()) <= LOGGED_FAILURES:
            ctx.log.warning("object delete failed; row kept", file_id=row.id,
                            bucket=row.bucket, path=row.path, error=code)
    if sum(tally.failed.values()) > LOGGED_FAILURES and outcome.failed:
        ctx.log.warning("more object deletes failed; rows kept", files=len(outcome.failed))
    ctx.count("files_skipped", skipped)
    ctx.count("files_deleted", len(outcome.gone))
    ctx.count("bytes_freed", sum(r.size for r in outcome.gone))
    ctx.count("files_failed", len(outcome.failed))


def summarize(ctx: JobContext, tally: Tally, limit: int | None) -> Result:
    buckets = tally.by_bucket()
    files, size = sum(tally.files.values()), sum(tally.bytes.values())
    failed = sum(tally.failed.values())
    for bucket, numbers in buckets.items():
        ctx.log.info("bucket summary", bucket=bucket, dry_run=ctx.dry_run or None, **numbers)
    limit_reached = limit is not None and tally.locked >= limit
    details = {"buckets": buckets, "files": files, "bytes": size, "skipped": tally.skipped,
               "failed": failed, "limit_reached": limit_reached}
    more = " (limit reached; more may remain)" if limit_reached else ""
    if ctx.dry_run:
        message = f"dry run: would delete {files} files, {human_bytes(size)}{more}"
        return Result(Outcome.DRY_RUN, message, details)
    if tally.seen == 0:
        return Result(Outcome.NOTHING_TO_DO, "no files to delete", details)
    message = (f"deleted {files} files, freed {human_bytes(size)}; skipped {tally.skipped} "
               f"referenced or busy, {failed} failed{more}")
    return Result(Outcome.SUCCESS, message, details)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _rollback_quietly(ctx: JobContext) -> None:
    try:
        ctx.pg.rollback()
    except Exception as exc:  # a broken connection rolls back by itself
        ctx.log.debug("rollback failed", error=describe_error(exc))


