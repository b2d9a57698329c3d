"""Signals win over retries and hung calls; a timeout does not wait on a dead store twice.

Stores that hang are real loopback listeners that accept and never answer (netfaults),
a refused store is a closed port, a hung PostgreSQL call is a real lock wait. Every
store timeout here is far longer than the bounds asserted: only the stop (or the run's
own timeout) can explain an exit within them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from typing import Any

import pytest
import support
from support import run_seconds, wait_for, wait_for_line

from novajobs.context import Guard
from novajobs.errors import Interrupted
from novajobs.output import JobLog
from novajobs.records import status_key
from novajobs.retry import call_with_retry
from novajobs.schema import ensure_tables
from novajobs.settings import load_settings
from novajobs_dev.netfaults import black_hole, refused_port

PATIENT = {  # every store waits a minute before giving up on its own
    "NOVAJOBS_REDIS_TIMEOUT_SEC": "60",
    "NOVAJOBS_CONNECT_TIMEOUT_SEC": "60",
    "JOB_CH_TIMEOUT_MS": "60000",
}


def spawn(env: dict[str, str], *args: str, extra: dict[str, str] | None = None) -> Any:
    return support.spawn({**env, **PATIENT, **(extra or {})}, *args)


def stop(proc: Any, *signals: signal.Signals, gap: float = 0.3) -> tuple[int, float, str]:
    """Send the signals, wait for the exit: (code, seconds from the first signal, log)."""
    started = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap)
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running 40 s after {signals[0].name}:\n{err}") from None
    return proc.returncode, time.monotonic() - started, err


def status(redis_client: Any, names: dict[str, str], unit: str) -> dict[bytes, bytes]:
    return redis_client.hgetall(status_key(names["prefix"], unit))


@pytest.mark.parametrize("store", ["clickhouse-http", "postgres"])
def test_sigterm_while_blocked_on_a_hung_store_is_interrupted_within_seconds(
        store, redis_client, env, names):
    job, setting = {"clickhouse-http": ("refresh-trending", "CLICKHOUSE_URL"),
                    "postgres": ("daily-stats", "DATABASE_URL")}[store]
    with black_hole() as hole:
        url = {"clickhouse-http": f"http://127.0.0.1:{hole.port}/default",
               "postgres": f"postgresql://postgres@127.0.0.1:{hole.port}/postgres"}[store]
        proc = spawn(env, job, extra={setting: url})
        hole.wait_for_client()
        time.sleep(0.3)  # inside the call, waiting for an answer that never comes
        code, seconds, log = stop(proc, signal.SIGTERM)

    assert code == 130, log
    assert seconds < 15  # the store would have kept it a minute
    assert redis_client.get(f"{names['prefix']}job:lock:{job}") is None
    assert status(redis_client, names, job)[b"outcome"] == b"interrupted"


def test_sigterm_while_blocked_on_a_hung_redis_exits_130_without_waiting_on_it_again(env):
    with black_hole() as hole:
        proc = spawn(env, "refresh-trending", extra={"REDIS_URL": f"redis://127.0.0.1:{hole.port}/0"})
        hole.wait_for_client()
        code, seconds, log = stop(proc, signal.SIGTERM)

    assert code == 130, log
    assert seconds < 15
    assert "not recorded" in log or "could not record" in log


def test_no_retry_starts_after_sigterm_and_the_backoff_wakes(redis_client, env, names):
    """PostgreSQL refused: the job sleeps between connection attempts (up to 30 s)."""
    proc = spawn(env, "daily-stats", extra={
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{refused_port()}/postgres",
        "NOVAJOBS_RETRY_ATTEMPTS": "50", "NOVAJOBS_RETRY_MAX_WAIT_SEC": "30"})
    wait_for_line(proc, "connect to PostgreSQL failed, retrying")
    wait_for_line(proc, "connect to PostgreSQL failed, retrying")  # now in a longer backoff
    code, seconds, log = stop(proc, signal.SIGTERM)

    assert code == 130, log
    assert seconds < 10
    after_stop = log.split("SIGTERM received", 1)[1]
    assert "retrying" not in after_stop  # no try started after the stop request
    assert status(redis_client, names, "daily-stats")[b"outcome"] == b"interrupted"


def test_a_second_sigint_stops_a_hung_query_at_once_and_cancels_it(
        pg, pg_tables, redis_client, env, names):
    """daily-stats waits on a table lock the test holds (a call outside any retry, where
    the first SIGINT would wait for stop_grace_sec, set to two minutes here)."""
    import psycopg

    pg_tables("users", "audit_logs", "chat_messages", "file_metadata")
    ensure_tables(pg, ["daily_stats"])

    holder = psycopg.connect(pg.info.dsn)
    holder.execute(f"SET search_path TO {names['schema']}")
    holder.execute("LOCK TABLE daily_stats IN ACCESS EXCLUSIVE MODE")
    try:
        proc = spawn(env, "daily-stats", "--date", "2025-01-01",
                     extra={"NOVAJOBS_STOP_GRACE_SEC": "120"})
        wait_for_line(proc, "run started")
        wait_for(lambda: _lock_waiters(pg) > 0, what="daily-stats waiting on the lock")
        code, seconds, log = stop(proc, signal.SIGINT, signal.SIGINT)
        waiting_after = _lock_waiters(pg)
    finally:
        holder.close()

    assert code == 130, log
    assert seconds < 15  # not the two minutes of grace
    assert waiting_after == 0  # the abandoned query was cancelled on the server too
    record = status(redis_client, names, "daily-stats")
    assert record[b"outcome"] == b"interrupted"
    assert b"second SIGINT" in record[b"error"]


def _lock_waiters(pg: Any) -> int:
    row = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                     "'novajobs' AND wait_event_type = 'Lock'").fetchone()
    return int(row[0])


def test_a_timeout_with_redis_hung_ends_near_timeout_plus_grace(env):
    """Redis accepts and never answers, with a one-minute socket timeout: the hard
    timeout (2 s + its 2 s grace) ends the run, and recording it does not wait on Redis
    again."""
    with black_hole() as hole:
        proc = spawn(env, "refresh-trending", "--timeout", "2",
                     extra={"REDIS_URL": f"redis://127.0.0.1:{hole.port}/0"})
        _, err = proc.communicate(timeout=60)
        exited_at = time.time()

    assert proc.returncode == 124, err
    last = json.loads(err.splitlines()[-1])
    assert last["outcome"] == "timeout"
    # From the run's start (not the interpreter's): 2 s + 2 s grace, then the exit; not
    # another minute per write.
    assert 4000 <= last["elapsed_ms"] < 8000
    assert run_seconds(err, exited_at) < 10


def test_a_stop_request_wakes_the_retry_backoff_and_starts_no_new_try():
    settings = load_settings(environ={"NOVAJOBS_RETRY_ATTEMPTS": "5",
                                      "NOVAJOBS_RETRY_MAX_WAIT_SEC": "60"})
    guard = Guard()
    tries: list[float] = []

    def refused() -> None:
        tries.append(time.monotonic())
        raise ConnectionRefusedError("refused")

    threading.Timer(0.5, guard.request_stop, ["SIGTERM"]).start()
    with pytest.raises(Interrupted, match="stopped by SIGTERM"):
        call_with_retry(refused, what="connect", settings=settings, log=JobLog(), guard=guard)

    assert 1 <= len(tries) <= 3  # the backoff (0.2 s, 0.4 s, ...) was cut by the stop
    assert time.monotonic() - tries[0] < 5
