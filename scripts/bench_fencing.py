#!/usr/bin/env python3
"""What fencing tokens cost: per write and per run, against novajobs without them
(novajobs_dev.unfenced), measured in the same process, interleaved.

- a Redis cache write: ``SET k v EX 90`` vs the fenced script (one round trip each);
- a pipeline of 1000 cache writes (refresh-suggestions' path) vs the fenced pipeline;
- a PostgreSQL write transaction (one upsert) vs the same after the fence row's upsert;
- a whole run of a Redis-only job (clean-token-blacklist, nothing to clean: the lock,
  the run records and the release are all it does) with and without fences.

The same comparison on the real jobs, at their real sizes, is in bench_trending.py and
bench_daily_stats.py ("fencing overhead").

    .venv/bin/python scripts/bench_fencing.py [--writes 2000] [--runs 7]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from novajobs_dev.bench import interleaved, parse_args
from novajobs_dev.stack import temporary
from novajobs_dev.unfenced import unfenced


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=7)
    args = parse_args(parser, tiny={"writes": 20, "runs": 1})

    from novajobs import schema
    from novajobs.context import Guard, JobContext
    from novajobs.fencing import FencedPipeline, fenced_set
    from novajobs.lock import JobLock
    from novajobs.pgfence import pg_transaction
    from novajobs.runner import run_job
    from novajobs.settings import load_settings

    with temporary(("redis", "postgres")) as local:
        settings = load_settings(environ=local.env())
        ctx = JobContext(settings, "bench")
        lock = JobLock(ctx.redis, "job:lock:bench", 600, {})
        assert lock.acquire()
        ctx.guard = Guard(lock=lock)
        schema.ensure_tables(ctx.pg)
        ctx.pg.autocommit = True
        ctx.pg.execute("CREATE TABLE IF NOT EXISTS bench (k int PRIMARY KEY, v int)")
        n = args.writes
        rows: list[tuple[str, float, float, int]] = []

        def measure(name: str, plain: Any, fenced: Any, count: int) -> None:
            t_plain, t_fenced = interleaved(plain, fenced, args.runs)
            rows.append((name, t_plain, t_fenced, count))

        measure("Redis SET EX", lambda: [ctx.redis.set(f"k{i}", "v", ex=90) for i in range(n)],
                lambda: [fenced_set(ctx, f"k{i}", "v", "EX", 90) for i in range(n)], n)

        def plain_pipeline() -> None:
            pipe = ctx.redis.pipeline(transaction=False)
            for i in range(1000):
                pipe.set(f"u{i}", "[]", ex=1200)
            pipe.execute()

        def fenced_pipeline() -> None:
            pipe = FencedPipeline(ctx)
            for i in range(1000):
                pipe.set(f"u{i}", "[]", "EX", 1200)
            pipe.execute("bench")

        measure("Redis pipeline, 1000 SET", plain_pipeline, fenced_pipeline, 1000)

        upsert = "INSERT INTO bench VALUES (%s, 1) ON CONFLICT (k) DO UPDATE SET v = bench.v + 1"
        pg_n = max(n // 4, 5)

        def plain_pg() -> None:
            for i in range(pg_n):
                with ctx.pg.transaction():
                    ctx.pg.execute(upsert, [i % 50])

        def fenced_pg() -> None:
            for i in range(pg_n):
                with pg_transaction(ctx, "bench") as conn:
                    conn.execute(upsert, [i % 50])

        measure("PostgreSQL write transaction", plain_pg, fenced_pg, pg_n)

        def job() -> None:
            assert run_job("clean-token-blacklist", settings).outcome.ok

        def job_unfenced() -> None:
            with unfenced():
                job()

        measure("run: clean-token-blacklist", job_unfenced, job, 1)
        lock.release()
        ctx.close()
    print(f"{'':34} {'without':>12} {'with fence':>12} {'overhead':>11}")
    for name, plain, fenced, count in rows:
        unit = "ms/run" if count == 1 else "us/write"
        scale = 1000 if count == 1 else 1e6 / count
        print(f"{name:34} {plain * scale:9.1f} {unit[:2]} {fenced * scale:9.1f} {unit[:2]} "
              f"{(fenced / plain - 1) * 100:+10.1f}%  ({unit}, median of {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
