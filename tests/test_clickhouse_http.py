"""ClickHouse over HTTP(S): the real engine behind scripts/novajobs_dev/clickhouse_http.py
(the HTTP protocol as ClickHouse speaks it), against the same jobs over chdb:// in process."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from support import novajobs_env, one_line_error

from novajobs.errors import Outcome
from novajobs.runner import run_job
from novajobs_dev import tls_servers
from novajobs_dev.clickhouse_http import ClickHouseHTTP

TRENDING = "nova:cache:trending:1h"
SUGGESTED = "nova:cache:suggested_users:"


@pytest.fixture(scope="module")
def front(stack: Any) -> Iterator[ClickHouseHTTP]:
    """The stack's ClickHouse data, served over HTTP (closed after this module: chdb lets
    no other process open the path meanwhile)."""
    (stack.dir / "clickhouse").mkdir(parents=True, exist_ok=True)
    server = ClickHouseHTTP(str(stack.dir / "clickhouse"), user="reader", password="s3cr3t")
    yield server
    server.close()


@pytest.fixture
def over_http(front: ClickHouseHTTP, names: dict[str, str]) -> dict[str, str]:
    front.delay = front.fail_with = None
    return {"CLICKHOUSE_URL": front.url(names["database"])}


def events(ch: Any, n: int, seed: int, users: int = 300) -> None:
    rng = random.Random(seed)
    now = time.time()
    kinds = ["view"] * 6 + ["like", "comment", "share"]
    ch.insert("post_events", [
        [datetime.fromtimestamp(now - rng.uniform(10, 3000), UTC).replace(tzinfo=None),
         rng.randint(1, 40), rng.randint(1, users), rng.choice(kinds)] for _ in range(n)],
        ["event_time", "post_id", "user_id", "event_type"])


def graph(ch: Any, users: int, seed: int) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(tzinfo=None)
    edges = {(a, b) for a in range(1, users + 1) for b in rng.sample(range(1, users + 1), 6)
             if a != b}
    ch.insert("user_relationships", [[a, b, now] for a, b in sorted(edges)],
              ["follower_id", "followee_id", "created_at"])


def test_refresh_trending_writes_the_same_over_http_as_over_chdb(ch, redis_client, settings,
                                                                  cli, names, over_http):
    events(ch, 2000, seed=1)
    key = names["prefix"] + TRENDING

    embedded = run_job("refresh-trending", settings)
    via_chdb = redis_client.get(key)
    redis_client.delete(key)
    result = cli("refresh-trending", extra_env=over_http)

    assert embedded.outcome is Outcome.SUCCESS, embedded.error
    assert result.returncode == 0, result.stderr
    assert len(json.loads(via_chdb)) == 40
    assert redis_client.get(key) == via_chdb
    assert 0 < redis_client.ttl(key) <= 90


def test_refresh_suggestions_writes_the_same_over_http_as_over_chdb(
        ch, front, redis_client, make_settings, cli, names, over_http):
    """In chunks of 64 users over chdb; over HTTP all at once, so many user ids that
    clickhouse-connect sends them as multipart/form-data, not in the URL."""
    graph(ch, 1500, seed=2)
    events(ch, 6000, seed=3, users=1500)  # active users: those with a post event
    settings = make_settings(suggestion_batch_size=0, suggestion_chunk_size=64)
    pattern = f"{names['prefix']}{SUGGESTED}*"

    embedded = run_job("refresh-suggestions", settings)
    via_chdb = {k: redis_client.get(k) for k in redis_client.scan_iter(pattern)}
    redis_client.delete(*via_chdb, f"{names['prefix']}novajobs:suggestions:refreshed")
    front.requests.clear()
    result = cli("refresh-suggestions", "--batch-size", "0", "-s", "suggestion_chunk_size=5000",
                 extra_env=over_http)

    assert embedded.outcome is Outcome.SUCCESS, embedded.error
    assert result.returncode == 0, result.stderr
    assert len(via_chdb) > 1000
    assert {k: redis_client.get(k) for k in redis_client.scan_iter(pattern)} == via_chdb
    assert [r["form"] for r in front.requests if "mutual" in r["query"]] == [True]


def test_the_client_process_does_not_load_chdb(ch, redis_client, env, names, over_http):
    events(ch, 50, seed=4)
    code = ("import sys; from novajobs.cli import run_cli; code = run_cli(['refresh-trending']);"
            " print(code, sorted(m for m in sys.modules if m.split('.')[0] == 'chdb'))")
    done = subprocess.run([sys.executable, "-c", code], env=novajobs_env({**env, **over_http}),
                          capture_output=True, text=True, timeout=120)

    assert done.stdout.split(None, 1) == ["0", "[]\n"], done.stderr


def test_a_wrong_password_is_a_config_error(front, cli, names, over_http):
    result = cli("refresh-trending", extra_env={
        "CLICKHOUSE_URL": front.url(names["database"], password="wrong")})
    one_line_error(result, 78, "ClickHouse error 516: novajobs-front: Authentication failed")


def test_a_missing_table_is_a_config_error_and_a_server_error_one_line(
        ch, front, cli, names, over_http):
    missing = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": front.url("no_such_db")})
    front.fail_with = ("post_events", "Code: 241. DB::Exception: Memory limit (total) exceeded:"
                       " would use 9.31 GiB, maximum: 9.31 GiB. (MEMORY_LIMIT_EXCEEDED)")
    failed = cli("refresh-trending", extra_env=over_http)

    one_line_error(missing, 78, "ClickHouse error 81: Database no_such_db does not exist")
    one_line_error(failed, 1, "ClickHouse error 241: Memory limit (total) exceeded")


def test_ch_timeout_ms_is_honoured_on_a_slow_query(ch, front, cli, over_http):
    events(ch, 10, seed=5)
    front.delay = ("post_events", 20.0)

    started = time.monotonic()
    result = cli("refresh-trending", "-s", "retry_attempts=2",
                 extra_env={**over_http, "JOB_CH_TIMEOUT_MS": "1000"})

    assert result.returncode == 69, result.stderr
    assert "Read timed out" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 15  # two 1 s tries, not the 20 s query


def test_a_sub_second_ch_timeout_still_lets_queries_run(ch, cli, over_http):
    """clickhouse-connect takes whole seconds: 0.5 s became 0, and every query failed."""
    events(ch, 10, seed=6)
    result = cli("refresh-trending", extra_env={**over_http, "JOB_CH_TIMEOUT_MS": "500"})
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def https_front(stack: Any, front: ClickHouseHTTP,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    certs = tls_servers.make_certs(tmp_path_factory.mktemp("ch-certs"))
    server = ClickHouseHTTP(str(stack.dir / "clickhouse"), user="reader", password="s3cr3t",
                            tls=(certs.server, certs.server_key))
    yield server, certs
    server.close()


def test_https_with_a_ca_and_the_wrong_ca_or_host_name(ch, https_front, redis_client, cli, names):
    server, certs = https_front
    events(ch, 100, seed=7)
    url = server.url(names["database"])

    right = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": url,
                                               "NOVAJOBS_TLS_CA_FILE": certs.ca})
    wrong = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": url,
                                               "NOVAJOBS_TLS_CA_FILE": certs.other_ca})
    host = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": url.replace("@127.0.0.1",
                                                                            "@localhost"),
                                              "NOVAJOBS_TLS_CA_FILE": certs.ca})

    assert right.returncode == 0, right.stderr
    assert json.loads(redis_client.get(names["prefix"] + TRENDING))
    one_line_error(wrong, 78, "ClickHouse TLS verification failed: certificate verify failed")
    one_line_error(host, 78, "ClickHouse TLS verification failed: certificate verify failed:"
                   " Hostname mismatch")
