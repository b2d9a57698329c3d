#!/usr/bin/env python3
"""The fault matrix: every job x every store it uses x {refused at start, black-holed at
start, killed mid-run}, at default settings, against real servers of its own.

    python scripts/faults.py                      # everything (~110 cells), stack of its own
    python scripts/faults.py --job daily-stats    # one job's rows
    python scripts/faults.py --tiny               # 4 cells (tests/test_scripts.py runs it)

Prints one table: exit code, seconds to exit (from the start; for "killed" from the
moment the store died), anything half-written (found in the stores afterwards), the
re-run's exit code once the store is back and whether it converged; then every cell
that breaks the contract (a documented code within seconds, nothing half-written, a
re-run that converges). Exits 1 if any does. The cells are novajobs_dev/faultmatrix.py;
docs/faults.md keeps the latest full output.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from novajobs_dev.bench import parse_args
from novajobs_dev.faultmatrix import STORES, TINY, Row, cells, run_cell, table
from novajobs_dev.stack import temporary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", action="append", choices=sorted(STORES),
                        help="only this job (repeatable)")
    parser.add_argument("--workers", type=int, default=3, help="cells at once")
    args = parse_args(parser, tiny={"workers": 2})
    todo = TINY if args.tiny else cells(args.job)
    stores = {store for _, store, _ in todo} | {"redis"}
    services = tuple(s for s in ("redis", "postgres", "s3", "neo4j", "es") if s in stores
                     or (s == "postgres" and stores & {"s3", "neo4j"}))
    started = time.monotonic()
    with temporary(services) as stack, ThreadPoolExecutor(args.workers) as pool:
        env = stack.env()

        def one(numbered: tuple[int, tuple[str, str, str]]) -> Row:
            row = run_cell(env, numbered[0], *numbered[1])
            print(f"# {row.job} / {row.store} / {row.fault}: exit {row.code} in "
                  f"{row.seconds:.1f} s", file=sys.stderr, flush=True)
            return row

        rows = list(pool.map(one, enumerate(todo)))
    print(table(rows))
    broken = [(row, problem) for row in rows for problem in row.problems()]
    print(f"\n{len(rows)} cells in {time.monotonic() - started:.0f} s; "
          f"{len({id(r) for r, _ in broken})} break the contract")
    for row, problem in broken:
        print(f"- {row.job} / {row.store} / {row.fault}: {problem}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
