"""The run contract (README) end to end: lock, skip, lost lock, signals, timeout, records."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    ring_of_users,
    run_novajobs,
    run_seconds,
    slow_run,
    spawn,
    wait_for,
    wait_for_line,
)

from novajobs.errors import Outcome
from novajobs.lock import JobLock
from novajobs.records import history_key, status_key
from novajobs.runner import RunOptions, run_job
from novajobs_dev.clickhouse_http import ClickHouseHTTP
from novajobs_dev.netfaults import black_hole, refused_port

# Children import everything, then wait for the barrier file, then race for the lock.
RACER = """
import os, sys, time
from novajobs.cli import run_cli
import novajobs.runner, redis  # warm imports so the race starts at the barrier
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
sys.exit(run_cli(sys.argv[2:]))
"""


def start_slow_run(ch: Any, redis_client: Any, env: dict[str, str], names: dict[str, str],
                   *args: str, users: int = 400) -> subprocess.Popen[str]:
    """refresh-suggestions over ``users`` users one at a time, caught between two writes."""
    proc = slow_run(ch, env, users, *args)
    wait_for(lambda: suggestion_keys(redis_client, names) > 0, 90, "the job's first keys")
    return proc


def suggestion_keys(redis_client: Any, names: dict[str, str]) -> int:
    return sum(1 for _ in redis_client.scan_iter(f"{names['prefix']}nova:cache:suggested_users:*"))


def test_twenty_racing_processes_exactly_one_runs(ch, redis_client, env, names, tmp_path):
    ring_of_users(ch, 3000)
    ch.release()
    barrier = tmp_path / "go"
    args = ["refresh-suggestions", "--batch-size", "0", "-s", "suggestion_chunk_size=50"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(barrier), *args, *(["--skip-ok"] if i % 2 else [])],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    time.sleep(3)  # every child imported and polling
    barrier.touch()
    results = [(p.wait(timeout=120), i % 2 == 1) for i, p in enumerate(procs)]
    for p in procs:
        p.communicate()

    codes = sorted(code for code, _ in results)
    assert codes.count(0) >= 1
    ran = [code for code, skip_ok in results if code == 0 and not skip_ok]
    skipped = [code for code, skip_ok in results if not skip_ok and code == 75]
    history = [
        json.loads(h)
        for h in redis_client.lrange(history_key(names["prefix"], "refresh-suggestions"), 0, -1)
    ]
    # The 19 skips are counted, not listed each: one history entry stands for them all.
    assert sorted((h["outcome"], h.get("skips", 0)) for h in history) == [
        ("skipped", 19), ("success", 0)]
    # The skips never hide the run that held the lock: the status is still its record.
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-suggestions"))
    assert status[b"outcome"] == b"success" and status[b"last_skipped_at"]
    # (Counted since the run's start record: a skip in the moment between its lock and
    # that record is in the history entry only.)
    assert 1 <= int(status[b"skips"]) <= 19
    # Without --skip-ok a skipped run exits 75; with it, 0.
    assert len(ran) + len(skipped) == 10
    assert all(code in (0, 75) for code, _ in results)
    assert all(code == 0 for code, skip_ok in results if skip_ok)
    assert suggestion_keys(redis_client, names) == 3000


@pytest.mark.cluster
def test_a_held_lock_skips_and_names_the_holder(redis_client, settings, names, cli):
    holder = JobLock(
        redis_client,
        f"{names['prefix']}job:lock:refresh-trending",
        300,  # held through both runs below, however slowly processes start (load 30)
        {"job": "refresh-trending", "host": "elsewhere", "pid": 4242, "run_id": "abc"},
    )
    assert holder.acquire()

    result = cli("refresh-trending")
    skip_ok = cli("refresh-trending", "--skip-ok")

    assert result.returncode == 75
    last = json.loads(result.stderr.strip().splitlines()[-1])
    assert "held by host elsewhere pid 4242 run abc" in last["message"]
    assert last["outcome"] == "skipped"
    assert skip_ok.returncode == 0
    assert holder.release()


@pytest.mark.cluster
def test_wait_takes_the_lock_once_it_is_released(ch, redis_client, settings, names):
    holder = JobLock(
        redis_client,
        f"{names['prefix']}job:lock:refresh-trending",
        2,
        {"job": "x", "host": "h", "pid": 1, "run_id": "r"},
    )
    assert holder.acquire()  # no heartbeat: expires after 2 s

    started = time.monotonic()
    rec = run_job("refresh-trending", settings, RunOptions(wait_sec=10))

    assert rec.outcome is Outcome.SUCCESS
    assert 1.0 < time.monotonic() - started < 9


@pytest.mark.cluster
def test_release_never_removes_a_lock_another_run_holds(redis_client, names):
    key = f"{names['prefix']}job:lock:demo"
    first = JobLock(redis_client, key, 1, {"run_id": "first"})
    assert first.acquire()
    time.sleep(1.1)  # first's lease ran out; the key expired
    second = JobLock(redis_client, key, 30, {"run_id": "second"})
    assert second.acquire()

    assert not first.lease_ok()
    assert first.renew() is False
    assert first.release() is False
    assert json.loads(redis_client.get(key))["run_id"] == "second"
    assert second.release() is True
    assert redis_client.get(key) is None


@pytest.mark.cluster
def test_lock_deleted_mid_run_stops_the_job_before_its_next_write(ch, redis_client, env, names):
    # The heartbeat (every TTL/3) finds the lock gone: a TTL long enough that a loaded
    # machine's late renewal does not lose the lease first, users enough to outlast it.
    proc = start_slow_run(ch, redis_client, env, names, "-s", "lock_ttl_sec=6", users=1000)
    redis_client.delete(f"{names['prefix']}job:lock:refresh-suggestions")
    code = proc.wait(timeout=60)
    proc.communicate()

    assert code == 4
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-suggestions"))
    assert status[b"outcome"] == b"lock_lost"
    written = json.loads(status[b"counters"])["keys_written"]
    assert 0 < written < 1000
    assert suggestion_keys(redis_client, names) == written  # nothing after the stop


def test_a_process_paused_past_its_ttl_never_writes_after_waking(ch, redis_client, env, names):
    proc = start_slow_run(ch, redis_client, env, names, "-s", "lock_ttl_sec=1.5")
    proc.send_signal(signal.SIGSTOP)
    time.sleep(2.2)  # past the TTL: the key expires and another run could take it
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-suggestions") is None
    # counted once the lock is gone: a pipeline sent just before the pause may have
    # reached a loaded Redis later than a fixed 0.2 s, and it was a legitimate write
    before = suggestion_keys(redis_client, names)
    proc.send_signal(signal.SIGCONT)
    code = proc.wait(timeout=60)
    proc.communicate()

    assert code == 4
    assert suggestion_keys(redis_client, names) == before


def test_sigterm_stops_at_a_safe_point_releases_and_records_interrupted(
    ch, redis_client, env, names
):
    proc = start_slow_run(ch, redis_client, env, names)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    proc.communicate()

    assert code == 130
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-suggestions") is None
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-suggestions"))
    assert status[b"outcome"] == b"interrupted"
    written = json.loads(status[b"counters"])["keys_written"]
    assert 0 < written < 400 and suggestion_keys(redis_client, names) == written


def test_timeout_ends_the_run_with_its_exit_code(ch, redis_client, cli, names):
    ring_of_users(ch, 2000)
    ch.release()

    started = time.monotonic()
    result = cli(
        "refresh-suggestions",
        "--batch-size",
        "0",
        "-s",
        "suggestion_chunk_size=1",
        "--timeout",
        "1",
    )

    assert result.returncode == 124
    assert time.monotonic() - started < 15
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-suggestions"))
    assert status[b"outcome"] == b"timeout"
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-suggestions") is None


@pytest.mark.cluster
def test_status_and_history_show_the_runs(ch, redis_client, settings, cli, tmp_path: Path):
    ch.release()
    for _ in range(3):
        assert cli("refresh-trending").returncode == 0

    status = json.loads(cli("status", "--json").stdout)
    history = json.loads(cli("history", "refresh-trending", "--json", "-n", "2").stdout)

    ran = [s for s in status if s["state"] != "never_run"]
    assert [s["unit"] for s in ran] == ["refresh-trending"]
    assert status[0]["outcome"] == "success" and status[0]["counters"] == {
        "posts": 0,
        "keys_written": 1,
    }
    assert status[0]["last_success_at"] == status[0]["ended_at"]
    assert len(history) == 2 and all(h["outcome"] == "success" for h in history)
    assert history[0]["started_at"] > history[1]["started_at"]


@pytest.mark.cluster
def test_history_is_capped(ch, redis_client, make_settings, names):
    settings = make_settings(history_size=3)
    for _ in range(5):
        run_job("refresh-trending", settings)
    assert redis_client.llen(history_key(names["prefix"], "refresh-trending")) == 3


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_hung_redis_cannot_hold_the_run_past_its_timeout(tmp_path):
    """A store that accepts connections but never answers (here: a stopped redis-server)."""
    port = refused_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), 10, "redis-server")
        server.send_signal(signal.SIGSTOP)
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "NOVAJOBS_REDIS_TIMEOUT_SEC": "0.5",
            "NOVAJOBS_RETRY_ATTEMPTS": "10",
        }
        # 6 s: the first try (its driver imported, connected, 0.5 s unanswered) leaves
        # room for a retry even on a loaded machine; ten would not fit
        result = run_novajobs(env, "refresh-trending", "--timeout", "6", timeout=60)
        exited_at = time.time()
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait()

    # Retries stop when the next one would not fit in the budget: the store is unavailable.
    assert result.returncode == 69, result.stderr
    # From the run's start: the 6 s budget + 2 s grace, then one bounded try to record
    assert run_seconds(result.stderr, exited_at) < 12
    assert "connect to Redis failed, retrying" in result.stderr


def test_a_job_stuck_in_one_call_is_cut_off_at_its_timeout(redis_client, cli, names):
    """A ClickHouse that accepts the connection and never answers; its own timeout is 60 s."""
    with black_hole() as hole:
        port = hole.port
        started = time.monotonic()
        result = cli(
            "refresh-trending",
            "--timeout",
            "2",
            extra_env={
                "CLICKHOUSE_URL": f"http://127.0.0.1:{port}/default",
                "JOB_CH_TIMEOUT_MS": "60000",
            },
        )
        elapsed = time.monotonic() - started

    assert result.returncode == 124, result.stderr
    assert elapsed < 10  # 2 s + 2 s grace (not 60 s)
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-trending") is None
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-trending"))
    assert status[b"outcome"] == b"timeout"


def test_sigterm_while_waiting_for_the_lock_is_interrupted_not_skipped(redis_client, env, names):
    holder = JobLock(redis_client, f"{names['prefix']}job:lock:refresh-trending", 30,
                     {"job": "x", "host": "h", "pid": 1, "run_id": "r"})
    assert holder.acquire()
    proc = spawn(env, "refresh-trending", "--wait", "60")
    wait_for_line(proc, "waiting up to 60 s")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    proc.communicate()

    assert code == 130
    assert time.monotonic() - started < 5  # did not sit out the 60 s wait
    assert json.loads(redis_client.get(f"{names['prefix']}job:lock:refresh-trending"))["pid"] == 1
    assert holder.release()


def test_an_overdue_lease_stops_the_job_even_while_redis_still_shows_the_lock(
    redis_client, names
):
    """What a paused process sees on waking, before its heartbeat thread has run: the lock
    key may still exist, but a renewal is overdue, so a write is no longer safe."""
    from novajobs.context import Guard
    from novajobs.errors import LockLost

    key = f"{names['prefix']}job:lock:paused"
    lock = JobLock(redis_client, key, 1.5, {"run_id": "paused"})
    assert lock.acquire()  # no heartbeat: nothing renews it, as in a frozen process
    guard = Guard(lock=lock)
    guard.check()  # a fresh lease: writing is fine

    time.sleep(1.1)  # more than 2/3 of the TTL without a renewal

    assert redis_client.get(key) is not None  # Redis would still say "yours"
    with pytest.raises(LockLost):
        guard.check()


@pytest.mark.cluster
def test_the_heartbeat_keeps_a_run_longer_than_its_ttl_alive(ch, redis_client, cli, names,
                                                              stack):
    # ClickHouse over HTTP with every suggestions query held 80 ms: 200 users, one query
    # each, take longer than three 4 s TTLs however fast the machine (on one Redis and on
    # a cluster alike), and a renewal (every 1.3 s) may come 2.7 s late before the lease
    # is lost, as on a loaded machine.
    users, ttl = 200, 4
    ring_of_users(ch, users)
    ch.release()
    front = ClickHouseHTTP(str(stack.dir / "clickhouse"))
    try:
        front.delay = ("mutual", 0.08)
        result = cli("refresh-suggestions", "--batch-size", "0", "--json",
                     "-s", "suggestion_chunk_size=1", "-s", f"lock_ttl_sec={ttl}",
                     timeout=300, extra_env={"CLICKHOUSE_URL": front.url(names["database"])})
    finally:
        front.close()

    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["duration_ms"] > 3 * ttl * 1000  # three TTLs: it only lived on renewals
    assert record["counters"]["keys_written"] == users
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-suggestions") is None
