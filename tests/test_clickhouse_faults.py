"""ClickHouse faults. Embedded (chdb://PATH) under the shipped schedule: refresh-trending
and refresh-suggestions start in the same minute, as two real processes on one data
path; chdb lets one process at a time open a path, so a run waits for it within its
budget, and a path busy for the whole budget is exit 69 (never 1). Over HTTP: a
black-holed server costs the tries our retry policy allows, not three times as many."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from support import run_novajobs, spawn, wait_for_line

from novajobs.records import status_key
from novajobs_dev import demo_data
from novajobs_dev.netfaults import black_hole


def chdb_path(env: dict[str, str]) -> str:
    return env["CLICKHOUSE_URL"].split("://", 1)[1].split("?", 1)[0]


@contextmanager
def another_run_holds(path: str) -> Iterator[None]:
    """What a novajobs run holds while its chdb client is open."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def test_trending_and_suggestions_started_together_both_succeed(ch, redis_client, env, names):
    demo_data.load_clickhouse(ch.client, users=200, posts=50, events=5000, edges=1500, hours=2)
    ch.release()

    for _ in range(3):  # the crontab's minute, three times
        runs = [spawn(env, job) for job in ("refresh-trending", "refresh-suggestions")]
        done = [(run.args[-1], run.communicate(timeout=300)[1], run.returncode) for run in runs]
        for job, log, code in done:
            assert code == 0, (job, log)
            assert "EmbeddedServer" not in log, log
    assert redis_client.get(f"{names['prefix']}nova:cache:trending:1h")
    assert redis_client.keys(f"{names['prefix']}nova:cache:suggested_users:*")


def test_a_run_waits_for_the_path_while_another_run_holds_it(ch, redis_client, env, names):
    ch.release()
    with another_run_holds(chdb_path(env)):
        run = spawn(env, "refresh-trending")
        time.sleep(2)
        assert run.poll() is None  # waiting, not failed
    _, log = run.communicate(timeout=120)
    code = run.returncode

    assert code == 0, log
    assert "the embedded ClickHouse path is in use by another run; waiting" in log
    assert redis_client.get(f"{names['prefix']}nova:cache:trending:1h") is not None


def test_a_path_busy_for_the_whole_budget_is_69_and_writes_nothing(ch, redis_client, env,
                                                                   names):
    ch.release()
    with another_run_holds(chdb_path(env)):
        started = time.monotonic()
        run = spawn(env, "refresh-trending", "--timeout", "3", "--json")
        out, log = run.communicate(timeout=60)
        took = time.monotonic() - started
    record = json.loads(out)

    assert run.returncode == 69, log
    assert took < 30  # the 3 s budget (plus start-up on a loaded machine), not a hang
    assert "was in use by another process" in record["error"]
    assert redis_client.get(f"{names['prefix']}nova:cache:trending:1h") is None
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-trending") is None


def test_sigterm_while_waiting_for_the_path_is_interrupted_at_once(ch, redis_client, env,
                                                                    names):
    ch.release()
    with another_run_holds(chdb_path(env)):
        run = spawn(env, "refresh-trending")
        wait_for_line(run, "in use by another run; waiting", timeout=60)
        sent = time.monotonic()
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
        took = time.monotonic() - sent

    assert run.returncode == 130
    assert took < 10
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-trending"))
    assert status[b"outcome"] == b"interrupted"


def test_a_black_holed_clickhouse_is_tried_as_often_as_the_retry_policy_says(env, redis_server):
    """clickhouse-connect retries a query on its own (twice by default): under our retries
    that made every try three, and a black-holed ClickHouse over HTTP held
    refresh-suggestions for 275 s at default settings (scripts/faults.py)."""
    with black_hole() as hole:
        done = run_novajobs({**env, "CLICKHOUSE_URL": f"http://127.0.0.1:{hole.port}/db",
                             "JOB_CH_TIMEOUT_MS": "1000", "NOVAJOBS_RETRY_ATTEMPTS": "2"},
                            "refresh-suggestions")
        tries = len(hole.accepted)

    assert done.returncode == 69, done.stderr
    assert tries == 2, done.stderr


def test_no_try_starts_that_a_silent_clickhouse_would_hold_past_the_budget(env, redis_server):
    """The first try waited its whole timeout (5 s) for a black-holed ClickHouse; 3 s of
    the 8 s budget are left: a second try would be cut off by the run's timeout (124).
    The run ends unavailable instead, without starting it."""
    with black_hole() as hole:
        done = run_novajobs({**env, "CLICKHOUSE_URL": f"http://127.0.0.1:{hole.port}/db",
                             "JOB_CH_TIMEOUT_MS": "5000"},
                            "refresh-trending", "--timeout", "8", "--json")
        tries = len(hole.accepted)

    assert done.returncode == 69, done.stderr
    assert tries == 1
