#!/usr/bin/env python3
"""Benchmark drain-stream against plain consumers, on a Redis this script starts.

    .venv/bin/python scripts/bench_drain_stream.py [--entries 100000] [--runs 3] [--tiny]

Same entries (3 small fields each), same Redis, runs interleaved (each variant once per
round, a fresh stream each time, filling not timed); medians:

- fastest: the plain consumer that is the limit: one thread, no handler, XREADGROUP
  COUNT 1000 and one XACK per batch;
- drain-stream: the real job (run_job: lock, records, worker pool, trimming, DLQ cap,
  lag figures: the whole run) with a no-op handler;
- drain-stream with ``stream_trim=false``; its stream, drained and not trimmed, is then
  trimmed by the trimming script alone, timed: the trimming cost is that time over the
  drain's (the difference of the two drains is printed too, but is mostly noise).

Prints entries per second, drain-stream / fastest (goal >= 0.8x) and the trimming cost
(goal < 5%), with the machine's load average before and after. ``--tiny`` runs 2000
entries once (tests/test_scripts.py: it checks that every variant consumes everything,
not speed).

The CPU time of this process during each variant (all its threads) is printed too: on
a shared VM the wall times of two runs a second apart can differ by half, CPU time
less. drain-stream spends more CPU than the plain loop (a Message and a handler call
per entry, settling, the run's own bookkeeping) but gets back the time the plain loop
waits for Redis: it reads two batches ahead and writes its acks from a thread of its
own (docs/jobs.md, Throughput).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
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


def fastest(r: Any, key: str, n: int) -> int:
    r.xgroup_create(key, "plain", "0")
    done = 0
    while reply := r.xreadgroup("plain", "c1", {key: ">"}, count=1000):
        entries = reply[0][1]
        r.xack(key, "plain", *[entry_id for entry_id, _fields in entries])
        done += len(entries)
    return done


def drainer(env: dict[str, str], concurrency: int, trim: bool) -> Callable[[Any, str, int], int]:
    def run(r: Any, key: str, n: int) -> int:
        from novajobs.runner import RunOptions, run_job
        from novajobs.settings import load_settings

        settings = load_settings(environ=env, overrides={
            "stream_handlers": f"{key}=noop", "drain_max_messages": n, "drain_max_seconds": 600,
            "drain_concurrency": concurrency, "drain_block_ms": 100, "log_level": "warning",
            "stream_trim": trim,
        })
        rec = run_job("drain-stream", settings, RunOptions(timeout_sec=900))
        assert rec.counters["succeeded"] == n, (rec.outcome, rec.error, rec.counters)
        assert int(r.xpending(key, "novajobs")["pending"]) == 0
        assert r.xlen(key) == (0 if trim else n)
        return int(rec.counters["succeeded"])

    return run


def measure(r: Any, variants: dict[str, Callable[[Any, str, int], int]], n: int,
            runs: int) -> tuple[dict[str, tuple[float, float]], float]:
    """Median (seconds, CPU seconds) per variant, the variants interleaved round by
    round (in a rotating order), after one small warm-up round (imports, connections);
    and the median seconds of the trimming script."""
    for name, consume in variants.items():
        fill(r, f"warm:{name}", 100)
        consume(r, f"warm:{name}", 100)
        r.delete(f"warm:{name}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    trims: list[float] = []
    names = list(variants)
    for round_no in range(runs):
        for name in names[round_no % len(names):] + names[:round_no % len(names)]:
            consume = variants[name]
            key = f"bench:{name}:{round_no}"
            fill(r, key, n)
            started, cpu_started = time.perf_counter(), time.process_time()
            done = consume(r, key, n)
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
            assert done == n, (name, done)
            if name == "drain_no_trim":
                trims.append(timed_trim(r, key, n))
            r.delete(key)
    return ({name: (statistics.median(t), statistics.median(cpu[name]))
             for name, t in times.items()}, statistics.median(trims))


def timed_trim(r: Any, key: str, n: int) -> float:
    """Seconds the trimming script takes on a drained, untrimmed stream of n entries."""
    from novajobs.streams.keys import stream_keys
    from novajobs.streams.settle import trim_acked

    started = time.perf_counter()
    trimmed = trim_acked(r, stream_keys("", key))
    elapsed = time.perf_counter() - started
    assert trimmed == n, trimmed
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parse_args(parser, tiny={"entries": 2000, "runs": 1})
    n, runs = args.entries, args.runs
    import redis

    from novajobs.output import setup_logging
    from novajobs.streams.handlers import register_handler

    setup_logging("json", "warning")
    register_handler("noop", lambda message: None)
    with temporary(("redis",)) as stack:
        env = stack.env()
        r = redis.Redis.from_url(env["REDIS_URL"])
        variants = {
            "fastest": fastest,
            "drain": drainer(env, args.concurrency, trim=True),
            "drain_no_trim": drainer(env, args.concurrency, trim=False),
        }
        load = os.getloadavg()[0]
        medians, trim = measure(r, variants, n, runs)
        secs = {name: wall for name, (wall, _cpu) in medians.items()}
        rate = {name: n / t for name, t in secs.items()}
        print(f"entries: {n}, rounds: {runs} (medians), concurrency {args.concurrency}; "
              f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
        for name, label in (("fastest", "plain fastest (COUNT 1000, 1 XACK/batch)"),
                            ("drain", "drain-stream (whole run, trimming on)"),
                            ("drain_no_trim", "drain-stream, stream_trim=false")):
            print(f"{label:44} {secs[name]:7.2f} s  {rate[name]:9.0f} entries/s  "
                  f"(CPU {medians[name][1]:.2f} s)")
        print(f"drain-stream / fastest: {rate['drain'] / rate['fastest']:5.2f}x  (goal >= 0.8x)")
        print(f"trimming cost:          {100 * trim / secs['drain']:5.2f} %  (goal < 5 %): the "
              f"script takes {1000 * trim:.1f} ms for {n} entries")
        print(f"(drain with / without trimming: {secs['drain'] / secs['drain_no_trim']:.2f}x, "
              "whole runs: mostly noise)")
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
