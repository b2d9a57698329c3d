#!/usr/bin/env python3
"""Crash safety of archive-partitions: kill -9 it at random points, then a re-run converges.

    python scripts/crash_archive_partitions.py               # 25 kills, stack of its own
    python scripts/crash_archive_partitions.py --kills 40 --months 12 --rows 200000

Builds ``chat_messages`` with ``--months`` whole old months (plus the current one) and
starts `novajobs archive-partitions` as its own process again and again (a 1 s lock
TTL), SIGKILLing it a random time after it started working: while marking, detaching,
copying, uploading parts, reading back, writing the manifest, dropping. After every kill
it checks what must hold at *any* moment, for every old month: its rows are either in a
table (attached, pending or detached) exactly as loaded, or the table is gone and the
month's manifest names an object holding exactly those rows — never a dropped month
without a verified archive, never a manifest that disagrees with its data. At the end
one uninterrupted run must archive everything (no table, no marker, no unfinished object
left), and restore-partition must bring every month back identical.

A run that finishes before its kill (a fast machine) makes the later delays shorter
(within such a run's time); when everything is archived, the months are loaded again and the
archives removed, so all ``--kills`` land on real work; the log says how many did.

The rounds are novajobs_dev/partition_crash.py; tests/test_crash_archive.py runs a few of
them against the test stack, and `--tiny` runs one kill at toy sizes (tests/test_scripts.py).
"""

from __future__ import annotations

import argparse
import random
import sys

from novajobs_dev.bench import parse_args
from novajobs_dev.kill import chosen_seed, report
from novajobs_dev.partition_crash import crash_rounds, job_env, load
from novajobs_dev.stack import minio_client, pg_schema, temporary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--months", type=int, default=8, help="old months to archive")
    parser.add_argument("--rows", type=int, default=150_000, help="rows per month")
    parser.add_argument("--max-delay", type=float, default=4.0, help="kill within this many s")
    parser.add_argument("--seed", type=int, default=None)
    args = parse_args(parser, tiny={"kills": 1, "months": 2, "rows": 1000, "max_delay": 2.0})
    seed = chosen_seed(args.seed)

    with temporary(("redis", "postgres", "s3")) as stack:
        stack_env = stack.env()
        pg = pg_schema(stack_env, "crash")
        minio = minio_client(stack_env)
        minio.make_bucket("crash-archive")
        loaded = load(pg, months=args.months, rows=args.rows)
        env = job_env(stack_env, "crash", "crash:", "crash-archive")
        problems = crash_rounds(env, pg, minio, "crash-archive", "crash", loaded,
                                kills=args.kills, max_delay=args.max_delay,
                                rng=random.Random(seed),
                                say=lambda line: print(line, flush=True))
        pg.close()
    return report(problems, args.kills)


if __name__ == "__main__":
    sys.exit(main())
