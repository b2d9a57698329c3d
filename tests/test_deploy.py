"""Deployment files: drift against the registry, Kubernetes schema, promtool, and the
rendered command lines actually run."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import SCHEMA_VERSIONS, expr_samples, promtool, promtool_test

from novajobs import deploy, yamltext
from novajobs.errors import ConfigError, ExitCode
from novajobs.lock import lock_key
from novajobs.records import history_key
from novajobs.registry import JOBS, JobSpec
from novajobs.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def defaults(**overrides: Any) -> Any:
    return load_settings(environ={}, overrides=overrides)


def manifests(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    paths = sorted((root / "k8s-cronjobs").glob("*.yaml"))
    return {p.stem: yaml.safe_load(p.read_text()) for p in paths}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def sample_job(**changes: Any) -> JobSpec:
    base = JobSpec(name="sample-job", summary="A sample.", description="", example="",
                   module="novajobs.jobs.refresh_trending", schedule="0 3 * * *",
                   timeout_sec=600)
    return dataclasses.replace(base, **changes)


def test_checked_in_files_are_a_fresh_render_of_the_registry():
    files = deploy.render_all(defaults())

    differing = deploy.drift(ROOT, files)

    assert differing == [], (
        f"out of date: {differing}; re-render with `python -m novajobs render-deploy`")
    assert sorted(manifests()) == sorted(spec.name for spec in JOBS)


def test_every_job_has_a_crontab_line_that_cron_can_read():
    from cronsim import CronSim

    lines = [ln for ln in (ROOT / "crontab.example").read_text().splitlines()
             if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert len(lines) == len(JOBS)
    for spec, line in zip(JOBS, lines, strict=True):
        fields = line.split()
        assert " ".join(fields[:5]) == spec.schedule
        CronSim(" ".join(fields[:5]), __import__("datetime").datetime(2025, 1, 1))
        assert fields[5:10] == ["novajobs", spec.name, "--skip-ok", "--log-format", "json"]
        assert fields[-2:] == ["--log-file", f"/var/log/novajobs/{spec.name}.log"]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_manifests_pass_strict_kubernetes_schema_validation(version, tmp_path):
    # The checked-in files, and a render with every optional shape switched on/off.
    odd = defaults(k8s_pods=("refresh-suggestions=3", "drain-stream=1"),
                   k8s_cpu_limit="", timezone="Europe/Berlin", k8s_image="reg.example/nj:1")
    deploy.write_files(tmp_path, deploy.render_all(odd))
    files = [*sorted((ROOT / "k8s-cronjobs").glob("*.yaml")),
             *sorted((tmp_path / "k8s-cronjobs").glob("*.yaml"))]
    tool = Path(sys.executable).parent / "kubernetes-validate"

    done = subprocess.run([str(tool), "--strict", "--quiet", "-k", version, *map(str, files)],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr


def test_a_cronjob_follows_the_run_contract():
    for name, doc in manifests().items():
        spec = next(s for s in JOBS if s.name == name)
        cron, job, pod = doc["spec"], doc["spec"]["jobTemplate"]["spec"], pod_spec(doc)
        container = pod["containers"][0]
        assert cron["concurrencyPolicy"] == "Forbid"
        assert cron["schedule"] == spec.schedule and cron["timeZone"] == "UTC"
        assert 30 <= cron["startingDeadlineSeconds"] <= 3600
        # The runner's own timeout (exit 124, lock released, run recorded) comes first.
        assert job["activeDeadlineSeconds"] > spec.timeout_sec + min(spec.timeout_sec * 0.1, 30)
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
        assert container["resources"]["limits"]["memory"] == "512Mi"
        assert {"secretRef": {"name": "novajobs"}} in container["envFrom"]
        assert container["args"][:4] == [name, "--skip-ok", "--log-format", "json"]
        rules = job["podFailurePolicy"]["rules"]
        assert rules[0] == {"action": "FailJob", "onExitCodes": {
            "containerName": "novajobs", "operator": "In", "values": [2, 78]}}


def test_retries_only_when_the_next_scheduled_run_is_far_away():
    docs = manifests()
    every_minute = docs["refresh-trending"]["spec"]["jobTemplate"]["spec"]
    assert every_minute["backoffLimit"] == 0  # the next run, a minute later, is the retry
    daily = deploy.plan(sample_job(), defaults())
    assert daily.retries == 2
    assert daily.active_deadline_sec == 3 * daily.try_sec


def test_a_shardable_job_is_an_indexed_job_running_shard_auto():
    settings = defaults()
    sharded = sample_job(name="sharded-sample", shardable=True)
    doc = yaml.safe_load(deploy.render_cronjob(deploy.plan(sharded, settings), settings))
    job = doc["spec"]["jobTemplate"]["spec"]
    container = pod_spec(doc)["containers"][0]

    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 4
    assert job["backoffLimitPerIndex"] == 2 and "backoffLimit" not in job
    assert container["args"][-2:] == ["--shard", "auto"]
    assert {"name": "NOVAJOBS_SHARD_COUNT", "value": "4"} in container["env"]
    assert job["podFailurePolicy"]["rules"][1]["action"] == "FailIndex"
    # refresh-suggestions is shardable too, but one run per interval covers the users
    # (oldest caches first): a plain CronJob until k8s_pods says otherwise.
    suggestions = manifests()["refresh-suggestions"]
    assert "completionMode" not in suggestions["spec"]["jobTemplate"]["spec"]
    assert "--shard" not in pod_spec(suggestions)["containers"][0]["args"]


def test_gc_files_runs_as_an_indexed_job():
    gc = manifests()["gc-files"]
    job = gc["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 4
    assert "backoffLimitPerIndex" in job
    assert pod_spec(gc)["containers"][0]["args"][-2:] == ["--shard", "auto"]


def test_several_consumers_of_one_group_run_as_parallel_pods():
    drain = manifests()["drain-stream"]
    job = drain["spec"]["jobTemplate"]["spec"]
    assert job["completions"] == job["parallelism"] == 2
    assert "completionMode" not in job  # each pod is a consumer (its pod name), not a shard
    assert "--shard" not in pod_spec(drain)["containers"][0]["args"]


def test_any_shardable_job_gets_the_default_shard_count_or_its_own():
    settings = defaults(k8s_default_shards=6)
    sharded = sample_job(name="sharded-sample", shardable=True)
    doc = yaml.safe_load(deploy.render_cronjob(deploy.plan(sharded, settings), settings))
    assert doc["spec"]["jobTemplate"]["spec"]["completions"] == 6

    with pytest.raises(ConfigError, match=r"refresh-trending.*cannot run as several pods"):
        deploy.render_all(defaults(k8s_pods=("refresh-trending=2",)))


def test_the_rendered_shard_command_runs_the_right_shard(cli, redis_client, names):
    """The Indexed Job's args and env, run as Kubernetes would for index 1 (0-based)."""
    settings = defaults(k8s_pods=("refresh-suggestions=3",))
    doc = yaml.safe_load(deploy.render_all(settings)["k8s-cronjobs/refresh-suggestions.yaml"])
    container = pod_spec(doc)["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]} | {"JOB_COMPLETION_INDEX": "1"}
    # Another run holds shard 2-of-3: this one must skip it (and touch no ClickHouse).
    redis_client.set(lock_key(names["prefix"], "refresh-suggestions", "2-of-3"), "x", px=60_000)

    done = cli(*container["args"], extra_env=env)

    assert done.returncode == 0, done.stderr  # --skip-ok
    history = redis_client.lrange(history_key(names["prefix"], "refresh-suggestions:2-of-3"), 0, -1)
    assert len(history) == 1 and b'"outcome": "skipped"' in history[0]


def test_configuration_errors_exit_with_a_code_the_policy_fails_at_once(cli):
    args = pod_spec(manifests()["refresh-trending"])["containers"][0]["args"]

    done = cli(*args, extra_env={"REDIS_URL": "ftp://nowhere"})

    assert done.returncode == ExitCode.CONFIG == 78
    assert "redis_url" in done.stderr


def test_alert_rules_pass_promtool_check():
    done = promtool("check", "rules", str(ROOT / deploy.RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_fire_on_the_series_novajobs_pushes(tmp_path):
    rules = yaml.safe_load((ROOT / deploy.RULES).read_text())
    exprs = {r["alert"] + r["labels"].get("job", ""): r["expr"]
             for g in rules["groups"] for r in g["rules"]}
    series = [
        ('novajobs_last_success_timestamp_seconds{job="refresh-trending"}', "0x10"),
        ('novajobs_last_run_outcome{job="gc-files",shard="2-of-4",outcome="timeout"}', "1x10"),
        ('novajobs_last_run_outcome{job="daily-stats",outcome="success"}', "1x10"),
        ('novajobs_last_run_outcome{job="check-message-gaps",outcome="problem_found"}', "1x10"),
        ('novajobs_skipped_in_a_row{job="drain-stream"}', "1 2 3 3"),
        ('novajobs_missed_periods{job="daily-stats"}', "0 3 0"),
        ('novajobs_last_run_counter{job="gc-orphans",shard="1-of-4",'
         'counter="rows_without_object"}', "0 5"),
        ('novajobs_last_run_counter{job="archive-partitions",'
         'counter="default_rows_not_archived"}', "0 12"),
    ]
    cases = [
        # last success at 0 s, every minute: 2 min of silence is fine, 3 min is stale
        ("NovajobsJobStalerefresh-trending", "2m", []),
        ("NovajobsJobStalerefresh-trending", "3m", [('{job="refresh-trending"}', 180)]),
        ("NovajobsJobFailed", "1m",
         [('{__name__="novajobs_last_run_outcome",job="gc-files",outcome="timeout",'
           'shard="2-of-4"}', 1)]),
        ("NovajobsCheckFoundProblem", "1m",
         [('{__name__="novajobs_last_run_outcome",job="check-message-gaps",'
           'outcome="problem_found"}', 1)]),
        ("NovajobsJobKeepsBeingSkipped", "1m", []),
        ("NovajobsJobKeepsBeingSkipped", "2m",
         [('{__name__="novajobs_skipped_in_a_row",job="drain-stream"}', 3)]),
        ("NovajobsMissedPeriods", "0m", []),
        ("NovajobsMissedPeriods", "1m",
         [('{__name__="novajobs_missed_periods",job="daily-stats"}', 3)]),
        ("NovajobsMissedPeriods", "2m", []),  # the next run found none
        ("NovajobsRowsWithoutObject", "0m", []),
        ("NovajobsRowsWithoutObject", "1m",
         [('{__name__="novajobs_last_run_counter",job="gc-orphans",shard="1-of-4",'
           'counter="rows_without_object"}', 5)]),
        ("NovajobsRowsNeverArchived", "0m", []),
        ("NovajobsRowsNeverArchived", "1m",
         [('{__name__="novajobs_last_run_counter",job="archive-partitions",'
           'counter="default_rows_not_archived"}', 12)]),
    ]
    promtool_test(tmp_path, ROOT / deploy.RULES, series,
                  promql_expr_test=expr_samples(exprs, cases))


def test_render_deploy_command_writes_checks_and_removes_stale_files(cli, tmp_path):
    assert cli("render-deploy", "--out", str(tmp_path)).returncode == 0
    (tmp_path / "k8s-cronjobs" / "refresh-trending.yaml").write_text("edited by hand\n")
    stale = tmp_path / "k8s-cronjobs" / "renamed-job.yaml"
    stale.write_text(f"# {deploy.MARK}.\nkind: CronJob\n")
    mine = tmp_path / "k8s-cronjobs" / "my-own.yaml"  # not generated: left alone
    mine.write_text("kind: ConfigMap\n")

    check = cli("render-deploy", "--out", str(tmp_path), "--check")

    assert check.returncode == ExitCode.PROBLEM_FOUND
    assert "out of date: k8s-cronjobs/refresh-trending.yaml" in check.stdout
    assert "out of date: k8s-cronjobs/renamed-job.yaml" in check.stdout
    fix = cli("render-deploy", "--out", str(tmp_path))
    assert "removed k8s-cronjobs/renamed-job.yaml" in fix.stdout
    assert not stale.exists() and mine.exists()
    assert cli("render-deploy", "--out", str(tmp_path), "--check").returncode == 0


@pytest.mark.parametrize("text", [
    "on", "No", "null", "~", "1:20", "0x1f", "1e3", "100m", ".5", "-x", "*/5 * * * *", "a: b",
    "#x", "it's", "multi\nline", "", " padded ", "ünïcode", "tab\there", "'", '"', "@x", "- 1",
])
def test_yaml_writer_strings_read_back_as_the_same_strings(text):
    doc = {"k": text, "list": [text, {"nested": [text]}], "n": 3, "b": True, "none": None,
           "empty": [], "obj": {}}
    assert yaml.safe_load(yamltext.dump(doc)) == doc


def test_the_image_is_multi_stage_non_root_without_compilers():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) == 2 and stages[0].split()[2] == "build"
    final = stages[-1]
    assert re.search(r"^USER 1000:1000$", final, re.M)
    assert "useradd --uid 1000" in final
    assert "COPY --from=build /opt/novajobs /opt/novajobs" in final
    assert not re.search(r"gcc|g\+\+|build-essential|clang|apt-get install", final)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!novajobs/"]

