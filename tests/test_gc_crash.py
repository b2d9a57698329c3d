"""A small version of scripts/crash_gc_files.py: kill -9 gc-files at random points, check
that nothing kept was lost after each kill, and that one more run converges."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load_crash_script() -> Any:
    spec = importlib.util.spec_from_file_location("crash_gc_files",
                                                  ROOT / "scripts" / "crash_gc_files.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_gc_files"] = module
    spec.loader.exec_module(module)
    return module


def test_kill_9_at_random_points_then_a_rerun_converges(pg, pg_tables, minio_client, names,
                                                         redis_server, stack):
    crash = load_crash_script()
    pg_tables("file_metadata")
    seed = random.randrange(1 << 30)
    files = crash.Files.load(pg, minio_client, names["bucket"], live=1500, marked=300, seed=seed)
    env = crash.job_env(stack.env(), names["schema"], names["prefix"], page_size=10)
    lines: list[str] = []

    problems = crash.crash_rounds(env, pg, minio_client, files, kills=4, mark_per_round=600,
                                  max_delay=1.2, rng=random.Random(seed), say=lines.append)

    print(f"seed {seed}", *lines, sep="\n")
    assert problems == [], (seed, lines, problems[:10])
