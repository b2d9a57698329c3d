#!/usr/bin/env python3
"""Crash safety of archive-audit-logs: kill -9 it at random points, then a re-run converges.

    python scripts/crash_archive_audit_logs.py               # 25 kills, stack of its own
    python scripts/crash_archive_audit_logs.py --kills 40 --rows 500000 --seed 3

Loads ``audit_logs`` with old rows (past the retention) and recent ones, then starts
`novajobs archive-audit-logs` as its own process again and again (small batches, a 1 s
lock TTL) and SIGKILLs it after a random delay: while starting, listing leftovers,
reading a batch, uploading, reading it back, inside the delete transaction. After every
kill it checks what must hold at *any* moment: every old row is either still in the
table or in exactly one committed archive (a row of ``novajobs_audit_archive`` whose
object holds it, byte for byte). At the end one uninterrupted run must converge: only
the recent rows left, every old row in exactly one committed archive, identical to what
was loaded, and no object in the prefix that is not a committed archive.

tests/test_crash_archive.py runs a small version of the same code against the test stack.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "audit_logs/"
SELECT = "SELECT id, user_id, action, created_at FROM audit_logs"


def load(pg: Any, *, old: int, recent: int) -> dict[int, bytes]:
    """Old and recent rows; returns each old row's COPY line by id (what must survive)."""
    import demo_data

    pg.execute(demo_data.POSTGRES_DDL["audit_logs"])
    pg.execute("""
        INSERT INTO audit_logs (user_id, action, created_at)
        SELECT n %% 5000,
               (ARRAY['login', 'logout', 'post', E'tab\\there', E'new\\nline'])[1 + n %% 5],
               now() - interval '400 days' + n * interval '1 second'
        FROM generate_series(1, %s) AS n
    """, [old])
    pg.execute("""
        INSERT INTO audit_logs (user_id, action, created_at)
        SELECT n, 'recent', now() - interval '1 day' FROM generate_series(1, %s) AS n
    """, [recent])
    return copy_lines(pg, f"{SELECT} WHERE created_at < now() - interval '30 days'")


def copy_lines(pg: Any, query: str) -> dict[int, bytes]:
    out = bytearray()
    with pg.cursor() as cur, cur.copy(f"COPY ({query} ORDER BY id) TO STDOUT") as copy:
        for data in copy:
            out += data
    return {int(line.split(b"\t", 1)[0]): line for line in out.splitlines()}


def archived(pg: Any, minio: Any, bucket: str) -> tuple[dict[int, list[bytes]], list[str]]:
    """Rows of the committed archives (id -> its copies), and objects no archive owns."""
    keys = {r[0] for r in pg.execute(
        "SELECT object_key FROM novajobs_audit_archive WHERE bucket = %s", [bucket])}
    copies: dict[int, list[bytes]] = {}
    for key in sorted(keys):
        response = minio.get_object(bucket, key)
        try:
            data = gzip.decompress(response.read())
        finally:
            response.close()
            response.release_conn()
        for line in data.splitlines():
            copies.setdefault(int(line.split(b"\t", 1)[0]), []).append(line)
    listed = {o.object_name for o in minio.list_objects(bucket, prefix=PREFIX, recursive=True)}
    return copies, sorted(listed - keys)


def check_safe(old: dict[int, bytes], table: set[int],
               copies: dict[int, list[bytes]]) -> list[str]:
    """Every old row in the table or in exactly one committed archive, unchanged."""
    problems = []
    for row_id, line in old.items():
        kept = copies.get(row_id, [])
        if row_id not in table and not kept:
            problems.append(f"row {row_id} lost: deleted and in no committed archive")
        if len(kept) > 1:
            problems.append(f"row {row_id} in {len(kept)} committed archives")
        if kept and kept[0] != line:
            problems.append(f"row {row_id} archived as {kept[0]!r}, was {line!r}")
        if kept and row_id in table:
            problems.append(f"row {row_id} archived (committed) but still in the table")
    return problems


def table_ids(pg: Any) -> set[int]:
    return {r[0] for r in pg.execute("SELECT id FROM audit_logs")}


def command() -> list[str]:
    return [sys.executable, "-m", "novajobs", "archive-audit-logs", "--wait", "10",
            "--log-format", "json"]


def kill_after(argv: list[str], env: dict[str, str], delay: float) -> int | None:
    """Start the job and SIGKILL it ``delay`` s after it logged "run started" (start-up
    time on a loaded machine varies too much to aim from the process start). None if
    killed, else its exit code."""
    import threading

    with subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as proc:
        started = threading.Event()

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # drained to the end, so the pipe never blocks the job
                if b'"run started"' in line:
                    started.set()

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        while not started.wait(0.05) and proc.poll() is None:
            pass
        try:
            return proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler, no finally, no rollback, no lock released
            proc.wait()
            return None
        finally:
            reader.join(timeout=5)


def crash_rounds(env: dict[str, str], pg: Any, minio: Any, bucket: str, old: dict[int, bytes],
                 *, kills: int, max_delay: float, rng: random.Random,
                 say: Any = print) -> list[str]:
    """Kill the job ``kills`` times, checking after each; then converge. Returns problems."""
    problems: list[str] = []
    killed = rounds = 0
    while killed < kills and rounds < kills * 4:
        rounds += 1
        delay = rng.uniform(0.0, max_delay)
        code = kill_after(command(), env, delay)
        copies, stray = archived(pg, minio, bucket)
        table = table_ids(pg)
        found = check_safe(old, table, copies)
        problems += [f"round {rounds}: {p}" for p in found]
        killed += code is None
        what = "killed" if code is None else f"exited {code}"
        say(f"round {rounds:3d}: {what} after {delay:.2f} s; archived {len(copies):7d}; "
            f"left {len(table & old.keys()):7d}; unfinished objects {len(stray)}; "
            f"problems {len(found)}")
        if not table & old.keys():
            break  # everything archived: nothing left to interrupt
    started = time.monotonic()
    final = subprocess.run(command(), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=1800)
    copies, stray = archived(pg, minio, bucket)
    table = table_ids(pg)
    if final.returncode != 0:
        problems.append(f"final run exited {final.returncode}: {final.stderr[-500:]}")
    problems += [f"final: {p}" for p in check_safe(old, table, copies)]
    problems += [f"final: row {i} not archived" for i in sorted(old.keys() - copies.keys())]
    problems += [f"final: unfinished object {key} left" for key in stray]
    say(f"final run: exit {final.returncode} in {time.monotonic() - started:.1f} s; "
        f"{len(copies)} rows archived, {len(table)} left; problems {len(problems)}")
    return problems


def job_env(stack_env: dict[str, str], schema: str, prefix: str, bucket: str,
            batch_rows: int) -> dict[str, str]:
    env = {**os.environ, **stack_env}
    env.pop("NOVAJOBS_CONFIG", None)
    env["DATABASE_URL"] = stack_env["DATABASE_URL"] + f"?options=-csearch_path%3D{schema}"
    env["NOVAJOBS_REDIS_PREFIX"] = prefix
    env["NOVAJOBS_LOCK_TTL_SEC"] = "1"  # a killed run's lock expires soon after
    env["NOVAJOBS_ARCHIVE_BUCKET"] = bucket
    env["NOVAJOBS_AUDIT_ARCHIVE_RETENTION_DAYS"] = "30"
    env["NOVAJOBS_AUDIT_ARCHIVE_BATCH_ROWS"] = str(batch_rows)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--rows", type=int, default=200_000, help="old rows to archive")
    parser.add_argument("--batch-rows", type=int, default=2_000)
    parser.add_argument("--max-delay", type=float, default=2.5, help="kill within this many s")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)

    import psycopg
    from minio import Minio
    from stack import temporary

    from novajobs.schema import ensure_tables

    with temporary(("redis", "postgres", "s3")) as stack:
        stack_env = stack.env()
        pg = psycopg.connect(stack_env["DATABASE_URL"], autocommit=True)
        pg.execute("CREATE SCHEMA crash")
        pg.execute("SET search_path TO crash")
        ensure_tables(pg, ["novajobs_audit_archive"])
        minio = Minio(stack_env["MINIO_ENDPOINT"], stack_env["MINIO_ACCESS_KEY"],
                      stack_env["MINIO_SECRET_KEY"], secure=False, region="us-east-1")
        minio.make_bucket("crash-archive")
        old = load(pg, old=args.rows, recent=args.rows // 10)
        env = job_env(stack_env, "crash", "crash:", "crash-archive", args.batch_rows)
        problems = crash_rounds(env, pg, minio, "crash-archive", old, kills=args.kills,
                                max_delay=args.max_delay, rng=random.Random(seed),
                                say=lambda line: print(line, flush=True))
        pg.close()
    for problem in problems[:50]:
        print("PROBLEM", problem)
    print(f"{args.kills} kills: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
