"""gc-orphans: objects with no ``file_metadata`` row go to quarantine; rows with no object
are counted, sampled and (with ``--mark-missing``) marked. Nothing is deleted here
except quarantined objects past ``quarantine_retention``.

Each bucket of ``orphan_buckets`` is listed (S3 lists keys in byte order) beside its
rows read in the same order (keyset pages of ``path COLLATE "C"``), and the two sorted
streams are merged: memory holds a page of each whatever the bucket's size. A shard
``I/N`` owns the keys whose CRC-32 is ``I-1`` modulo N, so N pods split one bucket.

An object without a row that is older than ``orphan_grace`` (uploads write the object
before the row) is an orphan. Orphans go in batches: the rows are looked up again just
before acting; each remaining orphan is copied into the quarantine only if its ETag is
still the listed one, then deleted; then the rows are looked up once more, and an object
whose row appeared meanwhile is put back at once; ``orphan_settle_sec`` after the last
move the moved objects' rows are looked up once more (an upload in flight writes its row
right after the object). A row written at any point therefore keeps (or gets back) its
object; one written later than that finds it in the quarantine.

Rows whose object is missing: live rows (status != 2) older than the run are counted;
the first ``orphan_sample_size`` are in the record.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from novajobs import quarantine
from novajobs.context import JobContext, Result, Shard
from novajobs.dates import parse_duration
from novajobs.errors import ConfigError, JobFailed, Outcome
from novajobs.pgfence import check_pg
from novajobs.pgsession import pg_session
from novajobs.registry import check_flag
from novajobs.s3archive import require_bucket
from novajobs.schema import require_tables

if TYPE_CHECKING:
    import psycopg

    from novajobs.settings import Settings

ROWS_SQL = """
SELECT path, id, status, created_at FROM file_metadata
WHERE bucket = %(bucket)s AND (path COLLATE "C", id) > (%(after)s, %(after_id)s)
ORDER BY path COLLATE "C", id
LIMIT %(limit)s
"""

PRESENT_SQL = """
SELECT DISTINCT path FROM file_metadata
WHERE bucket = %(bucket)s AND path COLLATE "C" = ANY(%(paths)s)
"""

MARK_SQL = """
INSERT INTO novajobs_missing_objects (file_id, bucket, path, key_hash, first_seen, last_seen)
SELECT unnest(%(ids)s::bigint[]), %(bucket)s, unnest(%(paths)s::text[]),
       unnest(%(hashes)s::bigint[]), now(), now()
ON CONFLICT (file_id) DO UPDATE SET last_seen = now(), path = EXCLUDED.path
"""

UNMARK_SQL = """
DELETE FROM novajobs_missing_objects
WHERE bucket = %(bucket)s AND key_hash %% %(total)s = %(remainder)s AND last_seen < %(start)s
"""


ROWS_PAGE = 5000
LATE_CHECK_CHUNK = 10_000  # moved objects remembered for the late re-check (memory bound)
PROGRESS_EVERY = 1000


class Obj(NamedTuple):
    key: str
    size: int
    etag: str | None
    modified: datetime | None


class Row(NamedTuple):
    path: str
    id: int
    status: int
    created_at: datetime


def key_hash(key: str) -> int:
    return zlib.crc32(key.encode())


@dataclass
class Tally:
    sample: list[dict[str, Any]] = field(default_factory=list)
    per_bucket: dict[str, dict[str, int]] = field(default_factory=dict)


class OrphanScan:
    def __init__(self, ctx: JobContext, conn: psycopg.Connection[Any], start: datetime,
                 mark_missing: bool) -> None:
        s = ctx.settings
        self.ctx, self.conn, self.start, self.mark_missing = ctx, conn, start, mark_missing
        self.shard = ctx.shard or Shard(1, 1)
        self.cutoff = start - timedelta(seconds=parse_duration(s.orphan_grace))
        self.tally = Tally()
        self.moved: list[Obj] = []  # quarantined, not yet looked up after the settle time
        self.moved_at = 0.0

    def mine(self, key: str) -> bool:
        return key_hash(key) % self.shard.total == self.shard.remainder

    # -- the two sorted streams ---------------------------------------------------------
    def objects(self, bucket: str) -> Iterator[Obj]:
        s = self.ctx.settings
        for o in self.ctx.s3.list_objects(bucket, recursive=True):
            if not quarantine.is_quarantine_key(s, bucket, o.object_name):
                yield Obj(o.object_name, o.size or 0, o.etag, o.last_modified)

    def rows(self, bucket: str) -> Iterator[Row]:
        after, after_id = "", 0
        while True:
            page = self.row_page(bucket, after, after_id)
            yield from page
            if len(page) < ROWS_PAGE:
                return
            after, after_id = page[-1].path, page[-1].id

    def row_page(self, bucket: str, after: str, after_id: int) -> list[Row]:
        params = {"bucket": bucket, "after": after, "after_id": after_id, "limit": ROWS_PAGE}
        return [Row(*r) for r in self.conn.execute(ROWS_SQL, params).fetchall()]

    # -- one bucket ---------------------------------------------------------------------
    def scan(self, bucket: str) -> None:
        size = self.ctx.settings.orphan_batch_size
        numbers = self.tally.per_bucket.setdefault(bucket, {})
        orphans: list[Obj] = []
        missing: list[Row] = []
        checked = 0
        with self.ctx.progress(f"checking s3://{bucket}") as bar:
            for obj, row in merge(self.objects(bucket), self.rows(bucket)):
                if obj is not None and self.mine(obj.key):
                    checked += 1
                    if row is None and self.past_grace(obj):
                        orphans.append(obj)
                elif obj is None and row is not None and self.missing_object(row):
                    missing.append(row)
                if len(orphans) >= size:
                    self.handle_orphans(bucket, orphans, numbers)
                    orphans = []
                if len(missing) >= size:
                    self.note_missing(bucket, missing, numbers)
                    missing = []
                if checked >= PROGRESS_EVERY:
                    self.checked(bar, numbers, checked)
                    checked = 0
            self.checked(bar, numbers, checked)
        self.handle_orphans(bucket, orphans, numbers)
        self.late_check(bucket, numbers)
        self.note_missing(bucket, missing, numbers)
        if self.mark_missing and not self.ctx.dry_run:
            with self.conn.transaction():
                check_pg(self.ctx, self.conn, "forget rows found whole again")
                self.conn.execute(UNMARK_SQL, {"bucket": bucket, "total": self.shard.total,
                                               "remainder": self.shard.remainder,
                                               "start": self.start})

    def checked(self, bar: Any, numbers: dict[str, int], n: int) -> None:
        self.ctx.count("objects_checked", n)
        numbers["objects_checked"] = numbers.get("objects_checked", 0) + n
        bar.advance(n)

    def past_grace(self, obj: Obj) -> bool:
        if obj.modified is not None and obj.modified >= self.cutoff:
            self.ctx.count("orphans_within_grace")
            return False
        return True

    def missing_object(self, row: Row) -> bool:
        return row.status != 2 and row.created_at < self.start and self.mine(row.path)

    def present(self, bucket: str, paths: list[str]) -> set[str]:
        rows = self.conn.execute(PRESENT_SQL, {"bucket": bucket, "paths": paths}).fetchall()
        return {r[0] for r in rows}

    def handle_orphans(self, bucket: str, batch: list[Obj], numbers: dict[str, int]) -> None:
        """Re-check, quarantine, re-check again and put back what got a row meanwhile."""
        if not batch:
            return
        ctx = self.ctx
        ctx.checkpoint()
        rescued = self.present(bucket, [o.key for o in batch])
        orphans = [o for o in batch if o.key not in rescued]
        ctx.count("rescued_by_recheck", len(rescued))
        if ctx.dry_run:
            for o in orphans:
                ctx.log.info("would quarantine", bucket=bucket, key=o.key, bytes=o.size)
            self.add(numbers, "would_quarantine", len(orphans), sum(o.size for o in orphans))
            return
        moved = [o for o in orphans if quarantine.move_in(ctx, bucket, o.key, o.etag)]
        ctx.count("changed_meanwhile", len(orphans) - len(moved))
        for o in moved:
            ctx.log.debug("quarantined", bucket=bucket, key=o.key, bytes=o.size)
        self.add(numbers, "quarantined", len(moved), sum(o.size for o in moved))
        self.moved += self.recheck(bucket, moved, numbers)
        self.moved_at = time.monotonic()
        if len(self.moved) >= LATE_CHECK_CHUNK:
            self.late_check(bucket, numbers)

    def recheck(self, bucket: str, moved: list[Obj], numbers: dict[str, int]) -> list[Obj]:
        """Put back the objects whose row exists now; returns the others."""
        late = self.present(bucket, [o.key for o in moved])
        for o in moved:
            if o.key in late:
                self.put_back(bucket, o.key)
                self.add(numbers, "quarantined", -1, -o.size)
        return [o for o in moved if o.key not in late]

    def late_check(self, bucket: str, numbers: dict[str, int]) -> None:
        """An upload in flight may write its row a little after the object it rewrote
        just before the move: once orphan_settle_sec has passed since the last move,
        the moved objects' rows are looked up once more."""
        if not self.moved:
            return
        wait = self.moved_at + self.ctx.settings.orphan_settle_sec - time.monotonic()
        if wait > 0:
            pause(self.ctx, wait)
        size = self.ctx.settings.orphan_batch_size
        for start in range(0, len(self.moved), size):
            self.recheck(bucket, self.moved[start:start + size], numbers)
        self.moved = []

    def put_back(self, bucket: str, key: str) -> None:
        qbucket, prefix = quarantine.area(self.ctx.settings, bucket)
        item = quarantine.Quarantined(bucket, key, qbucket, prefix + key, 0, self.start)
        outcome = quarantine.move_out(self.ctx, item)
        self.ctx.count("restored_after_recheck")
        self.ctx.log.warning("a row appeared while its object was quarantined: put back",
                             bucket=bucket, key=key, outcome=outcome)

    def add(self, numbers: dict[str, int], what: str, n: int, size: int) -> None:
        self.ctx.count(f"orphans_{what}", n)
        self.ctx.count(f"bytes_{what}", size)
        numbers[what] = numbers.get(what, 0) + n
        numbers[f"bytes_{what}"] = numbers.get(f"bytes_{what}", 0) + size

    def note_missing(self, bucket: str, rows: list[Row], numbers: dict[str, int]) -> None:
        if not rows:
            return
        self.ctx.count("rows_without_object", len(rows))
        numbers["rows_without_object"] = numbers.get("rows_without_object", 0) + len(rows)
        room = self.ctx.settings.orphan_sample_size - len(self.tally.sample)
        self.tally.sample += [{"id": r.id, "bucket": bucket, "path": r.path}
                              for r in rows[:max(room, 0)]]
        if self.mark_missing and not self.ctx.dry_run:
            self.ctx.checkpoint()
            with self.conn.transaction():
                check_pg(self.ctx, self.conn, "mark rows without objects")
                self.conn.execute(MARK_SQL, {"bucket": bucket, "ids": [r.id for r in rows],
                                             "paths": [r.path for r in rows],
                                             "hashes": [key_hash(r.path) for r in rows]})
            self.ctx.count("rows_marked", len(rows))

    def purge_expired(self, bucket: str) -> None:
        """Quarantined objects of this shard past quarantine_retention go for good."""
        keep = timedelta(seconds=parse_duration(self.ctx.settings.quarantine_retention))
        old = (q for q in quarantine.listing(self.ctx, [bucket], until=self.start - keep)
               if self.mine(q.key))
        if self.ctx.dry_run:
            self.ctx.count("quarantine_would_purge", sum(1 for _ in old))
            return
        deleted, failed = quarantine.purge(self.ctx, old)
        self.ctx.count("quarantine_purged", deleted)
        if failed:
            raise JobFailed(f"{failed} expired quarantined objects of {bucket} could not be "
                            "deleted")


def pause(ctx: JobContext, seconds: float) -> None:
    """Sleep, stopping at once (via the safe point) on timeout, SIGTERM or a lost lock."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ctx.checkpoint()
        time.sleep(min(left, 0.2))


def merge(objects: Iterator[Obj], rows: Iterator[Row]
          ) -> Iterator[tuple[Obj | None, Row | None]]:
    """Two streams sorted by key: (obj, row) when both have it, (obj, None) for an object
    without a row, (None, row) for a row without an object. Python compares str by code
    point, which is UTF-8 byte order: S3's and COLLATE "C"'s."""
    obj, row = next(objects, None), next(rows, None)
    while obj is not None or row is not None:
        if row is None or (obj is not None and obj.key < row.path):
            yield obj, None
            obj = next(objects, None)
        elif obj is None or row.path < obj.key:
            yield None, row
            row = next(rows, None)
        else:
            yield obj, row
            key = obj.key
            obj = next(objects, None)
            while row is not None and row.path == key:  # several rows, one object
                row = next(rows, None)


def check_params(settings: Settings, mark_missing: bool = False) -> None:
    check_flag("--mark-missing", mark_missing)


def run(ctx: JobContext, mark_missing: bool = False) -> Result:
    s = ctx.settings
    if not s.orphan_buckets:
        return ctx.not_configured("orphan_buckets", "no bucket is checked", "nova-files")
    with pg_session(ctx) as conn:
        require_tables(conn, owned=("novajobs_missing_objects",) if mark_missing else (),
                       read=("file_metadata",))
        if s.quarantine_bucket:  # nothing could be quarantined: refuse every bucket
            require_bucket(ctx, s.quarantine_bucket, "quarantine_bucket")
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        job = OrphanScan(ctx, conn, row[0], mark_missing)
        problems = []
        for bucket in s.orphan_buckets:
            problem = check_bucket(ctx, bucket)
            if problem:
                problems.append(problem)
                ctx.log.error(f"refused: {problem}", bucket=bucket)
                continue
            job.scan(bucket)
            job.purge_expired(bucket)
    return summarize(ctx, job, problems)


def check_bucket(ctx: JobContext, bucket: str) -> str | None:
    s = ctx.settings
    if bucket == s.archive_bucket:
        return f"bucket {bucket} holds the archives (archive_bucket); it is never scanned"
    if s.quarantine_bucket and bucket == s.quarantine_bucket:
        return f"bucket {bucket} is the quarantine (quarantine_bucket); it is never scanned"
    if not ctx.retry(lambda: ctx.s3.bucket_exists(bucket), f"check bucket {bucket}"):
        return f"bucket {bucket} (orphan_buckets) does not exist"
    return None


def summarize(ctx: JobContext, job: OrphanScan, problems: list[str]) -> Result:
    c = ctx.counters
    details = {"buckets": job.tally.per_bucket, "rows_without_object_sample": job.tally.sample,
               "grace_cutoff": job.cutoff.isoformat()}
    if problems:
        raise ConfigError("; ".join(problems), details)
    missing = (f"; {c['rows_without_object']} live rows point at no object"
               if c["rows_without_object"] else "")
    if ctx.dry_run:
        return Result(Outcome.DRY_RUN, f"checked {c['objects_checked']} objects: would "
                      f"quarantine {c['orphans_would_quarantine']} orphans{missing}", details)
    return Result(Outcome.SUCCESS, f"checked {c['objects_checked']} objects: quarantined "
                  f"{c['orphans_quarantined']} orphans, purged {c['quarantine_purged']} "
                  f"expired{missing}", details)
