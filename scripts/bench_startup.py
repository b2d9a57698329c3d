#!/usr/bin/env python3
"""Cold start: `novajobs --help` vs `python -c "import click"` (goal: <= 2x).

cron starts novajobs every minute, so the CLI must not pay for drivers it does not use,
nor for the web console (imported only by `novajobs console`): the last line is what
`--help` would cost if it imported the console eagerly.

    .venv/bin/python scripts/bench_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from novajobs_dev.bench import parse_args

EAGER_CONSOLE = ("import sys, runpy, novajobs.console.routes; sys.argv = ['novajobs', '--help']; "
                 "runpy.run_module('novajobs', run_name='__main__')")


def median_seconds(cases: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Each case's median, the cases taking turns so load on the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            started = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parse_args(parser, tiny={"runs": 1})
    py = sys.executable
    cases = {
        "python -c 'import click' (baseline)": [py, "-c", "import click"],
        "novajobs --help": [py, "-m", "novajobs", "--help"],
        "novajobs refresh-trending --help": [py, "-m", "novajobs", "refresh-trending", "--help"],
        "novajobs console --help": [py, "-m", "novajobs", "console", "--help"],
        "--help, console imported eagerly": [py, "-c", EAGER_CONSOLE],
    }
    results = median_seconds(cases, args.runs)
    base = results["python -c 'import click' (baseline)"]
    for name, seconds in results.items():
        print(f"{name:40s} {seconds * 1000:7.1f} ms   {seconds / base:4.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
