#!/usr/bin/env python3
"""Benchmark gc-orphans against a plain list_objects of the same bucket, same run.

    python scripts/bench_gc_orphans.py                    # 1M objects; RSS at 100k and 1M
    python scripts/bench_gc_orphans.py --objects 200000 --runs 3

1. the limit: `list_objects(bucket, recursive=True)` with the MinIO SDK, counting the
   objects and nothing else (what any scan of the bucket costs);
2. gc-orphans: `novajobs gc-orphans --dry-run --grace 0` end to end as a process
   (start-up, lock, the listing merged with the bucket's rows read in key order, the
   re-check of every orphan batch), over the same bucket: 1 % of its objects have no
   row. A dry run because the steady state is a bucket with few new orphans; moving
   them costs S3 copies and deletes that no listing can be compared with;
3. memory: gc-orphans' peak RSS over ``--rss-objects`` and over ``--objects`` objects.

Rounds alternate 2 and 1 (`--runs` each). The job's own numbers are checked: it must
see every object and find exactly the orphans.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args, run_measured
from novajobs_dev.stack import job_env, minio_client, pg_schema, temporary

ORPHAN_EVERY = 100


def key(bucket: str, n: int) -> str:
    return f"files/{n % 256:02x}/{bucket}-{n:09d}"


def load(pg: Any, minio: Any, bucket: str, n: int) -> int:
    """``n`` small objects; a row for each but every ORPHAN_EVERY-th. Returns orphans."""
    minio.make_bucket(bucket)
    body = b"x" * 64

    def put(start: int) -> None:
        for i in range(start, min(start + 1000, n)):
            minio.put_object(bucket, key(bucket, i), io.BytesIO(body), len(body))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, range(0, n, 1000)))
    with pg.cursor() as cur, cur.copy(
            "COPY file_metadata (file_hash, bucket, path, size, ref_count, status) FROM STDIN"
    ) as copy:
        for i in range(n):
            if i % ORPHAN_EVERY:
                copy.write_row((f"{bucket}-{i}", bucket, key(bucket, i), 64, 1, 0))
    pg.execute("VACUUM ANALYZE file_metadata")
    return len(range(0, n, ORPHAN_EVERY))


def list_all(minio: Any, bucket: str) -> int:
    return sum(1 for _ in minio.list_objects(bucket, recursive=True))


def run_job(env: dict[str, str], bucket: str, objects: int, orphans: int
            ) -> tuple[float, int]:
    out, wall, peak_kib = run_measured(
        ["gc-orphans", "--dry-run", "--grace", "0", "--json", "-s", f"orphan_buckets={bucket}"],
        env)
    counters = json.loads(out)["counters"]
    seen = (counters.get("objects_checked"), counters.get("orphans_would_quarantine"))
    if seen != (objects, orphans):
        raise RuntimeError(f"gc-orphans saw {seen}, expected {(objects, orphans)}")
    return wall, peak_kib


def bench_env(stack_env: dict[str, str]) -> dict[str, str]:
    return job_env(stack_env, "bench", "bench:", log_format="json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--rss-objects", type=int, default=100_000, help="a smaller bucket")
    parser.add_argument("--runs", type=int, default=3, help="rounds of each")
    args = parse_args(parser, tiny={"objects": 3_000, "rss_objects": 500, "runs": 1})

    with temporary(("redis", "postgres", "s3")) as stack:
        stack_env = stack.env()
        pg = pg_schema(stack_env, "bench")
        pg.execute(demo_data.POSTGRES_DDL["file_metadata"])
        pg.execute(demo_data.POSTGRES_INDEXES["file_metadata_bucket_path"])
        minio = minio_client(stack_env)
        env = bench_env(stack_env)
        started = time.perf_counter()
        small_orphans = load(pg, minio, "bench-small", args.rss_objects)
        _, small_peak = run_job(env, "bench-small", args.rss_objects, small_orphans)
        orphans = load(pg, minio, "bench-big", args.objects)
        print(f"buckets of {args.rss_objects:,} and {args.objects:,} objects loaded in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        lists, jobs, peaks = [], [], []
        for round_ in range(args.runs):
            begun = time.perf_counter()
            if list_all(minio, "bench-big") != args.objects:
                raise RuntimeError("the listing does not see every object")
            lists.append(time.perf_counter() - begun)
            wall, peak = run_job(env, "bench-big", args.objects, orphans)
            jobs.append(wall)
            peaks.append(peak)
            print(f"round {round_ + 1}: list_objects {lists[-1]:.2f} s; gc-orphans "
                  f"{wall:.2f} s; peak RSS {peak / 1024:.0f} MiB", flush=True)
        pg.close()
    listing, job = statistics.median(lists), statistics.median(jobs)
    print(f"list_objects:  {args.objects / listing:,.0f} objects/s (the limit)")
    print(f"gc-orphans:    {args.objects / job:,.0f} objects/s checked -> "
          f"{listing / job:.2f}x the limit (goal >= 0.7x)")
    print(f"peak RSS: {small_peak / 1024:.0f} MiB at {args.rss_objects:,} objects, "
          f"{max(peaks) / 1024:.0f} MiB at {args.objects:,} objects (flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
