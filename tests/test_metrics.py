"""Per-run metrics in a real Prometheus Pushgateway (Debian prometheus-pushgateway)."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import pytest
from support import probe_job

from novajobs.context import JobContext, Result, Shard
from novajobs.errors import JobFailed, Outcome
from novajobs.lock import lock_key
from novajobs.metrics import group_path, render
from novajobs.registry import JobSpec
from novajobs.runner import RunOptions, run_job
from novajobs_dev.netfaults import refused_port

BEHAVIOUR: dict[str, Any] = {}  # what the sample job does, per test


def run(ctx: JobContext) -> Result:
    """A sample job: counts what the test asks, then succeeds or fails as asked."""
    for name, n in BEHAVIOUR.get("counters", {}).items():
        ctx.count(name, n)
    if BEHAVIOUR.get("fail"):
        raise JobFailed("too many items failed")
    return Result(Outcome.DRY_RUN if ctx.dry_run else Outcome.SUCCESS, "done")


@pytest.fixture
def job(redis_server: None) -> JobSpec:
    BEHAVIOUR.clear()
    return probe_job(f"t-metrics-{uuid.uuid4().hex[:8]}", run, shardable=True)


def group(gateway: str, **labels: str) -> dict[str, Any]:
    """The metrics of one grouping key, as {metric: {label-tuple or "": value}}."""
    with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=5) as response:
        data = json.load(response)["data"]
    found = [g for g in data if g["labels"] == labels]
    assert len(found) == 1, f"no group {labels}"
    out: dict[str, Any] = {}
    for name, family in found[0].items():
        if not isinstance(family, dict) or "metrics" not in family:
            continue
        values = {}
        for m in family["metrics"]:
            extra = {k: v for k, v in m["labels"].items() if k not in (*labels, "instance")}
            values[tuple(sorted(extra.items())) or ""] = float(m["value"])
        out[name] = values
    return out


def test_a_success_pushes_outcome_duration_counters_and_last_success(job, pushgateway,
                                                                   make_settings):
    BEHAVIOUR["counters"] = {"files_deleted": 3, "bytes_freed": 1536}
    before = time.time()

    rec = run_job(job, make_settings(pushgateway_url=pushgateway))

    assert rec.outcome is Outcome.SUCCESS
    m = group(pushgateway, job=job.name)
    assert m["novajobs_last_run_outcome"] == {(("outcome", "success"),): 1}
    assert m["novajobs_last_run_exit_code"] == {"": 0}
    assert m["novajobs_last_run_duration_seconds"] == {"": rec.duration_ms / 1000}
    assert m["novajobs_last_run_counter"] == {
        (("counter", "bytes_freed"),): 1536, (("counter", "files_deleted"),): 3}
    assert m["novajobs_skipped_in_a_row"] == {"": 0}
    success = m["novajobs_last_success_timestamp_seconds"][""]
    assert before <= success <= time.time()
    assert m["novajobs_last_run_timestamp_seconds"] == {"": success}
    assert "novajobs_last_skip_timestamp_seconds" not in m


def test_a_failure_keeps_the_last_success_and_replaces_the_rest(job, pushgateway,
                                                              make_settings):
    settings = make_settings(pushgateway_url=pushgateway)
    BEHAVIOUR["counters"] = {"files_deleted": 3, "bytes_freed": 1536}
    assert run_job(job, settings).outcome is Outcome.SUCCESS
    success = group(pushgateway, job=job.name)["novajobs_last_success_timestamp_seconds"]
    BEHAVIOUR.update(fail=True, counters={"files_failed": 101})

    rec = run_job(job, settings)

    assert rec.outcome is Outcome.FAILED
    m = group(pushgateway, job=job.name)
    assert m["novajobs_last_run_outcome"] == {(("outcome", "failed"),): 1}
    assert m["novajobs_last_run_exit_code"] == {"": 1}
    assert m["novajobs_last_run_counter"] == {(("counter", "files_failed"),): 101}
    assert m["novajobs_last_success_timestamp_seconds"] == success  # not moved by a failure
    assert m["novajobs_last_run_timestamp_seconds"][""] > success[""]


def test_skips_are_counted_in_a_row_and_leave_the_last_run_alone(job, pushgateway,
                                                               make_settings, redis_client,
                                                               names):
    settings = make_settings(pushgateway_url=pushgateway)
    assert run_job(job, settings).outcome is Outcome.SUCCESS
    last_run = group(pushgateway, job=job.name)
    redis_client.set(lock_key(names["prefix"], job.name), "held by a stuck run", px=60_000)

    for expected in (1, 2, 3):
        assert run_job(job, settings).outcome is Outcome.SKIPPED
        m = group(pushgateway, job=job.name)
        assert m["novajobs_skipped_in_a_row"] == {"": expected}
    assert time.time() - m["novajobs_last_skip_timestamp_seconds"][""] < 30
    for name in ("novajobs_last_run_outcome", "novajobs_last_run_timestamp_seconds",
                 "novajobs_last_success_timestamp_seconds", "novajobs_last_run_exit_code"):
        assert m[name] == last_run[name], name

    redis_client.delete(lock_key(names["prefix"], job.name))
    assert run_job(job, settings).outcome is Outcome.SUCCESS
    assert group(pushgateway, job=job.name)["novajobs_skipped_in_a_row"] == {"": 0}


def test_a_dry_run_pushes_nothing(job, pushgateway, make_settings):
    settings = make_settings(pushgateway_url=pushgateway)
    BEHAVIOUR["fail"] = True
    assert run_job(job, settings).outcome is Outcome.FAILED
    failed = group(pushgateway, job=job.name)
    BEHAVIOUR.clear()

    assert run_job(job, settings, RunOptions(dry_run=True)).outcome is Outcome.DRY_RUN

    assert group(pushgateway, job=job.name) == failed  # the failure alert stands


def test_a_shard_is_its_own_group(job, pushgateway, make_settings):
    settings = make_settings(pushgateway_url=pushgateway)

    run_job(job, settings, RunOptions(shard=Shard(2, 3)))

    m = group(pushgateway, job=job.name, shard="2-of-3")
    assert m["novajobs_last_run_outcome"] == {(("outcome", "success"),): 1}
    with pytest.raises(AssertionError, match="no group"):
        group(pushgateway, job=job.name)


def test_an_unreachable_pushgateway_never_fails_the_run(job, make_settings, closed_url):
    settings = make_settings(pushgateway_url=closed_url, report_timeout_sec=1)
    started = time.monotonic()

    rec = run_job(job, settings)

    assert rec.outcome is Outcome.SUCCESS
    assert time.monotonic() - started < 5


def test_label_values_and_grouping_keys_survive_a_real_parser(pushgateway):
    """Escaping and the base64 grouping key, checked by the Pushgateway's own parser."""
    odd = 'a "quoted" back\\slash and\nnewline'
    body = render([("novajobs_last_run_counter", "x", [({"counter": odd}, 2.5)]),
                   ("novajobs_last_run_exit_code", "x", [({}, 1e10)])])
    url = pushgateway + group_path("odd/job", "1-of-2")
    request = urllib.request.Request(url, data=body.encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=5):
        pass

    m = group(pushgateway, job="odd/job", shard="1-of-2")
    assert m["novajobs_last_run_counter"] == {(("counter", odd),): 2.5}
    assert m["novajobs_last_run_exit_code"] == {"": 1e10}


def test_cli_run_of_a_real_job_pushes_its_counters(ch, cli, pushgateway, names):
    ch.release()  # the CLI process opens the chdb path itself

    done = cli("refresh-trending", extra_env={"NOVAJOBS_PUSHGATEWAY_URL": pushgateway})

    assert done.returncode == 0, done.stderr
    m = group(pushgateway, job="refresh-trending")
    assert m["novajobs_last_run_counter"] == {(("counter", "keys_written"),): 1,
                                              (("counter", "posts"),): 0}
    assert time.time() - m["novajobs_last_success_timestamp_seconds"][""] < 60


@pytest.fixture
def closed_url() -> str:
    """A loopback URL on which nothing listens."""
    return f"http://127.0.0.1:{refused_port()}"
