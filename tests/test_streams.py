"""drain-stream, promote-retries and the DLQ against a real Redis (and PostgreSQL for the
audit-log handler): retries and backoff, DLQ, poison, timeouts, reclaim, priority,
concurrency bound, replay, atomic promotion, failure limit, per-consumer lock."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from typing import Any

import pytest
from support import drain, spawn, wait_for

from novajobs.errors import Outcome
from novajobs.runner import run_job
from novajobs.streams import dlq, queues
from novajobs.streams.handlers import Message
from novajobs.streams.keys import stream_keys

AUDIT = "stream:audit:log"


def add(r: Any, key: str, n: int, **fields: Any) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(key, {k: (v(i) if callable(v) else v) for k, v in fields.items()} or {"i": i})
    return [i.decode() for i in pipe.execute()]


def pending(r: Any, key: str, group: str = "novajobs") -> int:
    return int(r.xpending(key, group)["pending"])


# -- the audit-log handler -------------------------------------------------------------------
@pytest.mark.cluster
def test_audit_entries_become_rows_exactly_once(redis_client, audit_db, fast, names):
    key = names["prefix"] + AUDIT
    audit_db.execute("INSERT INTO audit_logs (user_id, action) VALUES (-1, 'written by them')")
    add(redis_client, key, 500, user_id=lambda i: i, action=lambda i: f"login {i}",
        ts=lambda i: f"{1_700_000_000 + i}.25")

    rec = drain(fast(stream_trim=False))  # kept, to be delivered again below

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["received"] == rec.counters["succeeded"] == 500, rec.counters
    rows = audit_db.execute("SELECT user_id, action, extract(epoch FROM created_at) FROM audit_logs"
                            " WHERE user_id >= 0 ORDER BY user_id").fetchall()
    assert [(u, a, float(t)) for u, a, t in rows] == [
        (i, f"login {i}", 1_700_000_000 + i + 0.25) for i in range(500)]
    assert pending(redis_client, key) == 0
    assert redis_client.xinfo_consumers(key, "novajobs") == []  # our empty consumer is gone

    # every entry delivered again (as after a crash before XACK): no second row
    redis_client.xgroup_setid(key, "novajobs", "0")
    again = drain(fast())
    assert again.counters["succeeded"] == 500 and again.counters["trimmed"] == 500
    assert audit_db.execute("SELECT count(*) FROM audit_logs").fetchone()[0] == 501
    assert audit_db.execute("SELECT action FROM audit_logs WHERE user_id = -1").fetchall() == [
        ("written by them",)]


@pytest.mark.cluster
def test_poison_entries_go_straight_to_the_dlq(redis_client, audit_db, fast, names):
    key = names["prefix"] + AUDIT
    good = {"user_id": "1", "action": "ok", "ts": "1700000000"}
    bad = [
        {"user_id": b"\xff\xfe", "action": "x", "ts": "1"},  # not UTF-8: cannot be decoded
        {"action": "x", "ts": "1"},
        {"user_id": "abc", "action": "x", "ts": "1"},
        {"user_id": "2", "action": "x", "ts": "soon"},
        {"user_id": "3", "action": "a\x00b", "ts": "1"},
    ]
    ids = [redis_client.xadd(key, f).decode() for f in [good, *bad]]

    rec = drain(fast())

    assert rec.outcome is Outcome.SUCCESS
    assert rec.counters["succeeded"] == 1 and rec.counters["dead_lettered"] == 5
    assert rec.counters["retried"] == 0
    assert audit_db.execute("SELECT user_id, action FROM audit_logs").fetchall() == [(1, "ok")]
    dead = redis_client.xrange(stream_keys(names["prefix"], AUDIT).dlq)
    assert [f[b"novajobs:id"].decode() for _, f in dead] == ids[1:]
    assert dead[0][1][b"user_id"] == b"\xff\xfe"  # the original bytes, kept as they were
    errors = [f[b"novajobs:error"].decode() for _, f in dead]
    assert "cannot be decoded" in errors[0] and "lacks field user_id" in errors[1]
    assert "not a 64-bit integer" in errors[2] and "Unix time" in errors[3] and "NUL" in errors[4]
    assert pending(redis_client, key) == 0
    assert redis_client.zcard(stream_keys(names["prefix"], AUDIT).retry) == 0


@pytest.mark.cluster
def test_fields_reach_the_handler_exactly_as_written(redis_client, handlers, fast, names):
    """Control characters, quotes and backslashes, text beyond ASCII, empty values and
    number-like names arrive as written; a batch with an entry that is not UTF-8
    dead-letters only that one, byte for byte."""
    seen: list[tuple[str, dict[str, str], int]] = []
    handlers("keep", lambda m: seen.append((m.id, dict(m.fields), m.attempts)))
    key = names["prefix"] + "q"
    written = [
        {"q": 'a "quoted" \\ back/slash', "ctl": "\x00\x01\n\t\x7f\x1b", "1": "one"},
        {"uni": "\u00e9\u6f22\U0001f600", "empty": "", "novajobs-ish": "x"},
        {"n": "2", "novajobs:id": "5-0", "novajobs:attempts": "1"},  # a promoted retry
    ]
    ids = [redis_client.xadd(key, f).decode() for f in written]
    settings = fast(stream_handlers=("q=keep",), drain_concurrency=1)

    rec = drain(settings)

    assert rec.counters["succeeded"] == 3, rec.error
    assert seen == [(ids[0], written[0], 0), (ids[1], written[1], 0), ("5-0", {"n": "2"}, 1)]
    poison = redis_client.xadd(key, {"ok": "1", "bad": b"\xc3(\xff"}).decode()
    last = redis_client.xadd(key, {"after": "the poison", **written[0]}).decode()
    rec = drain(settings)
    assert rec.counters["succeeded"] == 1 and rec.counters["dead_lettered"] == 1, rec.error
    assert seen[3:] == [(last, {"after": "the poison", **written[0]}, 0)]
    [(_, dead)] = redis_client.xrange(stream_keys(names["prefix"], "q").dlq)
    assert (dead[b"bad"], dead[b"ok"], dead[b"novajobs:id"]) == (b"\xc3(\xff", b"1",
                                                                  poison.encode())


def test_missing_dedupe_table_stops_the_run_and_acks_nothing(redis_client, pg, pg_tables, cli,
                                                            names):
    pg_tables("audit_logs")
    key = names["prefix"] + AUDIT
    add(redis_client, key, 3, user_id=1, action="a", ts="1")

    run = cli("drain-stream", "-s", "drain_block_ms=100")

    assert run.returncode == 78, run.stderr
    assert "novajobs init-db" in run.stderr
    assert pending(redis_client, key) == 3  # left for a later run, not retried or DLQ'd
    assert redis_client.exists(stream_keys(names["prefix"], AUDIT).dlq,
                               stream_keys(names["prefix"], AUDIT).retry) == 0


# -- retries, backoff, DLQ -------------------------------------------------------------------
@pytest.mark.cluster
def test_retry_schedule_backoff_then_dlq(redis_client, handlers, fast, names):
    def always_fails(message: Message) -> None:
        raise RuntimeError(f"boom {message.attempts}")

    handlers("failing", always_fails)
    settings = fast(stream_handlers=("jobs=failing",), stream_retry_initial_sec=10,
                    stream_retry_multiplier=3, stream_retry_max_sec=50, stream_max_retries=3)
    p = names["prefix"]
    keys = stream_keys(p, "jobs")
    first = redis_client.xadd(p + "jobs", {"task": "x", "n": "1"}).decode()

    for attempt, delay in ((1, 10), (2, 30), (3, 50)):  # 90 is capped at 50
        before = time.time()
        rec = drain(settings)
        assert rec.counters["retried"] == 1 and rec.counters["succeeded"] == 0, rec.error
        [(member, due)] = redis_client.zrange(keys.retry, 0, -1, withscores=True)
        item = json.loads(member)
        assert item["id"] == first and item["attempts"] == str(attempt)
        assert item["entry"] == ["task", "x", "n", "1", "novajobs:id", first,
                                 "novajobs:attempts", str(attempt)]
        assert item["error"].startswith("Runtime")
        assert before + delay <= due <= time.time() + delay
        assert queues.promote_due(redis_client, keys, due, 100) == 1
        assert redis_client.zcard(stream_keys(p, "jobs").retry) == 0

    rec = drain(settings)  # the 4th failure: out of retries
    assert rec.counters["dead_lettered"] == 1 and rec.counters["retried"] == 0
    [letter] = dlq.read(redis_client, keys)
    assert (letter.first_id, letter.attempts, letter.fields) == (first, 4, {"task": "x", "n": "1"})
    assert letter.error == "RuntimeError: boom 3"
    assert pending(redis_client, p + "jobs") == 0


def test_retry_delay_jitter_and_cap(make_settings):
    s = make_settings(stream_retry_initial_sec=2, stream_retry_multiplier=2,
                      stream_retry_max_sec=100, stream_retry_jitter=0.25)
    rng = random.Random(3)
    for failures, base in ((1, 2), (2, 4), (3, 8), (6, 64)):
        delays = [queues.retry_delay(failures, s, rng) for _ in range(200)]
        assert base * 0.75 <= min(delays) < base * 0.85 and base * 1.15 < max(delays) <= base * 1.25
    assert all(queues.retry_delay(10, s, rng) <= 100 for _ in range(100))


@pytest.mark.cluster
def test_promote_reads_members_written_before_the_entry_field(redis_client, names):
    """A retry member of an older version (fields without meta, id and attempts apart)
    is promoted with its meta once; an unreadable one goes to the DLQ verbatim."""
    keys = stream_keys(names["prefix"], "s")
    old = json.dumps({"id": "7-0", "attempts": "2", "fields": ["a", "b"], "error": "e"})
    redis_client.zadd(keys.retry, {old: 1, "not json": 2})

    assert queues.promote_due(redis_client, keys, 10, 100) == 2

    [(_, fields)] = redis_client.xrange(keys.stream)
    assert fields == {b"a": b"b", b"novajobs:id": b"7-0", b"novajobs:attempts": b"2"}
    [letter] = dlq.read(redis_client, keys)
    assert letter.raw[b"novajobs:raw"] == b"not json" and not letter.replayable


@pytest.mark.cluster
def test_promote_retries_job_counts_due_and_later(redis_client, fast, names):
    p = names["prefix"]
    now = time.time()
    msg = Message("stream:audit:log", "1-0", "1-0", {"a": "b"})
    redis_client.zadd(stream_keys(p, AUDIT).retry, {queues.retry_member(msg, 1, "e"): now - 1,
                                                    queues.retry_member(msg, 2, "e"): now + 600})
    rec = run_job("promote-retries", fast())
    assert rec.outcome is Outcome.SUCCESS
    assert {k: rec.counters[k] for k in ("promoted", "scheduled_later")} == {
        "promoted": 1, "scheduled_later": 1}
    [(_, fields)] = redis_client.xrange(p + AUDIT)
    assert fields == {b"a": b"b", b"novajobs:id": b"1-0", b"novajobs:attempts": b"1"}
    assert run_job("promote-retries", fast()).outcome is Outcome.NOTHING_TO_DO


@pytest.mark.cluster
def test_promote_is_atomic_under_kill_and_races(redis_client, env, names):
    p, total = names["prefix"], 3000
    msgs = [Message("s", f"{i}-0", f"{i}-0", {"i": str(i)}) for i in range(total)]
    pipe = redis_client.pipeline(transaction=False)
    for m in msgs:
        pipe.zadd(stream_keys(p, "s").retry, {queues.retry_member(m, 1, "e"): 1000})
    pipe.execute()

    proc = spawn(env, "promote-retries", "s", "-s", "stream_promote_batch=1",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: redis_client.xlen(p + "s") > 200, 30)
    proc.kill()  # SIGKILL between two scripts, wherever that is
    proc.wait()
    left, moved = redis_client.zcard(stream_keys(p, "s").retry), redis_client.xlen(p + "s")
    assert left > 0 and left + moved == total

    workers = [threading.Thread(target=promote_all, args=(redis_client, p)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ids = [f[b"novajobs:id"].decode() for _, f in redis_client.xrange(p + "s")]
    assert sorted(ids) == sorted(m.id for m in msgs)  # each exactly once
    assert redis_client.zcard(stream_keys(p, "s").retry) == 0


def promote_all(r: Any, prefix: str) -> None:
    while queues.promote_due(r, stream_keys(prefix, "s"), time.time(), 7):
        pass


def test_a_fenced_round_acks_more_ids_than_lua_unpacks_at_once(redis_client, names):
    """A settle round behind the lock's fence is one script; Lua's unpack takes some 8000
    values at most, so a round's XACK goes in chunks (a drain reading 5000 at a time can
    settle more than that in one round)."""
    from novajobs.fencing import Fence
    from novajobs.streams.settle import Round, write_round

    p = names["prefix"]
    keys = stream_keys(p, "big")
    pipe = redis_client.pipeline(transaction=False)
    for i in range(9000):
        pipe.xadd(keys.stream, {"n": str(i)})
    ids = [i.decode() for i in pipe.execute()]
    redis_client.xgroup_create(keys.stream, "novajobs", "0")
    redis_client.xreadgroup("novajobs", "c", {keys.stream: ">"}, count=9000)

    write_round(redis_client, {"big": keys}, "novajobs", Round(acks={"big": ids}),
                Fence(p + "job:lock:t", 7, p))

    assert redis_client.xpending(keys.stream, "novajobs")["pending"] == 0
