"""gc-files racing writers that reference files again (an upload of the same hash sets
ref_count = 1, status = 0). Real PostgreSQL row locks, real SeaweedFS objects.

The invariant: whenever a writer holds a referenced row, its object exists. A writer
either commits first (the job's re-check under the lock skips the row) or waits for
the job's page and then finds the row gone (and uploads the file again)."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from minio.error import S3Error

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job
from novajobs_dev import demo_data

REFERENCE_SQL = """
UPDATE file_metadata SET ref_count = ref_count + 1, status = 0, updated_at = now()
WHERE file_hash = %s
RETURNING id
"""
UPLOAD_SQL = """
INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, status)
VALUES (%s, %s, %s, 4, 1, 0)
"""
# The last reference goes, long enough ago for the file to be eligible at once.
RELEASE_SQL = """
UPDATE file_metadata SET ref_count = 0, status = 2, updated_at = now() - interval '2 days'
WHERE file_hash = %s
RETURNING id
"""


@pytest.fixture
def marked(pg: Any, pg_tables: Any, minio_client: Any, redis_server: None,
           names: dict[str, str]) -> dict[str, list[int]]:
    pg_tables("file_metadata")
    return demo_data.load_files(pg, minio_client, names["bucket"], live=20, marked=300,
                                recent=0, missing=0, held=0, seed=5, max_size=256)


def object_exists(minio_client: Any, bucket: str, path: str) -> bool:
    try:
        minio_client.stat_object(bucket, path)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return False
        raise
    return True


class Writer:
    """References its own files (disjoint from the other writers') again and again."""

    def __init__(self, dsn: str, minio_client: Any, bucket: str, files: list[tuple[str, str]],
                 gc_running: threading.Event) -> None:
        self.dsn, self.minio, self.bucket, self.files = dsn, minio_client, bucket, files
        self.gc_running = gc_running
        self.outcomes: Counter[str] = Counter()
        self.violations: list[str] = []
        self.error: BaseException | None = None

    def loop(self, stop: threading.Event) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                i = 0
                while not stop.is_set():
                    file_hash, path = self.files[i % len(self.files)]
                    i += 1
                    racing = self.gc_running.is_set()
                    outcome = self.reference(conn, file_hash, path)
                    if racing and self.gc_running.is_set():
                        self.outcomes[outcome] += 1
        except BaseException as exc:
            self.error = exc

    def reference(self, conn: psycopg.Connection[Any], file_hash: str, path: str) -> str:
        started = time.monotonic()
        with conn.transaction():
            row = conn.execute(REFERENCE_SQL, (file_hash,)).fetchone()
            waited = time.monotonic() - started > 0.005
            # While this transaction holds the referenced row, the object must be there.
            if row and not object_exists(self.minio, self.bucket, path):
                self.violations.append(f"{path}: referenced, object gone")
            time.sleep(0.002)  # the service's other work in the same transaction
        if row is None:  # the job took it first: upload again, as the service does
            self.minio.put_object(self.bucket, path, io.BytesIO(b"data"), 4)
            conn.execute(UPLOAD_SQL, (file_hash, self.bucket, path))
        if conn.execute(RELEASE_SQL, (file_hash,)).fetchone() is None:
            self.violations.append(f"{path}: row deleted while referenced")
        return ("writer_won" if row else "job_won") + ("_after_wait" if waited else "")


def test_a_thousand_rereference_races_lose_no_referenced_file(
        pg, marked, minio_client, names, env, make_settings, s3_proxy, pg_proxy, stack):
    bucket = names["bucket"]
    # Network round trips, as between hosts: each page holds its locks a while, and a
    # writer can commit between the job's scan and its lock (the re-check's case).
    s3_proxy.delay_deletes = 0.01
    pg_proxy.latency = 0.002
    job_db = env["DATABASE_URL"].replace(f":{stack.ports['postgres']}/", f":{pg_proxy.port}/")
    live = dict(pg.execute("SELECT id, path FROM file_metadata WHERE status = 0").fetchall())
    targets = pg.execute("SELECT file_hash, path FROM file_metadata WHERE status = 2").fetchall()
    gc_running, stop = threading.Event(), threading.Event()
    writers = [Writer(env["DATABASE_URL"], minio_client, bucket, targets[k::3], gc_running)
               for k in range(3)]
    runs: list[Any] = []

    def collect() -> None:
        settings = make_settings(gc_page_size=10, minio_endpoint=s3_proxy.endpoint,
                                 database_url=job_db)
        while not stop.is_set():
            gc_running.set()
            runs.append(run_job("gc-files", settings, RunOptions(use_lock=False)))
            gc_running.clear()

    threads = [threading.Thread(target=w.loop, args=(stop,)) for w in writers]
    threads.append(threading.Thread(target=collect))
    for t in threads:
        t.start()
    give_up = time.monotonic() + 90
    while sum(sum(w.outcomes.values()) for w in writers) < 1200 and time.monotonic() < give_up:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert [w.error for w in writers] == [None, None, None]
    outcomes = sum((w.outcomes for w in writers), Counter())
    assert [v for w in writers for v in w.violations] == []
    print(f"races: {dict(outcomes)}; job runs: {len(runs)}; skipped by the re-check: "
          f"{sum(r.counters.get('files_skipped', 0) for r in runs)}")
    assert sum(outcomes.values()) >= 1000, outcomes
    assert outcomes["job_won_after_wait"] > 0 and outcomes["writer_won"] > 0, outcomes
    assert all(r.outcome in (Outcome.SUCCESS, Outcome.NOTHING_TO_DO) for r in runs)
    # The writers released every file: one more run leaves exactly the live files.
    final = run_job("gc-files", make_settings())
    assert final.outcome in (Outcome.SUCCESS, Outcome.NOTHING_TO_DO)
    rows = dict(pg.execute("SELECT id, path FROM file_metadata").fetchall())
    assert rows == live
    assert {o.object_name for o in minio_client.list_objects(bucket, recursive=True)} == set(
        live.values())


def writer_pid_waits_on_a_lock(pg: Any, pid: int) -> bool:
    row = pg.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                     (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


def test_writer_that_waits_on_the_jobs_page_finds_the_row_gone(
        pg, marked, minio_client, names, env, make_settings, s3_proxy):
    s3_proxy.delay_deletes = 1.5  # the job holds its first page's row locks this long
    first, second = sorted(marked["marked"])[0], sorted(marked["marked"])[40]
    hashes = dict(pg.execute("SELECT id, file_hash FROM file_metadata").fetchall())
    settings = make_settings(minio_endpoint=s3_proxy.endpoint, gc_page_size=20)
    result: list[Any] = []
    job = threading.Thread(target=lambda: result.append(
        run_job("gc-files", settings, RunOptions(use_lock=False))))
    job.start()
    assert s3_proxy.delete_started.wait(10)

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as writer:
        # A later page's file: the writer commits first, the job must leave it.
        assert writer.execute(REFERENCE_SQL, (hashes[second],)).fetchone() == (second,)
        # A file of the page being deleted: the writer waits, then finds no row.
        waiting: list[Any] = []
        blocked = threading.Thread(target=lambda: waiting.append(
            writer.execute(REFERENCE_SQL, (hashes[first],)).fetchone()))
        blocked.start()
        deadline = time.monotonic() + 1
        seen_waiting = False
        while time.monotonic() < deadline and not seen_waiting:
            seen_waiting = writer_pid_waits_on_a_lock(pg, writer.info.backend_pid)
            time.sleep(0.01)
        s3_proxy.delay_deletes = 0  # the other pages at full speed
        blocked.join(10)
        job.join(30)

    assert seen_waiting
    assert waiting == [None]
    assert result[0].outcome is Outcome.SUCCESS
    rows = set(r[0] for r in pg.execute("SELECT id FROM file_metadata"))
    assert first not in rows and second in rows
    path = dict(pg.execute("SELECT id, path FROM file_metadata").fetchall())[second]
    assert object_exists(minio_client, names["bucket"], path)


def test_row_held_by_a_writer_is_skipped_and_deleted_by_a_later_run(
        pg, marked, minio_client, names, env, make_settings):
    target = sorted(marked["marked"])[3]
    file_hash, path = pg.execute("SELECT file_hash, path FROM file_metadata WHERE id = %s",
                                 (target,)).fetchone()

    with psycopg.connect(env["DATABASE_URL"]) as writer:  # a transaction left open
        writer.execute(REFERENCE_SQL, (file_hash,))
        rec = run_job("gc-files", make_settings())
        writer.rollback()  # the upload failed: the file stays marked

    assert rec.outcome is Outcome.SUCCESS and rec.counters["files_skipped"] == 1
    assert object_exists(minio_client, names["bucket"], path)
    again = run_job("gc-files", make_settings())
    assert again.counters == {"files_deleted": 1, "bytes_freed": again.counters["bytes_freed"],
                              "files_skipped": 0, "files_failed": 0}
    assert not object_exists(minio_client, names["bucket"], path)


def test_a_file_referenced_between_scan_and_lock_is_rechecked_and_kept(
        pg, marked, minio_client, names, make_settings):
    """The scan's snapshot is stale by the time the page is locked: the lock re-checks."""
    from novajobs.context import JobContext, Shard
    from novajobs.jobs import gc_files

    target = sorted(marked["marked"])[2]
    path = pg.execute("SELECT path FROM file_metadata WHERE id = %s", (target,)).fetchone()[0]
    tally = gc_files.Tally()
    with JobContext(make_settings(gc_page_size=5), "gc-files") as ctx:
        scope = gc_files.open_scope(ctx, Shard(1, 1), 86400)
        page = next(gc_files.scan_pages(ctx, scope, None, tally))
        assert target in [row.id for row in page]
        pg.execute("UPDATE file_metadata SET ref_count = 1, status = 0 WHERE id = %s", (target,))
        gc_files.collect_page(ctx, scope, page, tally)

    assert tally.skipped == 1 and sum(tally.files.values()) == 4
    status = pg.execute("SELECT status FROM file_metadata WHERE id = %s", (target,)).fetchone()
    assert status == (0,)
    assert object_exists(minio_client, names["bucket"], path)
