"""An outage is not a poison message: drain-stream with its store down stops
with exit 69 and leaves every entry pending with its counts untouched; nothing reaches
the retry set or the DLQ because of an outage; everything drains once the store is back.
Also: a run stopped by a missing table says truly what it left pending, and the next
run of the same consumer picks those entries up at once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import drain

from novajobs.errors import Outcome
from novajobs.runner import run_job
from novajobs.schema import ensure_tables
from novajobs.streams.handlers import Message, Unavailable
from novajobs.streams.keys import stream_keys
from novajobs_dev.netfaults import black_hole, refused_port

AUDIT = "stream:audit:log"


def deliveries(r: Any, key: str) -> dict[str, int]:
    """entry id -> times delivered, for every pending entry of the group."""
    rows = r.xpending_range(key, "novajobs", "-", "+", 10_000)
    return {row["message_id"].decode(): int(row["times_delivered"]) for row in rows}


def add_audit(r: Any, key: str, n: int) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, {"user_id": str(i), "action": f"login {i}", "ts": str(1_700_000_000 + i)})
    return [i.decode() for i in pipe.execute()]


def test_postgres_down_stops_the_drain_and_touches_no_entry(
        redis_client, audit_db, fast, names):
    p = names["prefix"]
    key = p + AUDIT
    ids = add_audit(redis_client, key, 300)
    url = f"postgresql://postgres@127.0.0.1:{refused_port()}/postgres"
    down = fast(database_url=url, stream_max_retries=1, stream_retry_initial_sec=0.01,
                stream_claim_idle_sec=30)

    for attempt in range(6):  # more runs than the retry and redelivery limits allow
        rec = drain(down)
        assert rec.outcome is Outcome.UNAVAILABLE and rec.exit_code == 69, (attempt, rec.error)
        assert "left pending" in rec.error and "audit-log" in rec.error, rec.error
        assert rec.counters["retried"] == rec.counters["dead_lettered"] == 0, rec.counters
        assert rec.counters["succeeded"] == 0
        assert rec.counters["left_pending"] == rec.counters["received"] > 0, rec.counters
        assert run_job("promote-retries", down).outcome is Outcome.NOTHING_TO_DO
        pending = deliveries(redis_client, key)
        assert set(pending) <= set(ids) and set(pending.values()) == {0}, pending  # untouched
    assert redis_client.exists(stream_keys(p, AUDIT).retry, stream_keys(p, AUDIT).dlq) == 0
    assert redis_client.keys(p + "*retry*") == redis_client.keys(p + "*dlq*") == []

    back = drain(fast())  # the same consumer, the store is back: no waiting for idle time

    assert back.outcome is Outcome.SUCCESS, back.error
    assert back.counters["succeeded"] == 300
    count, users = audit_db.execute(
        "SELECT count(*), count(DISTINCT user_id) FROM audit_logs").fetchone()
    assert (count, users) == (300, 300)
    assert deliveries(redis_client, key) == {}
    assert redis_client.keys(p + "*dlq*") == []


def test_entries_left_by_an_outage_go_to_another_consumer_at_once(
        redis_client, audit_db, fast, names):
    key = names["prefix"] + AUDIT
    add_audit(redis_client, key, 40)
    url = f"postgresql://postgres@127.0.0.1:{refused_port()}/postgres"
    rec = drain(fast(database_url=url, stream_consumer="pod-a", stream_claim_idle_sec=600))
    assert rec.exit_code == 69 and rec.counters["left_pending"] == 40, rec.counters

    other = drain(fast(stream_consumer="pod-b", stream_claim_idle_sec=600))

    assert other.counters["reclaimed"] == 40 and other.counters["succeeded"] == 40, other.error
    assert audit_db.execute("SELECT count(*) FROM audit_logs").fetchone()[0] == 40


def test_a_handler_says_its_infrastructure_is_unavailable(redis_client, handlers, fast, names):
    """Unavailable (and connection errors of the drivers) stop the run; an ordinary failure
    of another message in the same run is still retried."""

    def service(message: Message) -> None:
        if message.fields["n"] == "bad":
            raise ValueError("this message is wrong")
        if message.fields["n"] == "3":
            raise Unavailable("the story service answers 503")

    handlers("svc", service)
    p = names["prefix"]
    ids = [redis_client.xadd(p + "q", {"n": n}).decode() for n in ("bad", "1", "2", "3", "4")]
    settings = fast(stream_handlers=("q=svc",), drain_concurrency=1)

    rec = drain(settings)

    assert rec.outcome is Outcome.UNAVAILABLE, rec.error
    assert "the story service answers 503" in rec.error
    assert rec.counters["retried"] == 1 and rec.counters["succeeded"] == 2, rec.counters
    assert rec.counters["left_pending"] == 2  # "3" and "4": never failed, just not done
    assert deliveries(redis_client, p + "q") == {ids[3]: 0, ids[4]: 0}
    assert redis_client.zcard(stream_keys(p, "q").retry) == 1
    assert not redis_client.exists(stream_keys(p, "q").dlq)


@pytest.mark.cluster
def test_entries_read_ahead_when_the_run_stops_are_given_back(redis_client, handlers, fast,
                                                              names):
    """A full read starts the next one ahead (reader.py). When an outage stops the run,
    what that read brought and no call took is given back like every untried entry
    (delivery count 0, claimable at once), and the next run handles each entry once."""
    handled: list[str] = []

    def service(message: Message) -> None:
        if len(handled) >= 12_000:
            raise Unavailable("the service went away")
        handled.append(message.entry_id)

    handlers("svc", service)
    key = names["prefix"] + "q"
    pipe = redis_client.pipeline(transaction=False)
    for i in range(30_000):
        pipe.xadd(key, {"n": str(i)})
    ids = {i.decode() for i in pipe.execute()}
    settings = fast(stream_handlers=("q=svc",), drain_concurrency=2,
                    drain_max_messages=100_000)

    rec = drain(settings)

    assert rec.outcome is Outcome.UNAVAILABLE, rec.error
    first = set(handled)
    pending = deliveries(redis_client, key)
    assert len(first) == len(handled) >= 12_000 and not first & set(pending)
    # pending: what the run took and left, and what it had read ahead (more than that)
    assert len(pending) > rec.counters["left_pending"], (len(pending), rec.counters)
    assert set(pending.values()) == {0}  # all given back
    handled.clear()
    handlers("svc", lambda message: handled.append(message.entry_id))

    again = drain(settings)

    assert again.outcome is Outcome.SUCCESS, again.error
    assert len(handled) == len(set(handled)) and first | set(handled) == ids
    assert deliveries(redis_client, key) == {}


def test_driver_connection_errors_count_as_an_outage(redis_client, handlers, fast, names):
    import redis

    def cache_down(message: Message) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    handlers("cache", cache_down)
    p = names["prefix"]
    for i in range(5):
        redis_client.xadd(p + "q", {"n": str(i)})

    rec = drain(fast(stream_handlers=("q=cache",), drain_failure_limit=2))

    assert rec.exit_code == 69, rec.error  # not 1 ("failed in a row") and nothing retried
    assert rec.counters["retried"] == 0 and rec.counters["left_pending"] == 5, rec.counters
    assert set(deliveries(redis_client, p + "q").values()) == {0}


def test_missing_table_reports_what_it_left_and_the_next_run_takes_it(
        redis_client, pg, pg_tables, cli, names):
    pg_tables("audit_logs")
    key = names["prefix"] + AUDIT
    add_audit(redis_client, key, 3)

    run = cli("drain-stream", "-s", "drain_block_ms=100", "--json")

    assert run.returncode == 78, run.stderr
    assert "novajobs init-db" in run.stderr and "3 entries left pending" in run.stderr
    record = json.loads(run.stdout)
    assert record["counters"]["left_pending"] == 3, record
    assert deliveries(redis_client, key) == dict.fromkeys(deliveries(redis_client, key), 0)

    ensure_tables(pg, ["novajobs_stream_dedupe"])
    again = cli("drain-stream", "-s", "drain_block_ms=100", "--json")

    assert again.returncode == 0, again.stderr
    assert "no entries to drain" not in again.stderr
    assert json.loads(again.stdout)["counters"]["succeeded"] == 3
    assert pg.execute("SELECT count(*) FROM audit_logs").fetchone()[0] == 3
    assert deliveries(redis_client, key) == {}


def test_postgres_black_holed_stops_within_seconds(redis_client, audit_db, fast, names):
    """A listener that accepts and never answers: the handler's connect times out, which is
    an outage like a refused connection (nothing retried, everything left pending)."""
    key = names["prefix"] + AUDIT
    add_audit(redis_client, key, 20)
    with black_hole() as hole:  # never answers
        url = f"postgresql://postgres@127.0.0.1:{hole.port}/postgres"
        rec = drain(fast(database_url=url, connect_timeout_sec=1, drain_concurrency=4))

    assert rec.exit_code == 69, rec.error
    assert rec.duration_ms < 15_000  # one connect timeout per worker at once, not per entry
    assert rec.counters["left_pending"] == rec.counters["received"] == 20, rec.counters
    assert set(deliveries(redis_client, key).values()) == {0}
    assert redis_client.keys(names["prefix"] + "*retry*") == []


def test_a_misconfigured_store_stops_with_78_and_touches_no_entry(
        redis_client, audit_db, fast, names, stack_env):
    """A DATABASE_URL naming a database that does not exist is not the entries' fault
    either, and no retry can fix it: exit 78, every entry left pending untouched."""
    key = names["prefix"] + AUDIT
    add_audit(redis_client, key, 10)
    url = stack_env["DATABASE_URL"].rsplit("/", 1)[0] + "/no_such_database"

    rec = drain(fast(database_url=url))

    assert rec.exit_code == 78, rec.error
    assert "no_such_database" in rec.error and "10 entries left pending" in rec.error
    assert rec.counters["retried"] == 0 and rec.counters["left_pending"] == 10
    assert set(deliveries(redis_client, key).values()) == {0}
