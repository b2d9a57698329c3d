#!/usr/bin/env python3
"""refresh-suggestions over every active user of a >= 1M-edge graph vs one query per user.

Goal: >= 20x the throughput (users/s) of a naive loop (one query and one SET per user),
and its peak memory.

    .venv/bin/python scripts/bench_suggestions.py [--users 100000] [--edges 1000000]

The naive loop (one ClickHouse query + one SET per user) is timed on a sample of users
and its rate extrapolated: run over 100k users it would take the better part of an hour.
The job runs as a real `novajobs` process, twice: over the embedded ClickHouse engine
(chdb://, its peak RSS includes the engine) and over HTTP, the production transport, to
the same data served by this script (novajobs_dev/clickhouse_http.py: chdb behind the
ClickHouse HTTP interface, in this process). Each run's peak RSS is the process's own
VmHWM (goal over HTTP: < 150 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args, run_measured
from novajobs_dev.clickhouse_http import ClickHouseHTTP
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

        job = ["refresh-suggestions", "--batch-size", "0", "--json", "--timeout", "3000"]
        out, elapsed, peak_kib = run_measured(job, {**os.environ, **env})
        done = json.loads(out)["counters"]["users_refreshed"]
        front = ClickHouseHTTP(env["CLICKHOUSE_URL"].split("://", 1)[1].split("?", 1)[0])
        try:
            http_env = {**os.environ, **env, "CLICKHOUSE_URL": front.url("default")}
            out, http_elapsed, http_kib = run_measured(job, http_env)
        finally:
            front.close()
        assert json.loads(out)["counters"]["users_refreshed"] == done
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
    print(f"peak RSS, chdb:// (embedded engine)    : {peak_kib / 1024:10.0f} MB")
    print(
        f"over http:// (the engine elsewhere)    : {done / http_elapsed:10.1f} users/s, "
        f"peak RSS {http_kib / 1024:.0f} MB (goal < 150 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
