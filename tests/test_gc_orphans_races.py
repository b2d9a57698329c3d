"""gc-orphans racing an upload service that writes rows for objects it is quarantining.

The service uploads an object, then writes its row (as uploads do), for keys that are
orphans right now (content-addressed, as the upload service names objects: a new upload
of a key is the same bytes); gc-orphans runs back to back with a slow S3 link, so its
listing, re-check, copy, delete and second re-check all have time to interleave with
the writers. What must hold: every row ends with its object at its key, and no object
is lost (it is at its key or in quarantine)."""

from __future__ import annotations

import io
import random
import threading
import time
from typing import Any

import psycopg

from novajobs.runner import RunOptions, run_job
from novajobs_dev import demo_data

Q = "novajobs-quarantine/"
KEYS = 240


class Writer:
    """Uploads (again) and then inserts the row for its own orphan keys."""

    def __init__(self, dsn: str, minio: Any, bucket: str, keys: list[str], seed: int) -> None:
        self.dsn, self.minio, self.bucket, self.keys = dsn, minio, bucket, keys
        self.rng = random.Random(seed)
        self.written: dict[str, bytes] = {}
        self.error: BaseException | None = None

    def loop(self, gc_running: threading.Event) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                gc_running.wait(30)
                for key in self.keys:
                    body = content(key)
                    self.minio.put_object(self.bucket, key, io.BytesIO(body), len(body))
                    time.sleep(self.rng.uniform(0, 0.02))  # the service's work in between
                    conn.execute(
                        "INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count,"
                        " status) VALUES (%s, %s, %s, %s, 1, 0)",
                        (key, self.bucket, key, len(body)))
                    self.written[key] = body
                    time.sleep(self.rng.uniform(0, 0.03))
        except BaseException as exc:
            self.error = exc


def content(key: str) -> bytes:
    return f"the bytes named {key}".encode()


def read(minio: Any, bucket: str, key: str) -> bytes | None:
    from minio.error import S3Error

    try:
        response = minio.get_object(bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def test_rows_written_during_the_runs_keep_their_objects(pg, pg_tables, minio_client, names,
                                                         env, make_settings, s3_proxy,
                                                         redis_server):
    bucket = names["bucket"]
    pg_tables("file_metadata")
    pg.execute(demo_data.POSTGRES_INDEXES["file_metadata_bucket_path"])
    keys = [f"race/{n:04d}" for n in range(KEYS)]
    for key in keys:
        minio_client.put_object(bucket, key, io.BytesIO(content(key)), len(content(key)))
    time.sleep(1.2)  # older than the grace below
    s3_proxy.latency = 0.003  # a slow link: every S3 request of the job takes a while
    settings = make_settings(orphan_buckets=bucket, orphan_grace="1s", orphan_batch_size=8,
                             orphan_settle_sec=1, minio_endpoint=s3_proxy.endpoint,
                             quarantine_retention="1d")
    mine = keys[: KEYS * 2 // 3]  # the rest stay orphans
    writers = [Writer(env["DATABASE_URL"], minio_client, bucket, mine[k::2], k) for k in (0, 1)]
    gc_running, stop = threading.Event(), threading.Event()
    runs: list[Any] = []

    def collect() -> None:
        while not stop.is_set():
            gc_running.set()
            runs.append(run_job("gc-orphans", settings, RunOptions(use_lock=False)))

    threads = [threading.Thread(target=w.loop, args=(gc_running,)) for w in writers]
    threads.append(threading.Thread(target=collect))
    for t in threads:
        t.start()
    for t in threads[:-1]:
        t.join(timeout=120)
    stop.set()
    threads[-1].join(timeout=120)

    assert [w.error for w in writers] == [None, None]
    assert runs and all(r.exit_code == 0 for r in runs), [r.error for r in runs]
    written = {k: v for w in writers for k, v in w.written.items()}
    assert len(written) == len(mine)
    lost = [k for k, body in written.items() if read(minio_client, bucket, k) != body]
    assert lost == []  # every row has its object, with the content its writer uploaded
    for key in keys[len(mine):]:  # the true orphans: in quarantine, or not reached yet
        assert (read(minio_client, bucket, key) or read(minio_client, bucket, Q + bucket + "/"
                                                        + key)) == content(key)
    counts = {name: sum(r.counters.get(name, 0) for r in runs)
              for name in ("orphans_quarantined", "rescued_by_recheck", "changed_meanwhile",
                           "restored_after_recheck", "orphans_within_grace")}
    print(f"{len(runs)} runs: {counts}")
    assert counts["orphans_quarantined"] >= KEYS - len(mine)
    # The races happened: rows that appeared after the listing were caught by a re-check,
    # by the ETag condition on the copy, or put back after the move.
    assert counts["rescued_by_recheck"] + counts["changed_meanwhile"] + counts[
        "restored_after_recheck"] > 0, counts
