#!/usr/bin/env python3
"""Benchmark gc-files against the store's own limit and a naive loop, same stack, same run.

    python scripts/bench_gc_files.py                       # 100k files; RSS at 100k and 1M rows
    python scripts/bench_gc_files.py --files 20000 --rss-rows 50000,200000   # quicker

1. raw: multi-object deletes of 1000 keys, one request after another, with nothing
   else -- what the store can do (the ceiling); single deletes for reference.
2. gc-files: `novajobs gc-files` end to end as a process (start-up, lock, count,
   scan, lock rows, S3 deletes, row deletes, commits) over ``--files`` eligible files.
3. naive loop: pages of 1000 rows, then per file one removeObject and
   one DELETE, over ``--naive-files`` files (a sample: it is slow; its rate is what counts).
4. memory: peak RSS of gc-files over tables of ``--rss-rows`` rows, 10 % eligible
   (their objects already gone: the deletes still go to the store).

Starts its own stack (Redis, PostgreSQL, SeaweedFS) on free ports and removes it after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args, run_measured
from novajobs_dev.gc_crash import job_env
from novajobs_dev.stack import minio_client, pg_schema, temporary

# Rows for the memory runs, generated inside PostgreSQL: every 10th id eligible.
_ROWS_SQL = """
INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, status, updated_at)
SELECT md5('bench' || g), %(bucket)s, 'rss/' || md5('bench' || g), 1000 + g %% 5000,
       CASE WHEN g %% 10 = 0 THEN 0 ELSE 1 END,
       CASE WHEN g %% 10 = 0 THEN 2 ELSE 0 END,
       now() - interval '3 days'
FROM generate_series(1, %(rows)s) AS g
"""

# The naive loop: page by id, then one object delete and one row delete per file.
_NAIVE_PAGE_SQL = """
SELECT id, file_hash, bucket, path FROM file_metadata
WHERE status = 2 AND mod(id, 1) = 0 AND id > %s ORDER BY id LIMIT 1000
"""


def upload(minio: Any, bucket: str, n: int, prefix: str) -> list[str]:
    names = [f"{prefix}/{i:08d}" for i in range(n)]
    if not minio.bucket_exists(bucket):
        minio.make_bucket(bucket)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: minio.put_object(bucket, k, io.BytesIO(b"x" * 100), 100), names))
    return names


def bench_raw(minio: Any, n: int, singles: int) -> tuple[float, float]:
    """Objects/s of back-to-back multi-object deletes of 1000; and of single deletes."""
    from minio.deleteobjects import DeleteObject

    names = upload(minio, "raw-deletes", n, "multi")
    started = time.perf_counter()
    for i in range(0, n, 1000):
        batch = [DeleteObject(k) for k in names[i:i + 1000]]
        errors = list(minio.remove_objects("raw-deletes", batch))
        assert not errors, errors[:3]
    multi = n / (time.perf_counter() - started)
    names = upload(minio, "raw-deletes", singles, "single")
    started = time.perf_counter()
    for k in names:
        minio.remove_object("raw-deletes", k)
    return multi, singles / (time.perf_counter() - started)


def run_gc(env: dict[str, str], *args: str) -> tuple[dict[str, Any], float, int]:
    """One `novajobs gc-files` process: its run record, wall seconds, peak RSS in KiB."""
    out, wall, peak_kib = run_measured(["gc-files", "--json", *args], env)
    return json.loads(out), wall, peak_kib


def bench_gc(pg: Any, minio: Any, env: dict[str, str], n: int) -> tuple[float, float]:
    demo_data.load_files(pg, minio, "gc-bench", live=0, marked=n, recent=0, missing=0, held=0,
                         min_size=50, max_size=200, seed=1, workers=8)
    record, wall, _ = run_gc(env)
    assert record["counters"]["files_deleted"] == n, record
    assert not list(minio.list_objects("gc-bench", recursive=True))
    return n / (record["duration_ms"] / 1000), n / wall


def bench_naive(pg: Any, minio: Any, n: int) -> float:
    demo_data.load_files(pg, minio, "naive-loop", live=0, marked=n, recent=0, missing=0, held=0,
                         min_size=50, max_size=200, seed=2, workers=8)
    started = time.perf_counter()
    last, done = 0, 0
    while page := pg.execute(_NAIVE_PAGE_SQL, (last,)).fetchall():
        for file_id, file_hash, bucket, path in page:
            minio.remove_object(bucket, path)
            pg.execute("DELETE FROM file_metadata WHERE file_hash = %s", (file_hash,))
            last, done = file_id, done + 1
    assert done == n
    return n / (time.perf_counter() - started)


def bench_rss(pg: Any, minio: Any, env: dict[str, str], rows: int) -> tuple[int, float]:
    pg.execute("TRUNCATE file_metadata")
    if not minio.bucket_exists("rss-rows"):
        minio.make_bucket("rss-rows")
    pg.execute(_ROWS_SQL, {"bucket": "rss-rows", "rows": rows})
    pg.execute("VACUUM ANALYZE file_metadata")
    record, wall, rss_kib = run_gc(env)
    assert record["counters"]["files_deleted"] == rows // 10, record
    return rss_kib, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="eligible files for gc-files")
    parser.add_argument("--naive-files", type=int, default=10_000, help="files for the naive loop")
    parser.add_argument("--singles", type=int, default=3_000, help="single deletes measured")
    parser.add_argument("--rss-rows", default="100000,1000000", help="table sizes for RSS")
    args = parse_args(parser, tiny={"files": 200, "naive_files": 50, "singles": 20,
                                    "rss_rows": "1000"})

    with temporary(("redis", "postgres", "s3")) as stack:
        e = stack.env()
        minio = minio_client(e)
        with pg_schema(e, "bench") as pg:
            pg.execute(demo_data.POSTGRES_DDL["file_metadata"])
            env = job_env(e, "bench", "bench:", 1000)
            print(f"{os.cpu_count()} cores; {args.files:,} files; page 1000", flush=True)
            raw, single = bench_raw(minio, args.files, args.singles)
            print(f"raw multi-object deletes:  {raw:8,.0f} objects/s   (single deletes "
                  f"{single:,.0f}/s)", flush=True)
            gc_rate, gc_wall_rate = bench_gc(pg, minio, env, args.files)
            print(f"gc-files end to end:       {gc_rate:8,.0f} files/s    (with process "
                  f"start-up {gc_wall_rate:,.0f}/s)", flush=True)
            naive = bench_naive(pg, minio, args.naive_files)
            print(f"naive loop:                {naive:8,.0f} files/s    ({args.naive_files:,} "
                  "files)", flush=True)
            print(f"gc-files / raw deletes:    {gc_rate / raw:8.2f}x  (goal >= 0.7)")
            print(f"gc-files / naive loop:     {gc_rate / naive:8.2f}x  (goal >= 3)", flush=True)
            for rows in (int(r) for r in args.rss_rows.split(",")):
                rss, wall = bench_rss(pg, minio, env, rows)
                print(f"peak RSS, {rows:>9,} rows ({rows // 10:,} eligible): {rss / 1024:6.1f} MiB"
                      f"  ({wall:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
