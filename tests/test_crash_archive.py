"""Small versions of scripts/crash_archive_*.py: kill -9 the archive jobs at random
points, check after each kill that no row was lost or archived twice, then converge."""

from __future__ import annotations

import random

from novajobs.schema import ensure_tables
from novajobs_dev import audit_crash, partition_crash


def test_archive_audit_logs_killed_at_random_points_loses_and_doubles_nothing(
        pg, minio_client, names, redis_server, stack):
    ensure_tables(pg, ["novajobs_audit_archive"])
    old = audit_crash.load(pg, old=6000, recent=300)
    env = audit_crash.job_env(stack.env(), names["schema"], names["prefix"], names["bucket"],
                              batch_rows=150)
    seed = random.randrange(1 << 30)
    lines: list[str] = []

    problems = audit_crash.crash_rounds(env, pg, minio_client, names["bucket"], old, kills=4,
                                        max_delay=2.0, rng=random.Random(seed),
                                        say=lines.append)

    print(f"seed {seed}", *lines, sep="\n")
    assert problems == [], (seed, lines, problems[:10])


def test_archive_partitions_killed_at_random_points_never_drops_an_unarchived_month(
        pg, minio_client, names, redis_server, stack):
    loaded = partition_crash.load(pg, months=3, rows=2000)
    env = partition_crash.job_env(stack.env(), names["schema"], names["prefix"],
                                  names["bucket"])
    seed = random.randrange(1 << 30)
    lines: list[str] = []

    problems = partition_crash.crash_rounds(env, pg, minio_client, names["bucket"],
                                            names["schema"], loaded, kills=4, max_delay=5.0,
                                            rng=random.Random(seed), say=lines.append)

    print(f"seed {seed}", *lines, sep="\n")
    assert problems == [], (seed, lines, problems[:10])
