#!/usr/bin/env python3
"""Crash test of the stream paths: kill -9 drain-stream, promote-retries and dlq replay at
random points while audit events go new -> retry -> promote -> DLQ -> replay -> success,
on a Redis and a PostgreSQL this script starts.

    .venv/bin/python scripts/crash_drain_stream.py [--entries 100000] [--kills 6] [--seed N]
    .venv/bin/python scripts/crash_drain_stream.py --tiny   # what tests/test_scripts.py runs

One event in 1000 fails its first insert (a trigger, not an outage) and so fails its
batch of 200 (one transaction): those take the retry set and promote-retries; one in
2000 fails until it is "fixed", so with stream_max_retries=1 its batch reaches the DLQ
and comes back by `dlq replay --all`. Consumers are killed mid-run, so entries are redelivered by
XAUTOCLAIM after their rows were committed. At the end: nothing pending, no lag,
nothing in the retry set or the DLQ, and the built-in audit-log handler wrote each
event exactly once (rows = distinct user ids = entries).
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
IDLE = 2.5  # stream_claim_idle_sec: killed consumers' entries are reclaimable after it
SETTINGS = ["-s", f"stream_claim_idle_sec={IDLE}", "-s", "stream_max_retries=1",
            "-s", "stream_retry_initial_sec=0.2", "-s", "stream_retry_jitter=0",
            "-s", "drain_block_ms=200", "--log-format", "json"]
DRAIN = ["drain-stream", "--concurrency", "4", "--message-timeout", "2", "--max-messages",
         "10000000", "--max-seconds", "3000", "--timeout", "3600", *SETTINGS]
FLAKY = """
CREATE TABLE flaky (user_id bigint PRIMARY KEY, once boolean NOT NULL);
CREATE FUNCTION flaky_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM flaky WHERE user_id = NEW.user_id) THEN
        RAISE EXCEPTION 'flaky failure for user %', NEW.user_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER flaky BEFORE INSERT ON audit_logs FOR EACH ROW EXECUTE FUNCTION flaky_fail();
"""


def fill(r: Any, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {"user_id": str(i), "action": f"login {i}",
                           "ts": f"{1_700_000_000 + i}.5"})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def start(env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "novajobs", *args],
                                env={**os.environ, **env}, stdout=out, stderr=out)


def handled(pg: Any) -> int:
    return int(pg.execute("SELECT count(*) FROM novajobs_stream_dedupe").fetchone()[0])


def kill_at_random(proc: subprocess.Popen[bytes], rng: random.Random, most: float) -> None:
    time.sleep(rng.uniform(0.05, most))
    proc.kill()
    proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=None)
    args = parse_args(parser, tiny={"entries": 600, "kills": 2})
    entries, kills = args.entries, args.kills
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    import psycopg
    import redis

    from novajobs.schema import ensure_tables
    from novajobs.streams.keys import stream_keys

    with temporary(("redis", "postgres")) as stack:
        env, logs = stack.env(), stack.dir
        r = redis.Redis.from_url(env["REDIS_URL"])
        pg = psycopg.connect(env["DATABASE_URL"], autocommit=True)
        pg.execute(demo_data.POSTGRES_DDL["audit_logs"])
        ensure_tables(pg, ["novajobs_stream_dedupe"])
        pg.execute(FLAKY)
        pg.execute("INSERT INTO flaky SELECT i, i %% 1000 = 3 FROM generate_series(0, %s) i "
                   "WHERE i %% 1000 = 3 OR i %% 2000 = 7", [entries])
        fill(r, entries)
        r.xgroup_create(STREAM, "novajobs", "0")  # (a drain killed while starting makes none)
        print(f"seed {seed}: {entries} entries; {kills} rounds of kill -9 "
              "(drain-stream, promote-retries, dlq replay)")
        for kill in range(kills):
            target = handled(pg) + rng.randint(1, max(2, (entries - handled(pg)) // 3))
            proc = start(env, [*DRAIN, "--consumer", f"pod-{kill}"], logs / "drain.log")
            give_up = time.monotonic() + rng.uniform(1, 10)
            while handled(pg) < target and proc.poll() is None and time.monotonic() < give_up:
                time.sleep(rng.uniform(0.001, 0.05))
            proc.kill()
            proc.wait()
            pg.execute("DELETE FROM flaky WHERE once")  # the retried ones succeed next time
            kill_at_random(start(env, ["promote-retries", *SETTINGS], logs / "promote.log"),
                           rng, 1.5)
            if kill == kills - 1:
                pg.execute("DELETE FROM flaky")  # the DLQ's cause is fixed
            kill_at_random(start(env, ["dlq", "replay", STREAM, "--all", "--rate", "500",
                                       *SETTINGS[:-2]], logs / "replay.log"), rng, 1.5)
            info = r.xinfo_groups(STREAM)[0]
            print(f"  round {kill + 1}: handled {handled(pg)}, pending {info['pending']}, "
                  f"lag {info['lag']}")
        time.sleep(IDLE + 0.5)  # the killed consumers' entries become reclaimable
        keys = stream_keys("", STREAM)
        started, rounds = time.monotonic(), 0
        while rounds < 8:  # drain, promote due retries, replay the DLQ, until empty
            rounds += 1
            run = start(env, [*DRAIN, "--consumer", "pod-final", "--max-seconds", "5"],
                        logs / "final.log")
            assert run.wait() in (0, 3), (logs / "final.log").read_text()[-2000:]
            time.sleep(0.3)
            for cmd in (["promote-retries", *SETTINGS],
                        ["dlq", "replay", STREAM, "--all", *SETTINGS[:-2]]):
                start(env, cmd, logs / "final.log").wait()
            info = r.xinfo_groups(STREAM)[0]
            if (info["pending"], info["lag"], r.zcard(keys.retry), r.xlen(keys.dlq)) == (
                    0, 0, 0, 0):
                break
        info = r.xinfo_groups(STREAM)[0]
        row = pg.execute("SELECT count(*), count(DISTINCT user_id) FROM audit_logs").fetchone()
        assert row is not None  # an aggregate always returns a row
        count, users = row
        dead, retries = r.xlen(keys.dlq), r.zcard(keys.retry)
        print(f"final rounds: {rounds} in {time.monotonic() - started:.1f} s; pending "
              f"{info['pending']}, lag {info['lag']}, dlq {dead}, retry {retries}, stream "
              f"length {r.xlen(STREAM)} (trimmed)")
        print(f"audit_logs rows {count}, distinct user ids {users}, entries {entries}")
        ok = (info["pending"], info["lag"], dead, retries) == (0, 0, 0, 0) and (
            count == users == entries)
        print("OK: nothing lost, each event written once" if ok else "FAILED")
        pg.close()
        r.close()
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
