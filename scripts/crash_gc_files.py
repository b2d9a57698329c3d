#!/usr/bin/env python3
"""Crash safety of gc-files: kill -9 the job at random points, then a re-run must converge.

    python scripts/crash_gc_files.py                   # 25 kills, stack of its own
    python scripts/crash_gc_files.py --kills 40 --seed 3

Each round marks more live files for deletion (as the upload service does when the
last reference goes), starts `novajobs gc-files` as its own process (small pages, a
1 s lock TTL) and SIGKILLs it after a random delay: during start-up, while it waits for
the killed predecessor's lock to expire, while scanning, deleting objects, deleting
rows or committing. After every kill it checks what must hold at *any* moment: every
file that is live, recently marked or referenced again still has its row and its
object. It also counts rows left "in flight" (still marked, object already deleted: the
killed page; a later run removes them). At the end one uninterrupted run must converge:
every eligible row and its object gone, no orphan object, no row without its object.

tests/test_gc_crash.py runs a few rounds of the same code against the test stack.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Files:
    """What the store should hold: every file's path, and which ids must survive."""

    bucket: str
    paths: dict[int, str]
    kept: set[int]  # live, recent, held: must keep row and object
    doomed: set[int] = field(default_factory=set)  # eligible: must end with neither
    never_stored: set[int] = field(default_factory=set)  # rows whose object never existed

    @classmethod
    def load(cls, pg: Any, minio: Any, bucket: str, *, live: int, marked: int, seed: int) -> Files:
        import demo_data  # scripts/ is on sys.path (this script's dir, or the test conftest)

        ids = demo_data.load_files(pg, minio, bucket, live=live, marked=marked,
                                   recent=max(live // 20, 1), missing=max(marked // 50, 1),
                                   held=max(live // 50, 1), min_size=16, max_size=512,
                                   seed=seed)
        paths = dict(pg.execute("SELECT id, path FROM file_metadata").fetchall())
        kept = {*ids["live"], *ids["recent"], *ids["held"]}
        return cls(bucket, paths, kept, {*ids["marked"], *ids["missing"]}, set(ids["missing"]))

    def add_live(self, pg: Any, minio: Any, n: int, seed: int) -> None:
        """New live files (rows and objects), as uploads keep coming."""
        import demo_data

        new = demo_data.load_files(pg, minio, self.bucket, live=n, marked=0, recent=0,
                                   missing=0, held=0, min_size=16, max_size=512, seed=seed)
        ids = new["live"]
        self.paths.update(pg.execute("SELECT id, path FROM file_metadata WHERE id = ANY(%s)",
                                     (ids,)).fetchall())
        self.kept.update(ids)

    def mark_more(self, pg: Any, minio: Any, rng: random.Random, n: int) -> int:
        """Drop the last reference of ``n`` live files, long enough ago to be eligible."""
        live = sorted(self.kept & self._live_ids(pg))
        if len(live) < n:
            self.add_live(pg, minio, 2 * n, rng.randrange(1 << 30))
            live = sorted(self.kept & self._live_ids(pg))
        chosen = rng.sample(live, n)
        pg.execute(
            "UPDATE file_metadata SET status = 2, ref_count = 0, "
            "updated_at = now() - interval '3 days' WHERE id = ANY(%s)",
            (chosen,),
        )
        self.kept.difference_update(chosen)
        self.doomed.update(chosen)
        return len(chosen)

    @staticmethod
    def _live_ids(pg: Any) -> set[int]:
        return {r[0] for r in pg.execute("SELECT id FROM file_metadata WHERE status = 0")}


def store_state(pg: Any, minio: Any, bucket: str) -> tuple[dict[int, str], set[str]]:
    rows = dict(pg.execute("SELECT id, path FROM file_metadata").fetchall())
    objects = {o.object_name for o in minio.list_objects(bucket, recursive=True)}
    return rows, objects


def check_safe(files: Files, rows: dict[int, str], objects: set[str]) -> list[str]:
    """What must hold at any moment, even right after a kill -9."""
    problems = [f"kept file {i}: row lost" for i in sorted(files.kept) if i not in rows]
    problems += [f"kept file {i}: object {files.paths[i]} lost" for i in sorted(files.kept)
                 if files.paths[i] not in objects]
    return problems


def in_flight(files: Files, rows: dict[int, str], objects: set[str]) -> int:
    """Doomed rows still there whose object is already gone (a killed page)."""
    return sum(1 for i in files.doomed - files.never_stored
               if i in rows and rows[i] not in objects)


def check_converged(files: Files, rows: dict[int, str], objects: set[str]) -> list[str]:
    problems = check_safe(files, rows, objects)
    problems += [f"eligible file {i}: row left" for i in sorted(files.doomed) if i in rows]
    problems += [f"eligible file {i}: object left" for i in sorted(files.doomed)
                 if files.paths[i] in objects]
    referenced = set(rows.values())
    problems += [f"orphan object {name}" for name in sorted(objects - referenced)]
    problems += [f"row {i} without its object" for i, p in sorted(rows.items())
                 if p not in objects]
    return problems


def gc_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "novajobs", "gc-files", "--wait", "10",
            "--log-format", "json", *extra]


def kill_after(env: dict[str, str], delay: float) -> int | None:
    """Start gc-files, SIGKILL it after ``delay`` s; None if killed, else its exit code."""
    proc = subprocess.Popen(gc_command(), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL: no handler, no finally, no lock release, no rollback
        proc.wait()
        return None


def crash_rounds(env: dict[str, str], pg: Any, minio: Any, files: Files, *, kills: int,
                 mark_per_round: int, max_delay: float, rng: random.Random,
                 say: Any = print) -> list[str]:
    """Run rounds until ``kills`` runs were killed; then converge. Returns the problems."""
    problems: list[str] = []
    killed = rounds = mid_work = 0
    while killed < kills:
        rounds += 1
        files.mark_more(pg, minio, rng, mark_per_round)
        before = len(store_state(pg, minio, files.bucket)[0])
        delay = rng.uniform(0.0, max_delay)
        code = kill_after(env, delay)
        rows, objects = store_state(pg, minio, files.bucket)
        found = check_safe(files, rows, objects)
        problems += [f"round {rounds}: {p}" for p in found]
        killed += code is None
        mid_work += code is None and before > len(rows)
        what = "killed" if code is None else f"exited {code}"
        say(f"round {rounds:3d}: {what} after {delay:.2f} s; rows deleted {before - len(rows):5d}; "
            f"in flight {in_flight(files, rows, objects):3d}; problems {len(found)}")
    say(f"{killed} kills in {rounds} rounds, {mid_work} of them while deleting")
    started = time.monotonic()
    final = subprocess.run(gc_command(), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    rows, objects = store_state(pg, minio, files.bucket)
    if final.returncode != 0:
        problems.append(f"final run exited {final.returncode}: {final.stderr[-500:]}")
    problems += [f"final: {p}" for p in check_converged(files, rows, objects)]
    say(f"final run: exit {final.returncode} in {time.monotonic() - started:.1f} s; "
        f"{len(rows)} rows, {len(objects)} objects left; problems {len(problems)}")
    return problems


def job_env(stack_env: dict[str, str], schema: str, prefix: str, page_size: int) -> dict[str, str]:
    env = {**os.environ, **stack_env}
    env.pop("NOVAJOBS_CONFIG", None)
    env["DATABASE_URL"] = stack_env["DATABASE_URL"] + f"?options=-csearch_path%3D{schema}"
    env["NOVAJOBS_REDIS_PREFIX"] = prefix
    env["NOVAJOBS_LOCK_TTL_SEC"] = "1"  # a killed run's lock expires soon after
    env["NOVAJOBS_GC_PAGE_SIZE"] = str(page_size)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--live", type=int, default=20_000)
    parser.add_argument("--marked", type=int, default=3_000)
    parser.add_argument("--mark-per-round", type=int, default=2_500)
    parser.add_argument("--page-size", type=int, default=25)
    parser.add_argument("--max-delay", type=float, default=1.6, help="kill within this many s")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)

    import psycopg
    from minio import Minio
    from stack import temporary

    with temporary(("redis", "postgres", "s3")) as stack:
        stack_env = stack.env()
        pg = psycopg.connect(stack_env["DATABASE_URL"], autocommit=True)
        pg.execute("CREATE SCHEMA crash")
        pg.execute("SET search_path TO crash")
        minio = Minio(stack_env["MINIO_ENDPOINT"], stack_env["MINIO_ACCESS_KEY"],
                      stack_env["MINIO_SECRET_KEY"], secure=False, region="us-east-1")
        files = Files.load(pg, minio, "crash-files", live=args.live, marked=args.marked,
                           seed=seed)
        env = job_env(stack_env, "crash", "crash:", args.page_size)
        problems = crash_rounds(env, pg, minio, files, kills=args.kills,
                                mark_per_round=args.mark_per_round, max_delay=args.max_delay,
                                rng=random.Random(seed),
                                say=lambda line: print(line, flush=True))
        pg.close()
    for problem in problems[:50]:
        print("PROBLEM", problem)
    print(f"{args.kills} kills: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
