"""A status that can be trusted: stale runs, never-run jobs, one JSON schema, attempts
kept beside the real run, skips counted, an 80-column table."""

from __future__ import annotations

import json
import re
import signal
from typing import Any

import pytest
from support import probe_job, slow_run, wait_for

from novajobs.context import JobContext, Result
from novajobs.errors import UsageError
from novajobs.lock import JobLock, lock_key
from novajobs.records import status_key
from novajobs.registry import JOBS
from novajobs.runner import RunOptions, run_job


def _probe_run(ctx: JobContext, fail_usage: bool = False) -> Result:
    ctx.count("things", 3)
    if fail_usage:
        raise UsageError("--when 'tomorrow-ish': expected a date like 2025-11-24")
    return Result(message="probed 3 things")


SPEC = probe_job("status-probe", _probe_run)

ENTRY_KEYS = {"job", "unit", "shard", "run_id", "host", "pid", "started_at", "ended_at",
              "duration_ms", "outcome", "exit_code", "message", "error", "counters",
              "dry_run", "skips", "lock_key", "warning", "fence"}


def status_of(cli: Any, unit: str, *args: str) -> dict[str, Any]:
    result = cli("status", "--json", *args)
    assert result.returncode == 0, result.stderr
    return next(s for s in json.loads(result.stdout) if s["unit"] == unit)


@pytest.mark.cluster
def test_a_killed_run_shows_as_stale_with_its_last_seen_age(ch, redis_client, env, names, cli):
    # Stale after three silent beats: 1 s beats, which a loaded machine still keeps up
    beat = ("-s", "run_heartbeat_sec=1")
    proc = slow_run(ch, env, 3000, *beat)  # the job's own lock TTL (60 s)
    assert status_of(cli, "refresh-suggestions", *beat)["state"] == "running"

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.communicate()
    wait_for(lambda: status_of(cli, "refresh-suggestions", *beat)["state"] == "stale", 60,
             "the stale state", interval=0.5)
    held = status_of(cli, "refresh-suggestions", *beat)
    redis_client.delete(lock_key(names["prefix"], "refresh-suggestions"))  # its TTL, later
    status = status_of(cli, "refresh-suggestions", *beat)

    assert held["outcome"] == "running" and held["state"] == "stale"
    # its own lock, not yet expired (how much of the 60 s is left depends on how long a
    # loaded machine took to start the run and the status commands: not checked)
    assert held["lock"]["run_id"] == held["run_id"] and 0 < held["lock"]["ttl_sec"] <= 60
    assert status["outcome"] == "running" and status["state"] == "stale"
    assert status["lock"] is None and status["seen_age_sec"] >= 1
    table = cli("status", *beat).stdout
    row = next(line for line in table.splitlines() if line.startswith("refresh-suggestions"))
    assert re.search(r" stale +\d+s +- +- +- silent \d+s, no lock$", row), row


def test_jobs_that_never_ran_are_listed_as_never_run(redis_server, cli):
    result = cli("status", "--json")
    rows = json.loads(result.stdout)

    assert [r["unit"] for r in rows] == [spec.name for spec in JOBS]
    assert all(r["state"] == "never_run" and r["outcome"] is None and r["pid"] is None
               for r in rows)
    table = cli("status").stdout.splitlines()
    assert table[0].split()[:3] == ["JOB", "STATE", "WHEN"]
    assert all("never run" in line for line in table[1:]) and len(table) == len(JOBS) + 1


@pytest.mark.cluster
def test_status_and_history_have_one_schema(redis_client, settings, names, cli):
    run_job("clean-token-blacklist", settings)
    holder = JobLock(redis_client, f"{names['prefix']}job:lock:refresh-trending", 30,
                     {"job": "refresh-trending", "host": "elsewhere", "pid": 7, "run_id": "x"})
    assert holder.acquire()
    assert cli("refresh-trending").returncode == 75  # skip-only: no real run of it yet
    holder.release()

    statuses = {s["unit"]: s for s in json.loads(cli("status", "--json").stdout)}
    history = json.loads(cli("history", "clean-token-blacklist", "--json").stdout)
    skips = json.loads(cli("history", "refresh-trending", "--json").stdout)

    done, skipped = statuses["clean-token-blacklist"], statuses["refresh-trending"]
    for e in (done, skipped, history[0], skips[0]):
        assert set(e) >= ENTRY_KEYS
    assert all(set(e) == ENTRY_KEYS for e in (history[0], skips[0]))
    numbers = ("pid", "duration_ms", "exit_code", "skips")
    assert {k: type(done[k]) for k in numbers} == dict.fromkeys(numbers, int)
    assert done["shard"] is None and done["error"] is None and done["state"] == "ended"
    assert {k: done[k] for k in ENTRY_KEYS} == history[0]
    assert skipped["job"] == "refresh-trending" and skipped["state"] == "never_run"
    assert skipped["skips"] == 1 and skipped["last_skipped_at"]
    assert skips[0]["job"] == "refresh-trending" and skips[0]["outcome"] == "skipped"


@pytest.mark.cluster
def test_a_dry_run_and_a_usage_error_keep_the_last_real_run(redis_client, settings, cli):
    real = run_job("clean-token-blacklist", settings)
    dry = run_job("clean-token-blacklist", settings, RunOptions(dry_run=True))
    probe_real = run_job(SPEC, settings)
    bad = run_job(SPEC, settings, fail_usage=True)
    assert bad.exit_code == 2

    statuses = {s["unit"]: s for s in json.loads(cli("status", "--json").stdout)}
    blacklist, probe = statuses["clean-token-blacklist"], statuses["status-probe"]
    assert blacklist["run_id"] == real.run_id and blacklist["dry_run"] is False
    assert blacklist["attempt"]["run_id"] == dry.run_id and blacklist["attempt"]["dry_run"]
    assert probe["run_id"] == probe_real.run_id and probe["outcome"] == "success"
    assert probe["message"] == "probed 3 things"
    assert probe["attempt"]["outcome"] == "usage_error" and probe["attempt"]["exit_code"] == 2
    table = cli("status").stdout
    assert re.search(r"\n  └ later dry run \d+s ago: dry_run, exit 0: scanned 0 keys", table)
    assert re.search(r"└ later attempt \d+s ago: usage_error, exit 2: --when 'tomorrow-ish'",
                     table)

    run_job(SPEC, settings)  # the next real run: the attempt is history now
    assert json.loads(cli("status", "--json").stdout)[-1]["attempt"] is None


def test_a_usage_error_on_a_job_never_run_leaves_it_never_run(redis_server, settings, cli):
    run_job(SPEC, settings, fail_usage=True)
    probe = next(s for s in json.loads(cli("status", "--json").stdout)
                 if s["unit"] == "status-probe")
    assert probe["state"] == "never_run" and probe["attempt"]["outcome"] == "usage_error"


@pytest.mark.cluster
def test_skips_in_a_row_are_one_history_entry(redis_client, settings, names, cli):
    run_job("clean-token-blacklist", settings)
    holder = JobLock(redis_client, f"{names['prefix']}job:lock:clean-token-blacklist", 30,
                     {"job": "clean-token-blacklist", "host": "h", "pid": 1, "run_id": "y"})
    assert holder.acquire()
    for _ in range(3):
        assert cli("clean-token-blacklist").returncode == 75
    holder.release()

    history = json.loads(cli("history", "clean-token-blacklist", "--json").stdout)
    assert [(h["outcome"], h["skips"]) for h in history] == [("skipped", 3), ("nothing_to_do", 0)]
    assert "lock" in history[0]["message"] and "held by host h pid 1" in history[0]["message"]
    text = cli("history", "clean-token-blacklist").stdout
    assert "skipped 3x" in text and "exit 0" in text
    assert re.search(r"skipped 3x, \d+s ago", cli("status").stdout)


def test_the_table_fits_80_columns_and_errors_only_in_errors(redis_client, settings, cli):
    run_job("clean-token-blacklist", settings)
    redis_client.hset(status_key(settings.redis_prefix, "clean-token-blacklist"), "message",
                      "x" * 300)

    lines = cli("status").stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    row = next(line for line in lines if line.startswith("clean-token-blacklist"))
    assert row.endswith("x…") and " nothing_to_do " in row and row.split()[4] == "0"
    history = cli("history", "clean-token-blacklist").stdout
    assert "    message: scanned 0 keys" in history and "error:" not in history
