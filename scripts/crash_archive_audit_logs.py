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

A run that finishes before its kill (a fast machine) makes the later delays shorter
(within such a run's time); when everything is archived, the old rows are put back and the
archives removed, so all ``--kills`` land on real work; the log says how many did.

The rounds are novajobs_dev/audit_crash.py; tests/test_crash_archive.py runs a few of them
against the test stack, and `--tiny` runs one kill at toy sizes (tests/test_scripts.py).
"""

from __future__ import annotations

import argparse
import random
import sys

from novajobs_dev.audit_crash import crash_rounds, job_env, load
from novajobs_dev.bench import parse_args
from novajobs_dev.kill import chosen_seed, report
from novajobs_dev.stack import minio_client, pg_schema, temporary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--rows", type=int, default=200_000, help="old rows to archive")
    parser.add_argument("--batch-rows", type=int, default=2_000)
    parser.add_argument("--max-delay", type=float, default=2.5, help="kill within this many s")
    parser.add_argument("--seed", type=int, default=None)
    args = parse_args(parser, tiny={"kills": 1, "rows": 3000, "batch_rows": 200,
                                    "max_delay": 1.5})
    seed = chosen_seed(args.seed)

    from novajobs.schema import ensure_tables

    with temporary(("redis", "postgres", "s3")) as stack:
        stack_env = stack.env()
        pg = pg_schema(stack_env, "crash")
        ensure_tables(pg, ["novajobs_audit_archive"])
        minio = minio_client(stack_env)
        minio.make_bucket("crash-archive")
        old = load(pg, old=args.rows, recent=args.rows // 10)
        env = job_env(stack_env, "crash", "crash:", "crash-archive", args.batch_rows)
        problems = crash_rounds(env, pg, minio, "crash-archive", old, kills=args.kills,
                                max_delay=args.max_delay, rng=random.Random(seed),
                                say=lambda line: print(line, flush=True))
        pg.close()
    return report(problems, args.kills)


if __name__ == "__main__":
    sys.exit(main())
