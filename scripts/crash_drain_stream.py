#!/usr/bin/env python3
"""Crash test of drain-stream: kill -9 a drain of many audit entries at random points, then
run to completion, on a Redis and a PostgreSQL this script starts.

    .venv/bin/python scripts/crash_drain_stream.py [--entries 100000] [--kills 6] [--seed N]

Checks at-least-once end to end: afterwards every entry is acked (no pending, no lag)
or in the DLQ (none expected: the entries are valid), nothing is left in the retry set,
and the built-in audit-log handler wrote each event exactly once into audit_logs
(count = distinct user ids = entries), however often entries were redelivered.
(tests/test_stream_process.py has a 3000-entry smoke version.)
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary

STREAM = "stream:audit:log"
ARGS = ["--concurrency", "4", "--message-timeout", "5", "--max-messages", "10000000",
        "--max-seconds", "3000", "--timeout", "3600", "-s", "stream_claim_idle_sec=6",
        "-s", "drain_block_ms=200", "--log-format", "json"]


def fill(r: Any, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {"user_id": str(i), "action": f"login {i}",
                           "ts": f"{1_700_000_000 + i}.5"})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def drain(env: dict[str, str], consumer: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "novajobs", "drain-stream", *ARGS,
                                 "--consumer", consumer], env={**os.environ, **env},
                                stdout=out, stderr=out)


def handled(pg: Any) -> int:
    return int(pg.execute("SELECT count(*) FROM novajobs_stream_dedupe").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None)
    args = parse_args(parser, tiny={"entries": 300, "kills": 1})
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    import psycopg
    import redis

    from novajobs.schema import ensure_tables

    with temporary(("redis", "postgres")) as stack:
        env, directory = stack.env(), stack.dir
        r = redis.Redis.from_url(env["REDIS_URL"])
        pg = psycopg.connect(env["DATABASE_URL"], autocommit=True)
        pg.execute(demo_data.POSTGRES_DDL["audit_logs"])
        ensure_tables(pg, ["novajobs_stream_dedupe"])
        fill(r, args.entries)
        print(f"seed {seed}: {args.entries} entries; killing {args.kills} drains with -9")
        for kill in range(args.kills):
            # a random point: after a random share of what is left has been handled
            target = handled(pg) + rng.randint(1, max(2, (args.entries - handled(pg)) // 3))
            proc = drain(env, f"pod-{kill}", directory / f"pod-{kill}.log")
            while handled(pg) < target and proc.poll() is None:
                time.sleep(rng.uniform(0.001, 0.05))
            proc.kill()
            proc.wait()
            info = r.xinfo_groups(STREAM)[0]
            print(f"  kill {kill + 1}: handled {handled(pg)}, pending {info['pending']}, "
                  f"lag {info['lag']}")
        time.sleep(6.5)  # the dead consumers' entries become reclaimable
        started = time.monotonic()
        final = drain(env, "pod-final", directory / "final.log")
        assert final.wait() == 0, (directory / "final.log").read_text()[-2000:]
        info = r.xinfo_groups(STREAM)[0]
        row = pg.execute("SELECT count(*), count(DISTINCT user_id) FROM audit_logs").fetchone()
        assert row is not None  # an aggregate always returns a row
        count, users = row
        dead, retries = r.xlen("dlq:" + STREAM), r.zcard("retry:" + STREAM)
        print(f"final run: {time.monotonic() - started:.1f} s; pending {info['pending']}, "
              f"lag {info['lag']}, dlq {dead}, retry {retries}")
        print(f"audit_logs rows {count}, distinct user ids {users}, entries {args.entries}")
        ok = (info["pending"], info["lag"], dead, retries) == (0, 0, 0, 0) and (
            count == users == args.entries)
        print("OK: nothing lost, each event written once" if ok else "FAILED")
        pg.close()
        r.close()
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
