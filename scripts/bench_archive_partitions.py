#!/usr/bin/env python3
"""Benchmark archive-partitions against `COPY ... TO STDOUT | gzip` to local disk, same run.

    python scripts/bench_archive_partitions.py                # a 5M-row month; RSS at 2M too
    python scripts/bench_archive_partitions.py --rows 2000000 --runs 3

1. the limit: `psql -c "COPY <partition> TO STDOUT" | gzip > file` (gzip's default
   level, as the job's), into a local temporary file;
2. archive-partitions: `novajobs archive-partitions` end to end as a process (start-up,
   lock, catalog, detach CONCURRENTLY, COPY, gzip, multipart upload, read back and
   verify, manifest, then -- here -- keep detached so the month can be put back for the
   next round; a drop costs about nothing either way);
3. memory: the job's peak RSS archiving a month of ``--rss-rows`` and of ``--rows``.

Rounds alternate 2 and 1 (`--runs` each), so load on the machine hits both alike;
between rounds the month is attached again and its archive removed (not timed). The
job's own checks are the script's: a manifest whose rows differ fails it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from typing import Any

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args, run_measured
from novajobs_dev.stack import PG_BIN, job_env, minio_client, pg_schema, temporary

ROWS_SQL = """
INSERT INTO {table} (id, channel_id, sender_id, seq, created_at)
SELECT g, g %% 5000, 1 + g %% 200000, g / 5000, %(start)s::timestamptz
       + (g::float8 / %(rows)s) * interval '27 days'
FROM generate_series(1, %(rows)s) AS g
"""


def month(back: int) -> date:
    today = datetime.now(UTC).date()
    index = today.year * 12 + today.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def fill(pg: Any, back: int, rows: int) -> str:
    """The month ``back`` months ago, as a partition of ``rows`` rows; returns its name."""
    start = month(back)
    name = f"chat_messages_{start:%Y_%m}"
    demo_data.create_month_partitions(pg, "chat_messages", start, start)
    pg.execute(ROWS_SQL.replace("{table}", name), {"start": start, "rows": rows})
    pg.execute(f"VACUUM ANALYZE {name}")
    return name


def put_back(pg: Any, minio: Any, bucket: str, name: str, back: int) -> None:
    """Attach the kept detached month again and forget its archive (not timed)."""
    from minio.deleteobjects import DeleteObject

    start, end = month(back), month(back - 1)
    pg.execute(f"COMMENT ON TABLE {name} IS NULL")
    pg.execute(f"ALTER TABLE chat_messages ATTACH PARTITION {name} "
               f"FOR VALUES FROM ('{start} 00:00+00') TO ('{end} 00:00+00')")
    gone = (DeleteObject(o.object_name) for o in minio.list_objects(bucket, recursive=True))
    errors = list(minio.remove_objects(bucket, gone))
    if errors:
        raise RuntimeError(f"could not empty {bucket}: {errors[:3]}")


def run_job(env: dict[str, str], rows: int) -> tuple[float, int, dict[str, Any]]:
    out, wall, peak_kib = run_measured(["archive-partitions", "--json"], env)
    record = json.loads(out)
    archived = [p for p in record["details"]["partitions"] if "rows" in p]
    if [p["rows"] for p in archived] != [rows]:
        raise RuntimeError(f"expected one month of {rows} rows archived: {record['details']}")
    return wall, peak_kib, archived[0]


def run_baseline(stack_env: dict[str, str], name: str, out_dir: str) -> tuple[float, int]:
    """`psql COPY TO STDOUT | gzip > file`: wall seconds, bytes written."""
    target = os.path.join(out_dir, f"{name}.copy.gz")
    command = (f"set -o pipefail; {PG_BIN}/psql -X -q '{stack_env['DATABASE_URL']}' "
               f"-c 'COPY bench.{name} TO STDOUT' | gzip > {target}")
    started = time.perf_counter()
    subprocess.run(["bash", "-c", command], check=True)
    return time.perf_counter() - started, os.path.getsize(target)


def bench_env(stack_env: dict[str, str]) -> dict[str, str]:
    # Both months span several parts (8 MB), so their peaks compare like with like
    # (memory is bounded by about two parts, whatever the month's size).
    return job_env(stack_env, "bench", "bench:", archive_bucket="bench-archive",
                         archive_retention_months="chat_messages=3",
                         archive_keep_detached="true", log_format="json",
                         archive_part_size_mb=8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the month")
    parser.add_argument("--rss-rows", type=int, default=2_000_000, help="a smaller month")
    parser.add_argument("--runs", type=int, default=3, help="rounds of each")
    args = parse_args(parser, tiny={"rows": 20_000, "rss_rows": 5_000, "runs": 1})

    out_dir = tempfile.mkdtemp(prefix="bench-archive-")
    with temporary(("redis", "postgres", "s3")) as stack:
        stack_env = stack.env()
        pg = pg_schema(stack_env, "bench")
        pg.execute(demo_data.POSTGRES_DDL["chat_messages"])
        minio = minio_client(stack_env)
        minio.make_bucket("bench-archive")
        env = bench_env(stack_env)
        loaded = time.perf_counter()
        small = fill(pg, 7, args.rss_rows)
        print(f"small month: {args.rss_rows:,} rows", flush=True)
        _, small_peak, _ = run_job(env, args.rss_rows)
        pg.execute(f"DROP TABLE {small}")
        name = fill(pg, 6, args.rows)
        (size,) = pg.execute(f"SELECT pg_total_relation_size('{name}')").fetchone() or (0,)
        print(f"month {name}: {args.rows:,} rows, {size / 2**20:.0f} MiB on disk "
              f"(loaded in {time.perf_counter() - loaded:.0f} s)", flush=True)
        jobs, bases, peaks = [], [], []
        for round_ in range(args.runs):
            base, gz_bytes = run_baseline(stack_env, name, out_dir)
            wall, peak, archived = run_job(env, args.rows)
            put_back(pg, minio, "bench-archive", name, 6)
            bases.append(base)
            jobs.append(wall)
            peaks.append(peak)
            print(f"round {round_ + 1}: COPY | gzip {base:.2f} s ({gz_bytes / 2**20:.1f} MiB); "
                  f"archive-partitions {wall:.2f} s ({archived['object_bytes'] / 2**20:.1f} MiB)"
                  f"; peak RSS {peak / 1024:.0f} MiB", flush=True)
        pg.close()
    shutil.rmtree(out_dir, ignore_errors=True)
    job, base = statistics.median(jobs), statistics.median(bases)
    print(f"COPY | gzip to local disk: {args.rows / base:,.0f} rows/s (the limit)")
    print(f"archive-partitions:        {args.rows / job:,.0f} rows/s -> {base / job:.2f}x "
          "the limit (goal >= 0.6x)")
    print(f"peak RSS: {small_peak / 1024:.0f} MiB at {args.rss_rows:,} rows, "
          f"{max(peaks) / 1024:.0f} MiB at {args.rows:,} rows (flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
