#!/usr/bin/env python3
"""Benchmark clean-token-blacklist on a 3-primary Redis Cluster this script starts:
the primaries scanned in parallel (the job) vs one after another.

    .venv/bin/python scripts/bench_token_blacklist_cluster.py [--keys 1000000] [--replicas 1]

The keyspace is bench_token_blacklist.py's (--keys blacklist entries, 10 % of them without
a TTL, plus as many unrelated keys), spread over the primaries by their hash slots.
Measured in the same run, on the same keys:
- `redis-cli -p <primary> --scan --pattern 'auth:block:token:*'` on each primary, one
  after another (what `redis-cli --cluster call` does: node by node), which only lists
  the keys;
- the job with its primaries scanned one after another (``clean(..., parallel=False)``);
- the job as it runs (``run_job``: lock, one SCAN thread per primary), after the same 10 %
  were broken again.
Prints keys per second and the ratios: the job vs the sequential listing (goal >= 0.5x,
as on one Redis), and parallel vs sequential primaries. On 2 shared cores the parallel
gain is bounded by the CPU the three servers and the client get, not by the round trips.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from novajobs_dev.bench import parse_args
from novajobs_dev.topology import RedisClusterServers

BLOCK = "auth:block:token:"
CHUNK = 20_000


def populate(cluster: Any, first: int, count: int, now: int, broken_only: bool = False) -> None:
    """bench_token_blacklist.py's keys i in [first, first + count): i % 20 == 0 expired
    without TTL, == 1 JSON without TTL, else with a TTL; plus ``session:i``. Sent as one
    plain pipeline per primary (redis-py's cluster pipeline is much slower)."""
    from redis.crc import key_slot

    by_node: dict[str, list[tuple[str, Any, int | None]]] = defaultdict(list)
    for i in range(first, first + count):
        kind = i % 20
        if broken_only and kind > 1:
            continue
        key = f"{BLOCK}{i}"
        if kind == 0:
            entry: tuple[str, Any, int | None] = (key, now - 60, None)
        elif kind == 1:
            entry = (key, f'{{"exp":{now + 3600}}}', None)
        else:
            entry = (key, now + 3600, 3600)
        extra = [] if broken_only else [(f"session:{i}", "x", None)]
        for k, value, ttl in (entry, *extra):
            node = cluster.nodes_manager.get_node_from_slot(key_slot(k.encode()))
            by_node[node.name].append((k, value, ttl))
    for name, sets in by_node.items():
        pipe = cluster.get_redis_connection(cluster.get_node(node_name=name)).pipeline(
            transaction=False)
        for k, value, ttl in sets:
            pipe.set(k, value, ex=ttl)
        pipe.execute()


def sequential_listing(ports: list[int]) -> tuple[float, int]:
    """Seconds `redis-cli --scan` takes on each primary in turn, and the keys listed."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    started, listed = time.perf_counter(), 0
    for port in ports:
        out = subprocess.run([cli, "-p", str(port), "--scan", "--pattern", f"{BLOCK}*"],
                             capture_output=True, check=True).stdout
        listed += out.count(b"\n")
    return time.perf_counter() - started, listed


def sequential_job(settings: Any) -> tuple[float, dict[str, int]]:
    from novajobs.context import JobContext
    from novajobs.jobs import clean_token_blacklist

    with JobContext(settings, "clean-token-blacklist") as ctx:
        started = time.perf_counter()
        tally, _ = clean_token_blacklist.clean(ctx, ctx.key(settings.token_blacklist_pattern),
                                               False, parallel=False)
        return time.perf_counter() - started, dict(tally)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary")
    args = parse_args(parser, tiny={"keys": 2000})
    import redis

    from novajobs.output import setup_logging
    from novajobs.runner import run_job
    from novajobs.settings import load_settings

    setup_logging("json", "warning")
    with RedisClusterServers(primaries=3, replicas=args.replicas) as cluster:
        r: Any = redis.RedisCluster.from_url(cluster.url)
        now = int(time.time())
        for first in range(0, args.keys, CHUNK):
            populate(r, first, min(CHUNK, args.keys - first), now)
        primaries = [n.port for n in cluster.nodes() if n.primary]
        t_cli, listed = sequential_listing(primaries)
        assert listed == args.keys, listed

        settings = load_settings(environ={"REDIS_URL": cluster.url},
                                 overrides={"log_level": "warning"})
        t_seq, seq = sequential_job(settings)
        assert seq["scanned"] == args.keys, seq
        assert seq["deleted"] + seq["repaired"] == args.keys // 10, seq
        for first in range(0, args.keys, CHUNK):  # the same 10 % broken again
            populate(r, first, min(CHUNK, args.keys - first), now, broken_only=True)
        started = time.perf_counter()
        rec = run_job("clean-token-blacklist", settings)
        t_job = time.perf_counter() - started
        c = rec.counters
        assert c["scanned"] == args.keys and c["deleted"] + c["repaired"] == args.keys // 10, c
        r.close()

    n = args.keys
    print(f"keys:                                 {n} (+ {n} unrelated) on 3 primaries "
          f"({args.replicas} replica each)")
    print(f"redis-cli --scan, primary by primary: {t_cli:6.2f} s  {n / t_cli:9.0f} keys/s")
    print(f"job, primaries one after another:     {t_seq:6.2f} s  {n / t_seq:9.0f} keys/s")
    print(f"job, primaries in parallel (run_job): {t_job:6.2f} s  {n / t_job:9.0f} keys/s "
          f"(repaired {c['repaired']}, deleted {c['deleted']})")
    print(f"ratio job vs sequential redis-cli:    {t_cli / t_job:6.2f}x  (goal >= 0.5x)")
    print(f"ratio parallel vs sequential job:     {t_seq / t_job:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
