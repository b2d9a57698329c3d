#!/usr/bin/env python3
"""refresh-trending over >= 10M events in the window vs the same SQL through the client alone.

Goal: the whole job (lock, connect, query, JSON, SET, run record) <= 1.2x the bare
query (connect, query) through clickhouse-connect. Both run in this process, alternating.

    .venv/bin/python scripts/bench_trending.py [--events 10000000] [--runs 3]

Starts its own Redis (scripts/stack.py) and an embedded ClickHouse (chdb) in a temp dir.
"""

from __future__ import annotations

import argparse
import sys
import time

from novajobs_dev import demo_data
from novajobs_dev.bench import interleaved, parse_args
from novajobs_dev.stack import temporary
from novajobs_dev.unfenced import unfenced


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parse_args(parser, tiny={"events": 5000, "posts": 200, "runs": 1})

    from novajobs.connections import clickhouse_client
    from novajobs.jobs.refresh_trending import TRENDING_SQL
    from novajobs.runner import run_job
    from novajobs.settings import load_settings

    with temporary(("redis",)) as local:
        env = local.env()
        settings = load_settings(environ=env)
        client = clickhouse_client(settings)
        started = time.perf_counter()
        demo_data.load_clickhouse(
            client, users=100_000, posts=args.posts, events=args.events, edges=10, hours=1
        )
        print(f"loaded {args.events:,} events in {time.perf_counter() - started:.1f} s")
        now = int(time.time())
        params = {"start": now - 3600, "end": now, "k": settings.trending_topk}

        def bare() -> None:
            # What a hand-written cron script does each run: connect, query, done.
            own = clickhouse_client(settings)
            assert own.query(TRENDING_SQL, parameters=params).result_rows
            own.close()

        def job() -> None:
            rec = run_job("refresh-trending", settings)
            assert rec.outcome.ok, rec.error

        def job_unfenced() -> None:
            with unfenced():
                job()

        bare()  # warm caches for both
        t_bare, t_job = interleaved(bare, job, args.runs)
        t_plain, t_fenced = interleaved(job_unfenced, job, args.runs)
        client.close()
    print(f"bare SQL through clickhouse-connect : {t_bare * 1000:8.1f} ms (median of {args.runs})")
    print(f"novajobs refresh-trending (run_job)  : {t_job * 1000:8.1f} ms (median of {args.runs})")
    print(f"ratio job / bare                     : {t_job / t_bare:8.2f}x  (goal <= 1.2x)")
    print(f"fencing overhead (run_job with / without fencing tokens, interleaved): "
          f"{t_plain * 1000:.1f} ms -> {t_fenced * 1000:.1f} ms, "
          f"{(t_fenced / t_plain - 1) * 100:+.1f}% (goal < 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
