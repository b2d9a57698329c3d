"""What the benchmark and crash scripts share: interleaved timing, the --tiny mode."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def interleaved(a: Callable[[], object], b: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median seconds of a() and b(), alternating so load on the machine hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in ((a, times[0]), (b, times[1])):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def parse_args(parser: argparse.ArgumentParser, tiny: dict[str, Any],
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The script's arguments, plus ``--tiny``: the defaults become ``tiny``'s, a run of
    seconds that proves the script still works end to end (tests/test_scripts.py runs every
    script so); its numbers mean nothing. Flags given explicitly still win."""
    parser.add_argument("--tiny", action="store_true",
                        help="toy sizes: a run of seconds that checks the script works")
    args = list(sys.argv[1:] if argv is None else argv)
    unknown = set(tiny) - set(vars(parser.parse_args([])))
    if unknown:
        raise ValueError(f"tiny sizes for options the script lacks: {sorted(unknown)}")
    if "--tiny" in args:
        parser.set_defaults(**tiny)
    return parser.parse_args(args)


def run_measured(args: list[str], env: dict[str, str]) -> tuple[bytes, float, int]:
    """Run `novajobs ARGS`; its stdout, wall seconds and peak RSS (KiB). The peak is the
    child's own VmHWM, polled: a child's rusage maxrss would include this benchmark
    process's RSS, inherited at fork and kept across exec."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "novajobs", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak_kib = 0
    while proc.poll() is None:  # stdout is small (one JSON record): no pipe deadlock
        peak_kib = max(peak_kib, vm_hwm_kib(proc.pid))
        time.sleep(0.02)
    out = proc.stdout.read() if proc.stdout else b""
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"novajobs {args} exited {proc.returncode}: {out[-500:]!r}")
    return out, wall, peak_kib


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass  # exited between poll() and open()
    return 0
