#!/usr/bin/env python3
"""Benchmark drain-stream against the naive consumer, on a Redis this script starts.

    .venv/bin/python scripts/bench_drain_stream.py [--entries 100000] [--concurrency 10]

Same entries (3 small fields each), same Redis, same run:
- naive: a loop that reads one entry (XREADGROUP COUNT 1) and acks it (XACK), one
  round trip each;
- drain-stream: the real job (run_job: lock, records, worker pool) with a no-op handler.
Prints entries per second of both and the ratio (goal >= 5x).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary


def fill(r: Any, key: str, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, {"user_id": str(i), "action": "login", "ts": "1700000000.5"})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def naive(r: Any, key: str, n: int) -> float:
    r.xgroup_create(key, "naive", "0")
    started = time.perf_counter()
    done = 0
    while done < n:
        reply = r.xreadgroup("naive", "c1", {key: ">"}, count=1)
        if not reply:
            break
        entry_id, _fields = reply[0][1][0]
        r.xack(key, "naive", entry_id)
        done += 1
    assert done == n, done
    return time.perf_counter() - started


def drained(env: dict[str, str], n: int, concurrency: int) -> tuple[float, Any]:
    from novajobs.runner import RunOptions, run_job
    from novajobs.settings import load_settings
    from novajobs.streams.handlers import register_handler

    register_handler("noop", lambda message: None)
    settings = load_settings(environ=env, overrides={
        "stream_handlers": "bench=noop", "drain_max_messages": n, "drain_max_seconds": 600,
        "drain_concurrency": concurrency, "drain_block_ms": 100, "log_level": "warning",
    })
    started = time.perf_counter()
    rec = run_job("drain-stream", settings, RunOptions(timeout_sec=900))
    return time.perf_counter() - started, rec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parse_args(parser, tiny={"entries": 500})
    import redis

    from novajobs.output import setup_logging

    setup_logging("json", "warning")
    with temporary(("redis",)) as stack:
        env = stack.env()
        r = redis.Redis.from_url(env["REDIS_URL"])
        fill(r, "naive-stream", args.entries)
        fill(r, "bench", args.entries)
        t_naive = naive(r, "naive-stream", args.entries)
        t_drain, rec = drained(env, args.entries, args.concurrency)
        assert rec.counters["succeeded"] == args.entries, (rec.outcome, rec.error, rec.counters)
        assert int(r.xpending("bench", "novajobs")["pending"]) == 0
        rate_naive, rate_drain = args.entries / t_naive, args.entries / t_drain
        print(f"entries:            {args.entries}")
        print(f"naive read+ack:     {t_naive:7.2f} s  {rate_naive:9.0f} entries/s")
        print(f"drain-stream:       {t_drain:7.2f} s  {rate_drain:9.0f} entries/s "
              f"(concurrency {args.concurrency}, whole run incl. lock and records)")
        print(f"ratio:              {rate_drain / rate_naive:7.1f}x  (goal >= 5x)")
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
