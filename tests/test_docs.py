"""The docs document what the code has: every job, every setting, every exit code.

README.md is the quick start and overview; the reference lives in docs/ (jobs.md,
configuration.md, operations.md, development.md) and the README links into it.
"""

from __future__ import annotations

import re
from pathlib import Path

from support import run_script

from novajobs.errors import ExitCode, Outcome
from novajobs.registry import JOBS
from novajobs.settings import setting_names

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
JOBS_DOC = (ROOT / "docs" / "jobs.md").read_text()
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_job_has_a_section_the_readme_links_to():
    undocumented = [spec.name for spec in JOBS if f"\n## {spec.name}\n" not in JOBS_DOC]
    unlinked = [spec.name for spec in JOBS if f"(docs/jobs.md#{spec.name})" not in README]
    assert (undocumented, unlinked) == ([], [])


def test_every_setting_is_in_the_settings_table():
    missing = [name for name in setting_names() if f"| `{name}` |" not in CONFIG_DOC]
    assert missing == []


def test_the_exit_code_table_matches_the_code():
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|", README, flags=re.M))
    assert sorted(int(code) for code in rows) == sorted(int(c) for c in ExitCode)
    for outcome in Outcome:
        if outcome is Outcome.RUNNING:
            continue
        assert f"`{outcome}`" in rows[str(int(outcome.exit_code))], outcome


def test_the_settings_table_is_generated_from_the_code():
    result = run_script("readme_settings.py", "--check")
    assert result.returncode == 0, result.stderr


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_between_the_docs_reaches_a_file_and_heading():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # an outside URL
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists() or (anchor and anchor not in _anchors(file.read_text())):
                broken.append(f"{doc.name}: {target}")
    assert broken == []
