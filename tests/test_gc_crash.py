"""A small version of scripts/crash_gc_files.py: kill -9 gc-files at random points, check
that nothing kept was lost after each kill, and that one more run converges."""

from __future__ import annotations

import random

from novajobs_dev.gc_crash import Files, crash_rounds, job_env


def test_kill_9_at_random_points_then_a_rerun_converges(pg, pg_tables, minio_client, names,
                                                         redis_server, stack):
    pg_tables("file_metadata")
    seed = random.randrange(1 << 30)
    files = Files.load(pg, minio_client, names["bucket"], live=1500, marked=300, seed=seed)
    env = job_env(stack.env(), names["schema"], names["prefix"], page_size=10)
    lines: list[str] = []

    problems = crash_rounds(env, pg, minio_client, files, kills=4, mark_per_round=600,
                            max_delay=1.2, rng=random.Random(seed), say=lines.append)

    print(f"seed {seed}", *lines, sep="\n")
    assert problems == [], (seed, lines, problems[:10])
