"""Every benchmark and crash script in scripts/ still runs: each in its ``--tiny`` mode
(toy sizes, a stack of its own), as a user would start it. Their numbers are not checked
here (no timing assertions in tests); the scripts' own checks are: a wrong row count, a
lost file or entry makes a script exit non-zero."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from support import SCRIPTS, run_script

MEASURED = sorted(p.name for p in [*SCRIPTS.glob("bench_*.py"), *SCRIPTS.glob("crash_*.py"),
                                    SCRIPTS / "faults.py"])


@pytest.fixture(scope="module")
def tiny_runs() -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """All scripts at once, a few at a time: they mostly wait for their servers to start
    and stop, so this takes a fraction of running them one after another."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {script: pool.submit(run_script, script, "--tiny") for script in MEASURED}


@pytest.mark.xdist_group("tiny-scripts")  # one worker runs the pool below, not each
@pytest.mark.parametrize("script", MEASURED)
def test_the_script_runs_in_its_tiny_mode(script, tiny_runs):
    done = tiny_runs[script].result()
    assert done.returncode == 0, f"{script} --tiny:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_the_entry_points_the_docs_name_run():
    for script in ("stack.py", "demo_data.py", "topology.py"):
        done = run_script(script, "--help", timeout=60)
        assert done.returncode == 0 and "usage:" in done.stdout, (script, done.stderr)
