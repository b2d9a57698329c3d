#!/usr/bin/env python3
"""Benchmark clean-token-blacklist against `redis-cli --scan --pattern` alone, on a Redis
this script starts.

    .venv/bin/python scripts/bench_token_blacklist.py [--keys 1000000]

The keyspace: --keys blacklist entries (90 % with a TTL, 5 % without one and expired,
5 % without one and still valid) plus as many unrelated keys. Measured in the same run:
- `redis-cli --scan --pattern 'auth:block:token:*'` (its default COUNT; Debian's
  redis-cli 7.0 has no --count), which only lists the keys;
- the job (run_job: lock, SCAN COUNT 1000, pipelined TTL + GET, conditional fixes), which
  reads every key's TTL, the value of those without one, and repairs or deletes 10 %.
Prints keys per second, the ratio (goal >= 0.5x of redis-cli's default rate) and the
growth of the process's peak RSS during the job (memory stays flat: one batch at a time).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time

from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary

# KEYS none; ARGV[1] first index, ARGV[2] count, ARGV[3] now. 100k keys per call.
_POPULATE = """
local now = tonumber(ARGV[3])
for i = tonumber(ARGV[1]), tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1 do
  local key = 'auth:block:token:' .. i
  local kind = i % 20
  if kind == 0 then
    redis.call('SET', key, now - 60)
  elseif kind == 1 then
    redis.call('SET', key, '{"exp":' .. (now + 3600) .. '}')
  else
    redis.call('SET', key, now + 3600, 'EX', 3600)
  end
  redis.call('SET', 'session:' .. i, 'x')
end
return 1
"""


def redis_cli_scan(port: int, extra: list[str]) -> tuple[float, int]:
    """Seconds `redis-cli --scan` takes to list the blacklist, and how many keys it listed."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    started = time.perf_counter()
    out = subprocess.run([cli, "-p", str(port), "--scan", "--pattern", "auth:block:token:*",
                          *extra], capture_output=True, check=True).stdout
    return time.perf_counter() - started, out.count(b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parse_args(parser, tiny={"keys": 2000})
    import redis

    from novajobs.output import setup_logging
    from novajobs.runner import run_job
    from novajobs.settings import load_settings

    setup_logging("json", "warning")
    with temporary(("redis",)) as stack:
        env = stack.env()
        r = redis.Redis.from_url(env["REDIS_URL"])
        now = int(time.time())
        for first in range(0, args.keys, 100_000):
            r.eval(_POPULATE, 0, first, min(100_000, args.keys - first), now)
        port = stack.ports["redis"]
        t_cli, listed = redis_cli_scan(port, [])
        assert listed == args.keys, listed

        settings = load_settings(environ=env, overrides={"log_level": "warning"})
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        rec = run_job("clean-token-blacklist", settings)
        t_job = time.perf_counter() - started
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        c = rec.counters
        assert c["scanned"] == args.keys and c["deleted"] + c["repaired"] == args.keys // 10, c

        rate = args.keys / t_job
        print(f"keys:                           {args.keys} (+ {args.keys} unrelated)")
        print(f"redis-cli --scan (COUNT 10):    {t_cli:6.2f} s  {args.keys / t_cli:9.0f} keys/s")
        print(f"clean-token-blacklist:          {t_job:6.2f} s  {rate:9.0f} keys/s "
              f"(repaired {c['repaired']}, deleted {c['deleted']})")
        print(f"ratio vs redis-cli default:     {rate / (args.keys / t_cli):6.2f}x  (goal >= 0.5x)")
        print(f"peak RSS growth during the job: {rss_growth / 1024:6.1f} MiB")
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
