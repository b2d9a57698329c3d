#!/usr/bin/env python3
"""refresh-suggestions over every active user of a >= 1M-edge graph vs one query per user.

Goal: >= 20x the throughput (users/s) of a naive loop (one query and one SET per user),
and its peak memory.

    .venv/bin/python scripts/bench_suggestions.py [--users 100000] [--edges 1000000]

The naive loop (one ClickHouse query + one SET per user) is timed on a sample of users
and its rate extrapolated: run over 100k users it would take the better part of an hour.
The job runs as a real `novajobs` process; its peak RSS (ru_maxrss) includes the
embedded ClickHouse engine (chdb), which a production run against a server would not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=300, help="users for the naive loop")
    args = parse_args(parser, tiny={"users": 300, "edges": 2000, "sample": 10})

    from novajobs.connections import clickhouse_client
    from novajobs.jobs.refresh_suggestions import CANDIDATES_SQL
    from novajobs.settings import load_settings

    with temporary(("redis",)) as local:
        env = local.env()
        settings = load_settings(environ=env)
        client = clickhouse_client(settings)
        counts = demo_data.load_clickhouse(
            client,
            users=args.users,
            posts=10_000,
            events=args.users * 4,
            edges=args.edges,
            hours=24,
        )
        active = [
            r[0]
            for r in client.query(
                "SELECT DISTINCT user_id FROM post_events ORDER BY user_id"
            ).result_rows
        ]
        print(f"graph: {counts['user_relationships']:,} edges; {len(active):,} active users")

        import redis

        r = redis.Redis.from_url(env["REDIS_URL"])
        started = time.perf_counter()
        for user in active[: args.sample]:
            rows = client.query(CANDIDATES_SQL, parameters={"users": [user], "per_user": 20})
            items = [{"user_id": c, "mutual_count": m} for _, c, m in rows.result_rows]
            r.set(f"naive:{user}", json.dumps(items), ex=1200)
        naive_rate = args.sample / (time.perf_counter() - started)
        client.close()  # chdb: the job process needs the path

        started = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "novajobs",
                "refresh-suggestions",
                "--batch-size",
                "0",
                "--json",
                "--log-format",
                "json",
                "--timeout",
                "3000",
            ],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return 1
        record = json.loads(proc.stdout)
        done = record["counters"]["users_refreshed"]
    job_rate = done / elapsed
    print(
        f"naive loop, 1 query + 1 SET per user : {naive_rate:10.1f} users/s "
        f"(sample of {args.sample}; all {len(active):,} would take "
        f"{len(active) / naive_rate / 60:.0f} min)"
    )
    print(
        f"novajobs refresh-suggestions (process): {job_rate:10.1f} users/s "
        f"({done:,} users in {elapsed:.1f} s, incl. start-up)"
    )
    print(f"speed-up                               : {job_rate / naive_rate:10.1f}x (goal >= 20x)")
    print(
        f"peak RSS of the job process            : {peak_mb:10.0f} MB (incl. embedded ClickHouse)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
