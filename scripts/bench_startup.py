#!/usr/bin/env python3
"""Cold start: `novajobs --help` vs `python -c "import click"` (goal: <= 2x).

cron starts novajobs every minute, so the CLI must not pay for drivers it does not use.

    .venv/bin/python scripts/bench_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from novajobs_dev.bench import parse_args


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parse_args(parser, tiny={"runs": 1})
    py = sys.executable
    cases = {
        "python -c 'import click' (baseline)": [py, "-c", "import click"],
        "novajobs --help": [py, "-m", "novajobs", "--help"],
        "novajobs refresh-trending --help": [py, "-m", "novajobs", "refresh-trending", "--help"],
    }
    results = {name: median_seconds(argv, args.runs) for name, argv in cases.items()}
    base = results["python -c 'import click' (baseline)"]
    for name, seconds in results.items():
        print(f"{name:40s} {seconds * 1000:7.1f} ms   {seconds / base:4.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
