"""Exactly once on every path an entry can take: new -> retry -> promote ->
redelivered by XAUTOCLAIM after its consumer died having written it -> DLQ -> replay
-> success, with the built-in audit-log handler on a real PostgreSQL: one audit row;
then the same path with real processes killed (kill -9) right after each write.
Meta fields (``novajobs:*``) are never written twice into an entry."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from support import drain

from novajobs.streams import dlq, keys, queues
from novajobs.streams.audit import AuditLogHandler
from novajobs.streams.entries import decode_entry

AUDIT = "stream:audit:log"

FLAKY_DDL = """
CREATE TABLE flaky (user_id bigint);
CREATE FUNCTION flaky_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM flaky WHERE user_id = NEW.user_id) THEN
        RAISE EXCEPTION 'flaky failure for user %', NEW.user_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER flaky BEFORE INSERT ON audit_logs FOR EACH ROW EXECUTE FUNCTION flaky_fail();
"""


@pytest.fixture
def audit_db(audit_db: Any) -> Any:
    audit_db.execute(FLAKY_DDL)
    return audit_db


def raw_entries(r: Any, key: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Entries exactly as stored: field pairs in order, duplicates kept (redis-py's dict
    would hide them)."""
    rows = r.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, key)
    return [(i.decode(), [(f[j].decode(errors="replace"), f[j + 1].decode(errors="replace"))
                          for j in range(0, len(f), 2)]) for i, f in rows]


def meta_names(pairs: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in pairs if name.startswith("novajobs:")]


def test_every_path_writes_the_audit_row_once(redis_client, audit_db, fast, names, cli):
    p = names["prefix"]
    k = keys.stream_keys(p, AUDIT)
    settings = fast(stream_retry_initial_sec=0.01, stream_claim_idle_sec=0.3,
                    drain_message_timeout_sec=0.2)
    audit_db.execute("INSERT INTO flaky VALUES (7)")
    first = redis_client.xadd(k.stream, {"user_id": "7", "action": "login", "ts": "1700000000"})
    first = first.decode()

    # new -> fails (not an outage) -> retry set
    rec = drain(settings)
    assert rec.counters["retried"] == 1, (rec.error, rec.counters)
    # retry -> promoted back into the stream, carrying its first id
    assert queues.promote_due(redis_client, k, time.time() + 1, 100) == 1
    [(second, pairs)] = raw_entries(redis_client, k.stream)[1:] or raw_entries(
        redis_client, k.stream)
    assert dict(pairs)["novajobs:id"] == first and meta_names(pairs).count("novajobs:id") == 1

    # a consumer handles it (the row is committed) and dies before its XACK, again and
    # again: XAUTOCLAIM hands it round until it counts as delivered too often
    audit_db.execute("DELETE FROM flaky")
    redis_client.xreadgroup("novajobs", "dead-pod", {k.stream: ">"})
    message = decode_entry(AUDIT, second, redis_client.xrange(k.stream, second, second)[0][1])
    handler = AuditLogHandler(settings)
    assert handler.handle_batch([message]) == {}
    handler.close()
    redis_client.xclaim(k.stream, "novajobs", "dead-pod", 0, [second], retrycount=9)
    time.sleep(0.35)
    rec = drain(settings)
    assert rec.counters["dead_lettered"] == 1, (rec.error, rec.counters)

    # the dead letter names the first id once, and `dlq list` shows it
    [(dead_id, dead)] = raw_entries(redis_client, k.dlq)
    assert meta_names(dead).count("novajobs:id") == 1 and dict(dead)["novajobs:id"] == first
    assert sorted(set(meta_names(dead))) == sorted(meta_names(dead))  # no name twice
    listed = json.loads(cli("dlq", "list", AUDIT, "--json").stdout)
    assert [d["first_id"] for d in listed] == [first]

    # replay -> back in the stream with its first id once -> handled: deduped on it
    [letter] = dlq.read(redis_client, k)
    assert letter.id == dead_id and dlq.replay(redis_client, k, [letter]).replayed == 1
    replayed = raw_entries(redis_client, k.stream)[-1][1]
    assert meta_names(replayed) == ["novajobs:id"] and dict(replayed)["novajobs:id"] == first
    rec = drain(settings)
    assert rec.counters["succeeded"] == 1, (rec.error, rec.counters)

    assert audit_db.execute("SELECT count(*) FROM audit_logs WHERE user_id = 7").fetchone() == (1,)
    assert audit_db.execute("SELECT entry_id FROM novajobs_stream_dedupe").fetchall() == [(first,)]


def test_poison_carrying_meta_is_dead_lettered_with_its_meta_once(
        redis_client, audit_db, fast, names):
    p = names["prefix"]
    k = keys.stream_keys(p, AUDIT)
    redis_client.xadd(k.stream, {"novajobs:id": "5-0", "novajobs:attempts": "2",
                                 "user_id": b"\xff", "action": "x", "ts": "1"})

    rec = drain(fast())

    assert rec.counters["dead_lettered"] == 1, rec.error
    [(_, dead)] = raw_entries(redis_client, k.dlq)
    assert sorted(meta_names(dead)) == sorted(set(meta_names(dead)))
    assert dict(dead)["novajobs:id"] == "5-0"
    [letter] = dlq.read(redis_client, k)
    assert (letter.first_id, letter.attempts) == ("5-0", 2)


def test_legacy_dead_letters_with_a_duplicated_id_replay_their_first_id(
        redis_client, audit_db, fast, names):
    """Dead letters written before the fix carry novajobs:id twice (the first id, then
    their own stream id): list, replay and the handler all take the first."""
    p = names["prefix"]
    k = keys.stream_keys(p, AUDIT)
    audit_db.execute("INSERT INTO novajobs_stream_dedupe (stream, entry_id) VALUES (%s, '1-1')",
                     [AUDIT])
    redis_client.execute_command(
        "XADD", k.dlq, "*", "user_id", "9", "action", "a", "ts", "1", "novajobs:id", "1-1",
        "novajobs:attempts", "4", "novajobs:error", "e", "novajobs:failed_at", "x",
        "novajobs:id", "1700000000000-5")

    [letter] = dlq.read(redis_client, k)
    assert letter.first_id == "1-1"
    assert dlq.replay(redis_client, k, [letter]).replayed == 1
    assert meta_names(raw_entries(redis_client, k.stream)[0][1]) == ["novajobs:id"]
    rec = drain(fast())

    assert rec.counters["succeeded"] == 1, rec.error
    assert audit_db.execute("SELECT count(*) FROM audit_logs").fetchone() == (0,)  # deduped


def test_a_consumer_killed_at_each_step_writes_the_row_once(redis_client, audit_db, cli,
                                                            names, tmp_path):
    """Real processes, kill -9 by the handler itself right after it committed (before
    drain-stream's XACK): new -> fails -> retry -> promote-retries -> handled, killed,
    reclaimed by XAUTOCLAIM and killed again until delivered too often -> DLQ (its
    first id once) -> dlq replay -> handled, killed -> reclaimed -> success. One row."""
    from stream_handlers import entry_point_env

    p = names["prefix"]
    k = keys.stream_keys(p, AUDIT)
    extra = entry_point_env(tmp_path)
    idle = 5.0  # stream_claim_idle_sec, above the message timeout (a PostgreSQL connect
    # under a load of 30 must not overrun it: the call would count as failed)
    flags = ["-s", f"stream_handlers={AUDIT}=audit-die", "-s", f"stream_claim_idle_sec={idle}",
             "-s", "stream_max_retries=1", "-s", "stream_retry_initial_sec=0.01", "-s",
             "stream_retry_jitter=0", "-s", "drain_block_ms=100"]

    def drain_as(consumer: str, mode: str, reclaim: bool = True) -> int:
        """A drain as ``consumer``; ``reclaim``: first wait until what a killed consumer
        left is claimable."""
        redis_client.set(p + "test:mode", mode)
        time.sleep(idle + 0.1 if reclaim else 0)
        run = cli("drain-stream", "--consumer", consumer, "--message-timeout", str(idle - 1),
                  *flags, extra_env=extra)
        assert run.returncode in (0, -9), run.stderr[-2000:]
        return run.returncode

    def rows() -> int:
        return int(audit_db.execute("SELECT count(*) FROM audit_logs").fetchone()[0])

    def pending() -> int:
        return int(redis_client.xpending(k.stream, "novajobs")["pending"])

    first = redis_client.xadd(k.stream, {"user_id": "7", "action": "login",
                                         "ts": "1700000000"}).decode()

    assert drain_as("pod-1", "fail", reclaim=False) == 0 and redis_client.zcard(k.retry) == 1
    assert cli("promote-retries", *flags).returncode == 0
    [(_, promoted)] = raw_entries(redis_client, k.stream)
    assert meta_names(promoted) == ["novajobs:id", "novajobs:attempts"]
    assert dict(promoted)["novajobs:id"] == first
    for n in range(3):  # delivered 1, 2, 3 times: handled (the row committed), killed
        assert drain_as(f"pod-killed-{n}", "die", reclaim=n > 0) == -9
        assert (rows(), pending()) == (1, 1)
    assert drain_as("pod-2", "ok") == 0  # a fourth delivery: too often without an outcome
    [(_, dead)] = raw_entries(redis_client, k.dlq)
    assert meta_names(dead).count("novajobs:id") == 1 and dict(dead)["novajobs:id"] == first
    listed = json.loads(cli("dlq", "list", AUDIT, "--json").stdout)
    assert [d["first_id"] for d in listed] == [first]
    assert cli("dlq", "replay", AUDIT, "--all").returncode == 0
    assert drain_as("pod-killed-3", "die", reclaim=False) == -9 and (rows(), pending()) == (1, 1)
    assert drain_as("pod-3", "ok") == 0

    assert (rows(), pending(), redis_client.zcard(k.retry), redis_client.xlen(k.dlq)) == (
        1, 0, 0, 0)
    assert audit_db.execute("SELECT entry_id FROM novajobs_stream_dedupe").fetchall() == [(first,)]
    assert redis_client.xlen(k.stream) == 0  # trimmed


def test_entries_past_the_dedupe_retention_are_warned_and_counted(redis_client, handlers, fast,
                                                                  names):
    """What may have been handled already and is older than the dedupe retention: a
    pending entry reclaimed from a dead consumer, a replay carrying an old first id. Not
    silent: counted (and warned); a producer's old entry read for the first time is not."""
    handlers("noop", lambda message: None)
    key = names["prefix"] + "q"
    day_ms = 86_400_000
    now_ms = int(time.time() * 1000)
    redis_client.xadd(key, {"n": "1"}, id=f"{now_ms - 40 * day_ms}-0")
    redis_client.xadd(key, {"n": "2"}, id=f"{now_ms - 39 * day_ms}-0")  # never handed out
    redis_client.xgroup_create(key, "novajobs", "0")
    redis_client.xreadgroup("novajobs", "dead-pod", {key: ">"}, count=1)
    redis_client.xadd(key, {"n": "3", "novajobs:id": f"{now_ms - 35 * day_ms}-0"})
    redis_client.xadd(key, {"n": "4", "novajobs:id": f"{now_ms - day_ms}-0"})  # recent enough
    time.sleep(1.05)

    rec = drain(fast(stream_handlers=("q=noop",), stream_claim_idle_sec=1,
                     drain_message_timeout_sec=0.5, stream_dedupe_retention_days=30,
                     stream_dlq_max_age="7d"))

    assert rec.counters["succeeded"] == 4 and rec.counters["reclaimed"] == 1, rec.error
    assert rec.counters["past_dedupe_retention"] == 2
    assert rec.details["streams"]["q"]["past_dedupe_retention"] == 2
