"""Run logs kept with the record (`novajobs logs`, --follow) and the remote stop
(`novajobs stop`), against real runs."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest
from support import LOG_PROBE, PASSWORD, SECRET, slow_run, spawn

from novajobs.lock import JobLock
from novajobs.output import setup_logging
from novajobs.records import status_key
from novajobs.runner import run_job
from novajobs.stops import who_am_i


def probe_lines(redis_client: Any, settings: Any, run_id: str) -> list[dict[str, Any]]:
    key = f"{settings.redis_prefix}job:log:log-probe:{run_id}"
    return [json.loads(line) for line in redis_client.lrange(key, 0, -1)]


def test_a_run_keeps_its_last_lines_capped_and_redacted(redis_client, make_settings):
    setup_logging("json", "info")
    settings = make_settings(minio_secret_key=SECRET, neo4j_password=PASSWORD, run_log_lines=5)
    rec = run_job(LOG_PROBE, settings, lines=20)

    kept = probe_lines(redis_client, settings, rec.run_id)
    assert [line["message"] for line in kept] == [
        "line 16", "line 17", "line 18", "line 19", "logged"]
    assert kept[-1]["outcome"] == "success" and kept[-1]["seq"] == 23  # started + 1 + 20 + end
    assert all(line["run_id"] == rec.run_id for line in kept)
    ttl = redis_client.ttl(f"{settings.redis_prefix}job:log:log-probe:{rec.run_id}")
    assert 7 * 86400 - 60 < ttl <= 7 * 86400

    few = make_settings(minio_secret_key=SECRET, neo4j_password=PASSWORD)
    first = probe_lines(redis_client, few, run_job(LOG_PROBE, few, lines=0).run_id)[1]
    text = json.dumps(first)
    assert SECRET not in first["message"] and PASSWORD not in text and "S3cr" not in text
    assert first["password"] == "****"
    assert first["message"] == "connecting with secret **** to redis://app:****@cache:6379/0"

    small = make_settings(run_log_bytes=2000)
    lines = probe_lines(redis_client, small, run_job(LOG_PROBE, small, lines=20, big=300).run_id)
    assert sum(len(json.dumps(line)) for line in lines) <= 2000 and lines[-1]["message"] == "logged"


@pytest.mark.cluster
def test_logs_prints_a_run_and_stop_interrupts_it_while_follow_tails_it(ch, redis_client, env,
                                                                          names, cli):
    beat = ("-s", "run_heartbeat_sec=0.2")
    proc = slow_run(ch, env, 3000, *beat)
    follow = spawn(env, "logs", "refresh-suggestions", "--follow", *beat)
    assert follow.stdout is not None
    assert "run started" in follow.stdout.readline()

    stopped = cli("stop", "refresh-suggestions", *beat)

    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(timeout=30) == 130
    proc.communicate()
    by = who_am_i()
    assert by.endswith("@" + socket.gethostname())
    assert re.search(rf"refresh-suggestions: run \w+ ended interrupted \(exit 130\): "
                     rf"stop requested by {re.escape(by)}", stopped.stdout), stopped.stdout
    rest, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0
    assert f"stop requested by {by}; stopping at the next safe point" in rest
    final = rest.strip().splitlines()[-1]
    assert f" ERROR   stop requested by {by}  outcome=interrupted exit_code=130" in final
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-suggestions"))
    assert status[b"outcome"] == b"interrupted"
    assert status[b"error"] == f"stop requested by {by}".encode()
    assert not redis_client.exists(f"{names['prefix']}job:lock:refresh-suggestions")

    last = cli("logs", "refresh-suggestions", "--json")
    lines = [json.loads(line) for line in last.stdout.splitlines()]
    assert lines[-1]["outcome"] == "interrupted" and lines[0]["message"] == "run started"
    run_id = lines[-1]["run_id"]
    assert "run started  timeout_sec=540 fence=" in cli(  # the lock's fencing token
        "logs", "refresh-suggestions", run_id[:6]).stdout.splitlines()[0]
    missing = cli("logs", "refresh-suggestions", "ffffffffff")
    assert missing.returncode == 2 and "no run ffffffffff of refresh-suggestions" in missing.stderr


@pytest.mark.cluster
def test_stop_names_only_the_runs_running_now_and_one_shard(redis_client, env, names, cli):
    def hold(shard: str, run_id: str) -> JobLock:
        lock = JobLock(redis_client, f"{names['prefix']}job:lock:gc-files:{shard}", 30,
                       {"job": f"gc-files:{shard}", "host": "far", "pid": 9, "run_id": run_id})
        assert lock.acquire()
        return lock

    one, two = hold("1-of-2", "run-one"), hold("2-of-2", "run-two")
    stop_key = f"{names['prefix']}job:stop:gc-files:"

    result = cli("stop", "gc-files", "--shard", "2/2", "--wait", "0.5")

    assert result.returncode == 124  # nobody answers: these "runs" are only locks
    assert "gc-files:2-of-2: asked run run-two (host far pid 9) to stop" in result.stdout
    assert redis_client.hkeys(stop_key + "2-of-2") == [b"run-two"]
    assert not redis_client.exists(stop_key + "1-of-2")
    assert json.loads(redis_client.hget(stop_key + "2-of-2", "run-two"))["by"] == who_am_i()

    every = cli("stop", "gc-files", "--wait", "0")
    assert every.returncode == 0 and redis_client.hkeys(stop_key + "1-of-2") == [b"run-one"]
    one.release()
    two.release()
    nothing = cli("stop", "gc-files")
    assert nothing.returncode == 0 and nothing.stdout == "no run of gc-files is running\n"
