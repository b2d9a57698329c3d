"""gc-files under kill -9: the rounds scripts/crash_gc_files.py runs at full size and
tests/test_gc_crash.py runs small against the test stack.

Each round marks more live files for deletion, starts `novajobs gc-files` as its own
process and SIGKILLs it after a random delay; after every kill what must hold at *any*
moment is checked (every kept file still has its row and its object), and at the end one
uninterrupted run must converge (no eligible row or object left, no orphan, no row
without its object).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novajobs_dev import demo_data, stack

ROOT = Path(__file__).resolve().parents[2]


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
        ids = demo_data.load_files(pg, minio, bucket, live=live, marked=marked,
                                   recent=max(live // 20, 1), missing=max(marked // 50, 1),
                                   held=max(live // 50, 1), min_size=16, max_size=512,
                                   seed=seed)
        paths = dict(pg.execute("SELECT id, path FROM file_metadata").fetchall())
        kept = {*ids["live"], *ids["recent"], *ids["held"]}
        return cls(bucket, paths, kept, {*ids["marked"], *ids["missing"]}, set(ids["missing"]))

    def add_live(self, pg: Any, minio: Any, n: int, seed: int) -> None:
        """New live files (rows and objects), as uploads keep coming."""
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
    # a 1 s lock TTL: a killed run's lock expires soon after
    return stack.job_env(stack_env, schema, prefix, lock_ttl_sec=1, gc_page_size=page_size)
