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

The rounds are novajobs_dev/gc_crash.py; tests/test_gc_crash.py runs a few of them against
the test stack, and `--tiny` runs one kill at toy sizes (tests/test_scripts.py).
"""

from __future__ import annotations

import argparse
import random
import sys

from novajobs_dev.bench import parse_args
from novajobs_dev.gc_crash import Files, crash_rounds, job_env
from novajobs_dev.kill import chosen_seed, report
from novajobs_dev.stack import minio_client, pg_schema, temporary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--live", type=int, default=20_000)
    parser.add_argument("--marked", type=int, default=3_000)
    parser.add_argument("--mark-per-round", type=int, default=2_500)
    parser.add_argument("--page-size", type=int, default=25)
    parser.add_argument("--max-delay", type=float, default=1.6, help="kill within this many s")
    parser.add_argument("--seed", type=int, default=None)
    args = parse_args(parser, tiny={"kills": 1, "live": 200, "marked": 40, "mark_per_round": 60,
                                    "page_size": 10, "max_delay": 1.0})
    seed = chosen_seed(args.seed)

    with temporary(("redis", "postgres", "s3")) as stack:
        stack_env = stack.env()
        pg = pg_schema(stack_env, "crash")
        minio = minio_client(stack_env)
        files = Files.load(pg, minio, "crash-files", live=args.live, marked=args.marked,
                           seed=seed)
        env = job_env(stack_env, "crash", "crash:", args.page_size)
        problems = crash_rounds(env, pg, minio, files, kills=args.kills,
                                mark_per_round=args.mark_per_round, max_delay=args.max_delay,
                                rng=random.Random(seed),
                                say=lambda line: print(line, flush=True))
        pg.close()
    return report(problems, args.kills)


if __name__ == "__main__":
    sys.exit(main())
