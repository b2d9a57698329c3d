"""cron without silent failures: novajobs' own log file, the crontab that uses it, and
an alert for a job that never reported."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from support import promtool_test

from novajobs import deploy
from novajobs.output import setup_logging
from novajobs.registry import JOBS
from novajobs.runner import run_job

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_crontab_lines_run_as_cron_would(redis_server, stack, names):
    """scripts/cron_check.py --tiny: the lines through /bin/sh with only cron's environment,
    a log directory that does not exist yet, and one log path that cannot exist."""
    import cron_check  # scripts/cron_check.py: scripts/ is on pytest's pythonpath

    assert cron_check.check(stack.env()["REDIS_URL"], names["prefix"], daemon=False) == []


def test_every_crontab_line_logs_through_novajobs_not_a_shell_redirect():
    lines = [x for x in (ROOT / deploy.CRONTAB).read_text().splitlines()
             if x and not x.startswith("#") and "=" not in x.split()[0]]
    assert len(lines) == len(JOBS)
    for spec, line in zip(JOBS, lines, strict=True):
        assert line.endswith(f" --log-file /var/log/novajobs/{spec.name}.log"), line
        assert ">" not in line


def test_the_log_file_is_reopened_after_logrotate_moves_it(redis_server, settings, tmp_path):
    path = tmp_path / "new" / "dir" / "clean-token-blacklist.log"
    setup_logging("json", "info", str(path))
    try:
        first = run_job("clean-token-blacklist", settings)
        path.rename(path.with_suffix(".log.1"))  # logrotate without copytruncate
        second = run_job("clean-token-blacklist", settings)
    finally:
        setup_logging("json", "info")

    def run_ids(p: Path) -> set[str]:
        return {json.loads(line)["run_id"] for line in p.read_text().splitlines()}

    assert run_ids(path.with_suffix(".log.1")) == {first.run_id}
    assert run_ids(path) == {second.run_id}


def test_a_log_file_that_cannot_be_opened_is_reported_and_the_job_still_runs(cli, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    target = blocked / "logs" / "job.log"

    done = cli("clean-token-blacklist", "--log-file", str(target))

    assert done.returncode == 0
    first, *rest = done.stderr.splitlines()
    assert first == (f"novajobs: cannot write the log file {target}: Not a directory; "
                     "logging to stderr")
    assert json.loads(rest[-1])["outcome"] == "nothing_to_do"  # the log went to stderr
    status = next(s for s in json.loads(cli("status", "--json").stdout)
                  if s["unit"] == "clean-token-blacklist")
    assert status["warning"] == first.removeprefix("novajobs: ")
    row = next(x for x in cli("status").stdout.splitlines() if x.startswith("clean-token"))
    assert row.endswith(" warning: cannot wri…")


def test_the_alert_rules_catch_a_job_that_never_reported(tmp_path):
    rules = yaml.safe_load((ROOT / deploy.RULES).read_text())
    never = {r["labels"]["job"]: r for g in rules["groups"] for r in g["rules"]
             if r["alert"] == "NovajobsJobNeverReported"}
    assert sorted(never) == sorted(spec.name for spec in JOBS)
    assert never["refresh-trending"]["for"] == "2m"  # twice its every-minute schedule
    series = [
        ('novajobs_last_run_timestamp_seconds{job="refresh-trending"}',
         "_ _ _ _ 240 240 240"),  # reports from minute 4 on
        *((f'novajobs_last_run_timestamp_seconds{{job="{s.name}"}}', "0x6")
          for s in JOBS if s.name != "refresh-trending"),
    ]
    promtool_test(tmp_path, ROOT / deploy.RULES, series, alert_rule_test=[
        {"eval_time": "1m", "alertname": "NovajobsJobNeverReported", "exp_alerts": []},
        {"eval_time": "3m", "alertname": "NovajobsJobNeverReported",
         "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "refresh-trending"},
                         "exp_annotations": never["refresh-trending"]["annotations"]}]},
        {"eval_time": "5m", "alertname": "NovajobsJobNeverReported", "exp_alerts": []},
    ])
