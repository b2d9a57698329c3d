"""Kill -9 a novajobs run once it is working (the archive jobs' crash rounds)."""

from __future__ import annotations

import random
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kill_after(argv: list[str], env: dict[str, str], delay: float) -> int | None:
    """Start the job and SIGKILL it ``delay`` s after it logged "run started" (start-up
    time on a loaded machine varies too much to aim from the process start). None if
    killed, else its exit code."""
    with subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as proc:
        started = threading.Event()

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # drained to the end, so the pipe never blocks the job
                if b'"run started"' in line:
                    started.set()

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        while not started.wait(0.05) and proc.poll() is None:
            pass
        try:
            return proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler, no finally, no rollback, no lock released
            proc.wait()
            return None
        finally:
            reader.join(timeout=5)


def chosen_seed(seed: int | None) -> int:
    """The crash rounds' random seed: ``--seed`` or a new one, printed first so that a
    failing run can be repeated."""
    chosen = seed if seed is not None else random.randrange(1 << 30)
    print(f"seed {chosen}", flush=True)
    return chosen


def report(problems: list[str], kills: int) -> int:
    """Prints the problems the rounds found (the first 50) and a verdict; the exit code."""
    for problem in problems[:50]:
        print("PROBLEM", problem)
    print(f"{kills} kills: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0
