"""The README's exit-code table is the contract Kubernetes acts on: the podFailurePolicy
rendered by render-deploy follows its last column (FailJob; FailIndex for an Indexed
Job; or counted towards backoffLimit) and its "a retry can help" column (a "no" is
never retried)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from novajobs import deploy
from novajobs.settings import load_settings

README = Path(__file__).resolve().parent.parent / "README.md"
COUNTED = "count (backoffLimit)"


def exit_table() -> dict[int, dict[str, str]]:
    section = README.read_text().split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].isdigit():
            code, outcomes, cause, retry, policy = cells
            rows[int(code)] = {"outcomes": outcomes, "cause": cause, "retry": retry,
                               "policy": policy}
    return rows


def rendered_jobs() -> dict[str, dict[str, Any]]:
    files = deploy.render_all(load_settings(environ={}))
    return {path: yaml.safe_load(text)["spec"]["jobTemplate"]["spec"]
            for path, text in files.items() if path.startswith(deploy.K8S_DIR + "/")
            and path.endswith(".yaml") and "CronJob" in text}


def actions_by_code(job: dict[str, Any]) -> dict[int, str]:
    return {code: rule["action"] for rule in job["podFailurePolicy"]["rules"]
            for code in rule.get("onExitCodes", {}).get("values", [])}


def test_the_pod_failure_policy_follows_the_table():
    table = exit_table()  # its codes and outcomes: tests/test_docs.py
    assert all(row["cause"] and row["retry"] and row["policy"] for row in table.values())
    jobs = rendered_jobs()
    assert any(job.get("completionMode") == "Indexed" for job in jobs.values())
    for path, job in jobs.items():
        actions = actions_by_code(job)
        indexed = job.get("completionMode") == "Indexed"
        assert set(actions) <= set(table), path  # no rule for a code the table lacks
        for code, row in table.items():
            policy = row["policy"]
            expected = {
                "FailJob": "FailJob",
                "FailJob (Indexed Job: FailIndex)": "FailIndex" if indexed else "FailJob",
            }.get(policy)
            assert policy in ("—", COUNTED) or expected is not None, (code, policy)
            assert actions.get(code) == expected, (path, code, policy)
            assert (code in actions) == row["retry"].startswith("no"), (code, row["retry"])
