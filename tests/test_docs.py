"""The README documents what the code has: every job, every setting, every exit code."""

from __future__ import annotations

import re
from pathlib import Path

from novajobs.errors import ExitCode, Outcome
from novajobs.registry import JOBS
from novajobs.settings import setting_names

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_job_is_documented():
    missing = [spec.name for spec in JOBS if f"### {spec.name}" not in README]
    assert missing == []


def test_every_setting_is_in_the_settings_table():
    missing = [name for name in setting_names() if f"| `{name}` |" not in README]
    assert missing == []


def test_the_exit_code_table_matches_the_code():
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|", README, flags=re.M))
    assert sorted(int(code) for code in rows) == sorted(int(c) for c in ExitCode)
    for outcome in Outcome:
        if outcome is Outcome.RUNNING:
            continue
        assert f"`{outcome}`" in rows[str(int(outcome.exit_code))], outcome


def test_the_settings_table_is_generated_from_the_code():
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "readme_settings.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
