"""drain-stream and dlq as real `novajobs` processes: SIGTERM, the dlq commands,
configuration errors. (kill -9 at random points of every path: scripts/crash_drain_stream.py,
whose --tiny mode tests/test_scripts.py runs.)
Handlers reach the subprocess through a real `novajobs.handlers` entry point."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from stream_handlers import entry_point_env
from support import spawn, wait_for

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job
from novajobs.streams.handlers import Message, register_handler, unregister_handler
from novajobs.streams.keys import stream_keys

AUDIT = "stream:audit:log"


def start(env: dict[str, str], *args: str, extra: dict[str, str] | None = None,
          log: Path | None = None) -> Any:
    """`novajobs drain-stream ARGS` in the background; output piped, or to ``log``."""
    full_env = {**env, **(extra or {})}
    if log is None:
        return spawn(full_env, "drain-stream", *args)
    with log.open("w") as out:  # a killed process leaves no pipe behind
        return spawn(full_env, "drain-stream", *args, stdout=out, stderr=out)


def test_sigterm_lets_running_handlers_finish_and_acks_them(redis_client, env, names, tmp_path):
    p = names["prefix"]
    key = p + "q"
    for i in range(12):
        redis_client.xadd(key, {"n": str(i), "sleep": "0.5"})
    args = ["-s", "stream_handlers=q=recorder", "--concurrency", "3", "--message-timeout",
            "0.9", "-s", "stream_claim_idle_sec=1", "-s", "drain_block_ms=100"]

    proc = start(env, *args, extra=entry_point_env(tmp_path))
    wait_for(lambda: _pending(redis_client, key) == 12)  # all read ahead, 3 calls running
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    done = {m.decode() for m in redis_client.smembers(p + "test:done")}
    assert len(done) == 3  # the running calls finished and were acked...
    assert _pending(redis_client, key) == 9  # ...the rest stays pending, not retried
    assert {e["message_id"].decode() for e in redis_client.xpending_range(
        key, "novajobs", "-", "+", 20)}.isdisjoint(done)
    assert redis_client.exists(stream_keys(p, "q").retry, stream_keys(p, "q").dlq) == 0
    assert "SIGTERM received" in err and '"left_pending": 9' in err

    time.sleep(1.0)  # a later run reclaims them once idle for stream_claim_idle_sec
    again = start(env, *args, "--consumer", "another-pod", extra=entry_point_env(tmp_path))
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert redis_client.scard(p + "test:done") == 12
    assert _pending(redis_client, key) == 0


@pytest.mark.cluster
def test_dlq_list_replay_and_purge(redis_client, make_settings, cli, names):
    ok = {"now": False}

    def flaky(message: Message) -> None:
        if not ok["now"]:
            raise ValueError(f"not yet ({message.fields['n']})")

    register_handler("flaky", flaky)
    try:
        p = names["prefix"]
        firsts = [redis_client.xadd(p + "q", {"n": str(i)}).decode() for i in range(4)]
        settings = make_settings(stream_handlers=("q=flaky",), stream_max_retries=0,
                                 drain_block_ms=100)
        rec = run_job("drain-stream", settings, RunOptions())
        assert rec.counters["dead_lettered"] == 4, rec.error

        listed = cli("dlq", "list", "q", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = json.loads(listed.stdout)
        assert [d["first_id"] for d in letters] == firsts
        assert letters[0]["fields"] == {"n": "0"} and letters[0]["attempts"] == 1
        assert letters[0]["error"] == "ValueError: not yet (0)"
        summary = json.loads(cli("dlq", "list", "--json", "-s", "stream_handlers=q=flaky").stdout)
        assert [(row["stream"], row["dlq_size"], row["retry_size"]) for row in summary] == [
            ("q", 4, 0)]

        replayed = cli("dlq", "replay", "q", letters[0]["id"], "--json")
        assert json.loads(replayed.stdout)["moved"] == 1, replayed.stderr
        assert cli("dlq", "replay", "q", letters[0]["id"]).returncode == 1  # gone now
        assert cli("dlq", "replay", "q").returncode == 2  # ids, --all or a filter
        assert cli("dlq", "replay", "q", "not-an-id").returncode == 2

        refused = cli("dlq", "purge", "q", letters[1]["id"])
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert cli("dlq", "purge", "q", letters[1]["id"], "--yes").returncode == 0
        assert cli("dlq", "replay", "q", "--all").returncode == 0
        assert redis_client.xlen(stream_keys(p, "q").dlq) == 0

        ok["now"] = True
        rec = run_job("drain-stream", settings, RunOptions())
        assert rec.counters["succeeded"] == 3
        purged = cli("dlq", "purge", "q", "--all", "--yes", "--json")
        assert json.loads(purged.stdout)["moved"] == 0
    finally:
        unregister_handler("flaky")


def test_configuration_errors_fail_before_reading(redis_client, cli, names):
    redis_client.xadd(names["prefix"] + AUDIT, {"user_id": "1", "action": "a", "ts": "1"})
    cases = [
        (("-s", "stream_handlers=q=no-such-handler"), 78, "not registered"),
        (("stream:nope",), 2, "no handler in setting stream_handlers"),
        (("-s", "drain_block_ms=6000"), 78, "drain_block_ms"),
        (("-s", "stream_claim_idle_sec=5", "--message-timeout", "10"), 78, "claim_idle"),
        (("-s", "stream_priorities=stream:audit:log=0"), 2, "from 1 to 10"),  # a flag: usage
        (("--timeout", "5", "--message-timeout", "10", "-s", "stream_claim_idle_sec=60"), 78,
         "leaves no time"),
    ]
    for args, code, text in cases:
        run = cli("drain-stream", *args)
        assert run.returncode == code, (args, run.stderr)
        assert text in run.stderr, (args, run.stderr)
    from_env = cli("drain-stream", extra_env={"NOVAJOBS_STREAM_PRIORITIES": "x=11"})
    assert from_env.returncode == 78 and "NOVAJOBS_STREAM_PRIORITIES" in from_env.stderr
    assert _pending(redis_client, names["prefix"] + AUDIT) == 0
    assert Outcome.SKIPPED.exit_code == 75  # (the per-consumer lock: test_stream_worker.py)


def _pending(r: Any, key: str) -> int:
    try:
        return int(r.xpending(key, "novajobs")["pending"])
    except Exception:  # the group is not there yet
        return 0
