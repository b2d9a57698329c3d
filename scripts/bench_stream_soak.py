#!/usr/bin/env python3
"""A simulated day of drain-stream on a Redis this script starts: does memory stay flat?

    .venv/bin/python scripts/bench_stream_soak.py [--minutes 1440] [--per-minute 200]

One drain-stream and one promote-retries run per simulated minute (24 h = 1440), with
producers adding entries in between: 2 % fail once (retry set, promote-retries), 0.5 %
are poison (DLQ, capped at 50 entries and 3 s here). Prints, every simulated hour, the
bytes Redis holds for the stream, its retry set and its DLQ (MEMORY USAGE), for every
other key without a TTL (run records, locks, fences), for the keys with one (run logs
and details: they expire after run_log_retention, 7 days, so a compressed day only
adds to them) and Redis's used_memory; then whether the last quarter of the first two
stayed within 1.25x of the second quarter (the baseline: the same run, after warm-up).
Exit 1 if not. tests/test_stream_soak.py
runs a 40-minute version; ``--tiny``, 60 minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary
from novajobs_dev.stream_soak import Sample, flat, simulate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=1440)
    parser.add_argument("--per-minute", type=int, default=200)
    args = parse_args(parser, tiny={"minutes": 60, "per_minute": 50})
    import redis

    from novajobs.output import setup_logging
    from novajobs.settings import load_settings

    setup_logging("json", "error")
    with temporary(("redis",)) as stack:
        env = stack.env()
        r = redis.Redis.from_url(env["REDIS_URL"])
        started = time.monotonic()

        def settings(**overrides: Any) -> Any:
            return load_settings(environ=env, overrides=overrides)

        def report(sample: Sample) -> None:
            if sample.minute % 60 == 59 or sample.minute == args.minutes - 1:
                used = int(r.info("memory")["used_memory"])
                print(f"  {(sample.minute + 1) / 60:5.1f} h: stream+retry+dlq {sample.bytes:>6} "
                      f"B, other keys {sample.lasting:>6} B, expiring {sample.expiring:>8} B, "
                      f"used_memory {used:>8} B; stream {sample.length}, retry {sample.retry}"
                      f", dlq {sample.dlq}, dropped {sample.dropped}", flush=True)

        print(f"{args.minutes} simulated minutes, {args.per_minute} entries a minute")
        samples = simulate(r, settings, args.minutes, args.per_minute, report)
        ok = flat(samples)
        elapsed = time.monotonic() - started
        last = samples[-max(1, len(samples) // 4):]
        print(f"{args.minutes * args.per_minute} entries in {elapsed:.0f} s; memory "
              f"{'flat' if ok else 'GREW'}: last quarter at most "
              f"{max(s.bytes for s in last)} B (stream+retry+dlq), "
              f"{max(s.lasting for s in last)} B (other keys without a TTL)")
        r.close()
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
