#!/usr/bin/env python3
"""The window a lease check cannot close, with redis-py's Lock and with novajobs.

Each round: a holder takes the lock, checks that it still owns it, and is then paused
(it SIGSTOPs itself right there) past the lock's TTL, before its write. The lock expires;
the world moves on (new data, a file referenced again); a second run takes the lock and
writes. Then the holder wakes and writes what it had computed. A *stale write landed*
when that last write is visible afterwards. Three jobs:

- cache: a value written to a Redis key (novajobs: the same fenced SET refresh-trending uses);
- report: a day's message count upserted into PostgreSQL (novajobs: daily-stats itself);
- gc: a marked file's object and row deleted (novajobs: gc-files itself); meanwhile the
  application references the file again, so a stale delete loses a live file.

With redis-py's Lock every stale write lands; with novajobs none does (the holder ends
with exit 4). Exit 1 if either is otherwise.

    .venv/bin/python scripts/fencing_experiment.py [--rounds 3] [--ttl 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from novajobs_dev.bench import parse_args
from novajobs_dev.stack import minio_client, temporary

JOBS = ("cache", "report", "gc")
VARIANTS = ("redis-py", "novajobs")
DAY = "2025-03-04"
BUCKET = "fencing-experiment"
# Where the novajobs holder pauses: in the ctx.checkpoint() right before each job's write.
PAUSE_IN = {"cache": "run", "report": "upsert_days", "gc": "collect_page"}
NOVAJOBS_JOB = {"report": "daily-stats", "gc": "gc-files"}


# --- the novajobs cache job: compute a value, check the lease, write it (fenced) ----------


def run(ctx: Any) -> Any:
    from novajobs.context import Result
    from novajobs.errors import Outcome
    from novajobs.fencing import fenced_set

    value = os.environ.get("EXPERIMENT_VALUE", "second")  # the holder's says "stale"
    ctx.checkpoint()
    fenced_set(ctx, ctx.key("cache"), value)
    return Result(Outcome.SUCCESS, f"wrote {value}")


def cache_spec() -> Any:
    from novajobs.registry import JobSpec

    return JobSpec(name="experiment-cache", summary="", description="", example="",
                   module="fencing_experiment", schedule="* * * * *", timeout_sec=60,
                   lock_ttl_sec=1)


# --- the holder (a child process) ----------------------------------------------------------


def holder(variant: str, job: str) -> int:
    """Take the lock, check ownership, stop ourselves, then write. Our exit code tells."""
    if variant == "novajobs":
        return novajobs_holder(job)
    return redis_py_holder(job)


def novajobs_holder(job: str) -> int:
    from novajobs.context import Guard
    from novajobs.runner import run_job
    from novajobs.settings import load_settings

    check = Guard.check

    def check_then_pause(self: Guard) -> None:
        check(self)  # the lease check passes: the lock is ours right now
        if sys._getframe(2).f_code.co_name == PAUSE_IN[job]:
            os.kill(os.getpid(), signal.SIGSTOP)  # ... and here the pause strikes

    Guard.check = check_then_pause  # type: ignore[method-assign]
    os.environ["EXPERIMENT_VALUE"] = "stale"
    spec = cache_spec() if job == "cache" else NOVAJOBS_JOB[job]
    params: dict[str, Any] = {"on": DAY} if job == "report" else {}
    return run_job(spec, load_settings(), None, **params).exit_code


def redis_py_holder(job: str) -> int:
    """The same jobs written the usual way around redis-py's Lock."""
    import psycopg
    import redis

    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    prefix = os.environ["NOVAJOBS_REDIS_PREFIX"]
    lock = r.lock(f"{prefix}lock:{job}", timeout=float(os.environ["NOVAJOBS_LOCK_TTL_SEC"]))
    assert lock.acquire(blocking=False)
    pg = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    if job == "report":
        count = pg.execute(COUNT_SQL, [DAY]).fetchone()
    if job == "gc":
        files = pg.execute(ELIGIBLE_SQL).fetchall()
    assert lock.owned()  # the ownership check passes ...
    os.kill(os.getpid(), signal.SIGSTOP)  # ... and here the pause strikes
    if job == "cache":
        r.set(f"{prefix}cache", "stale")
    elif job == "report":
        pg.execute(UPSERT_SQL, [DAY, count[0] if count else 0])
    else:
        s3 = minio_client(os.environ)
        for file_id, bucket, path in files:
            s3.remove_object(bucket, path)
            pg.execute("DELETE FROM file_metadata WHERE id = %s", [file_id])
    return 0


COUNT_SQL = "SELECT count(*) FROM chat_messages WHERE created_at::date = %s"
UPSERT_SQL = """
INSERT INTO daily_stats (stat_date, total_msgs) VALUES (%s, %s)
ON CONFLICT (stat_date) DO UPDATE SET total_msgs = EXCLUDED.total_msgs
"""
ELIGIBLE_SQL = "SELECT id, bucket, path FROM file_metadata WHERE status = 2 AND ref_count = 0"


# --- one round (the parent) ------------------------------------------------------------------


class Round:
    def __init__(self, env: dict[str, str], variant: str, job: str, n: int, ttl: float) -> None:
        tag = f"x{variant[0]}{job}{n}".replace("-", "")
        self.variant, self.job, self.ttl = variant, job, ttl
        self.env = {**env, "NOVAJOBS_REDIS_PREFIX": f"{tag}:",
                    "NOVAJOBS_LOCK_TTL_SEC": str(ttl), "NOVAJOBS_LOG_FORMAT": "json",
                    "DATABASE_URL": env["DATABASE_URL"] + f"?options=-csearch_path%3D{tag}"}
        self.tag = tag

    def play(self) -> tuple[bool, int]:
        """(the stale write landed, the holder's exit code)."""
        import psycopg

        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as pg:
            self.prepare(pg)
            child = subprocess.Popen([sys.executable, __file__, "--holder", self.variant,
                                      self.job], env=self.env, stderr=subprocess.PIPE, text=True)
            wait_stopped(child)
            time.sleep(self.ttl + 0.5)  # past the TTL: the holder's lock is gone
            app = self.world_moves_on()
            self.second_run()
            child.send_signal(signal.SIGCONT)
            _, errors = child.communicate(timeout=60)
            if app is not None:
                app.join(timeout=60)
            if child.returncode not in (0, 4):
                raise RuntimeError(f"holder {self.variant} {self.job} failed:\n{errors[-2000:]}")
            return self.landed(pg), child.returncode

    def prepare(self, pg: Any) -> None:
        from novajobs import schema
        from novajobs_dev import demo_data

        pg.execute(f"CREATE SCHEMA {self.tag}")
        for table in ("users", "chat_messages", "audit_logs", "file_metadata"):
            pg.execute(demo_data.POSTGRES_DDL[table])
        pg.execute("CREATE TABLE chat_messages_default PARTITION OF chat_messages DEFAULT")
        schema.ensure_tables(pg)
        pg.execute(f"INSERT INTO chat_messages VALUES (1, 1, 1, 1, '{DAY} 10:00+00')")
        if self.job == "gc":
            s3 = minio_client(self.env)
            bucket = f"{BUCKET}-{self.tag}"
            demo_data.load_files(pg, s3, bucket, live=0, marked=1, recent=0, missing=0, held=0,
                                 seed=1, max_size=64)
            self.path = pg.execute("SELECT path FROM file_metadata").fetchone()[0]
            self.bucket = bucket

    def world_moves_on(self) -> threading.Thread | None:
        """New data for the report; the application references the file again. With
        novajobs that update waits for the holder's row lock, so it runs aside."""
        import psycopg

        url = self.env["DATABASE_URL"]
        if self.job == "report":
            with psycopg.connect(url, autocommit=True) as pg:
                pg.execute(f"INSERT INTO chat_messages VALUES (2, 1, 1, 2, '{DAY} 11:00+00')")
        if self.job != "gc":
            return None

        def reference() -> None:
            with psycopg.connect(url, autocommit=True) as pg:
                pg.execute("UPDATE file_metadata SET ref_count = 1, status = 0")

        app = threading.Thread(target=reference)
        app.start()
        time.sleep(0.3)
        return app

    def second_run(self) -> None:
        if self.variant == "redis-py":
            import redis

            r = redis.Redis.from_url(self.env["REDIS_URL"])
            prefix = self.env["NOVAJOBS_REDIS_PREFIX"]
            with r.lock(f"{prefix}lock:{self.job}", timeout=self.ttl, blocking_timeout=10):
                if self.job == "cache":
                    r.set(f"{prefix}cache", "second")
                elif self.job == "report":
                    import psycopg

                    with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as pg:
                        count = pg.execute(COUNT_SQL, [DAY]).fetchone()
                        pg.execute(UPSERT_SQL, [DAY, count[0] if count else 0])
                # gc: the file is referenced again, so nothing is eligible
            r.close()
            return
        from novajobs.runner import RunOptions, run_job
        from novajobs.settings import load_settings

        spec = cache_spec() if self.job == "cache" else NOVAJOBS_JOB[self.job]
        params: dict[str, Any] = {"on": DAY} if self.job == "report" else {}
        rec = run_job(spec, load_settings(environ=self.env), RunOptions(wait_sec=10), **params)
        if not rec.outcome.ok:
            raise RuntimeError(f"the second {self.job} run failed: {rec.error}")

    def landed(self, pg: Any) -> bool:
        if self.job == "cache":
            import redis

            r = redis.Redis.from_url(self.env["REDIS_URL"])
            value = r.get(f"{self.env['NOVAJOBS_REDIS_PREFIX']}cache")
            r.close()
            return value == b"stale"
        if self.job == "report":
            row = pg.execute("SELECT total_msgs FROM daily_stats WHERE stat_date = %s",
                             [DAY]).fetchone()
            return row is not None and row[0] == 1  # the count from before the new message
        from minio.error import S3Error

        try:
            minio_client(self.env).stat_object(self.bucket, self.path)
        except S3Error:
            return True  # the live file's object is gone
        return False


def wait_stopped(child: subprocess.Popen[str], timeout: float = 60) -> None:
    give_up = time.monotonic() + timeout
    while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "T":
        if child.poll() is not None or time.monotonic() > give_up:
            errors = child.stderr.read() if child.stderr else ""
            raise RuntimeError(f"the holder never reached its pause:\n{errors}")
        time.sleep(0.02)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--holder":
        return holder(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=1.0)
    args = parse_args(parser, tiny={"rounds": 1})
    results: dict[tuple[str, str], list[tuple[bool, int]]] = {}
    with temporary(("redis", "postgres", "s3")) as local:
        env = {**os.environ, **local.env()}
        plays = [(variant, job, n) for n in range(args.rounds) for job in JOBS
                 for variant in VARIANTS]
        # Rounds share nothing (own key prefix, schema, bucket): they mostly sleep, so
        # they run side by side.
        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = {play: pool.submit(Round(env, *play, args.ttl).play) for play in plays}
        for (variant, job, _), future in futures.items():
            results.setdefault((variant, job), []).append(future.result())
    return report(results, args.rounds)


def report(results: dict[tuple[str, str], list[tuple[bool, int]]], rounds: int) -> int:
    print(f"stale writes that landed, of {rounds} per job (holder paused past the TTL "
          "between its ownership check and its write)")
    print(f"{'job':8} {'redis-py Lock':>14} {'novajobs':>9}  novajobs holder exit codes")
    ok = True
    for job in JOBS:
        landed = {v: sum(hit for hit, _ in results[(v, job)]) for v in VARIANTS}
        codes = sorted({code for _, code in results[("novajobs", job)]})
        print(f"{job:8} {landed['redis-py']:>14} {landed['novajobs']:>9}  {codes}")
        ok &= landed["redis-py"] == rounds and landed["novajobs"] == 0 and codes == [4]
    print(json.dumps({f"{v}/{j}": sum(h for h, _ in r) for (v, j), r in results.items()}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
