"""drain-stream's worker side on a real Redis: handler timeout, reclaim from a dead consumer,
priority across streams, the concurrency bound, the failure limit, the per-consumer lock."""

from __future__ import annotations

import sys
import threading
import time
import types
from typing import Any

import pytest
from stream_handlers import Gauge, Recorder
from support import drain

from novajobs.errors import Outcome
from novajobs.lock import JobLock
from novajobs.streams.handlers import Message
from novajobs.streams.keys import stream_keys


def test_a_handler_that_overruns_its_timeout_fails_and_never_holds_the_run(
        redis_client, handlers, fast, names):
    release = threading.Event()
    started: list[str] = []

    def stuck(message: Message) -> None:
        started.append(message.id)
        release.wait(10)

    handlers("stuck", stuck)
    p = names["prefix"]
    ids = [redis_client.xadd(p + "slow", {"n": str(i)}).decode() for i in range(3)]
    settings = fast(stream_handlers=("slow=stuck",), drain_message_timeout_sec=0.3,
                    drain_concurrency=2, stream_claim_idle_sec=5)
    try:
        began = time.monotonic()
        rec = drain(settings)
        elapsed = time.monotonic() - began
    finally:
        release.set()

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert elapsed < 2.5  # 2 stuck calls hold both slots for good: the run still ends
    # two calls timed out and went to the retry set; their threads keep both slots (the
    # bound holds), so the run ends: the third entry, read ahead, stays pending for a
    # later run to reclaim
    assert rec.counters["timed_out"] == 2 and rec.counters["retried"] == 2
    assert rec.counters["received"] == 3 and rec.counters["left_pending"] == 1
    assert sorted(started) == sorted(ids[:2])
    members = redis_client.zrange(stream_keys(p, "slow").retry, 0, -1)
    assert all(b"overran 0.3 s" in m for m in members) and len(members) == 2
    [left] = redis_client.xpending_range(p + "slow", "novajobs", "-", "+", 10)
    assert left["message_id"].decode() == ids[2]


def test_a_call_that_overruns_mid_task_does_not_hold_back_the_others(
        redis_client, handlers, fast, names):
    release = threading.Event()

    def sometimes_stuck(message: Message) -> None:
        if message.fields["n"] == "5":
            release.wait(10)

    handlers("sometimes", sometimes_stuck)
    p = names["prefix"]
    ids = [redis_client.xadd(p + "q", {"n": str(i)}).decode() for i in range(20)]
    settings = fast(stream_handlers=("q=sometimes",), drain_message_timeout_sec=0.3,
                    drain_concurrency=2, stream_claim_idle_sec=5)
    try:
        rec = drain(settings)
    finally:
        release.set()

    assert rec.counters["succeeded"] == 19 and rec.counters["timed_out"] == 1, rec.counters
    [member] = redis_client.zrange(stream_keys(p, "q").retry, 0, -1)
    assert f'"id":"{ids[5]}"'.encode() in member
    assert redis_client.xpending(p + "q", "novajobs")["pending"] == 0


@pytest.mark.cluster
def test_reclaim_from_a_dead_consumer(redis_client, handlers, fast, names):
    handlers("recorder", Recorder)
    p = names["prefix"]
    key = p + "work"
    redis_client.xgroup_create(key, "novajobs", "0", mkstream=True)
    ids = [redis_client.xadd(key, {"n": str(i)}).decode() for i in range(5)]
    redis_client.xreadgroup("novajobs", "dead-pod", {key: ">"})  # read, never acked
    poison = redis_client.xadd(key, {"n": "kills its consumer"}).decode()
    redis_client.xreadgroup("novajobs", "dead-pod", {key: ">"})
    redis_client.xclaim(key, "novajobs", "dead-pod", 0, [poison], retrycount=9)
    time.sleep(2.05)
    # A handler call may take more than a few tenths of a second at load (or when it
    # first meets a cluster's nodes): a timeout would retry it, not count it done.
    settings = fast(stream_handlers=("work=recorder",), stream_claim_idle_sec=2,
                    drain_message_timeout_sec=1.5)

    rec = drain(settings)

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["reclaimed"] == 6
    assert rec.counters["succeeded"] == 5 and rec.counters["dead_lettered"] == 1, rec.counters
    assert {m.decode() for m in redis_client.smembers(p + "test:done")} == set(ids)
    [(_, dead)] = redis_client.xrange(stream_keys(p, "work").dlq)
    assert b"delivered 10 times" in dead[b"novajobs:error"]
    assert redis_client.xpending(key, "novajobs")["pending"] == 0


def test_higher_priority_streams_are_served_first(redis_client, handlers, fast, names):
    handlers("recorder", Recorder)
    p = names["prefix"]
    for i in range(10):
        redis_client.xadd(p + "low", {"n": str(i)})
        redis_client.xadd(p + "high", {"n": str(i)})
        redis_client.xadd(p + "normal", {"n": str(i)})
    settings = fast(stream_handlers=("low=recorder", "normal=recorder", "high=recorder"),
                    stream_priorities=("low=9", "high=1"), drain_concurrency=1)

    rec = drain(settings)

    assert rec.counters["succeeded"] == 30, rec.error
    order = [item.decode().split()[0] for item in redis_client.lrange(p + "test:order", 0, -1)]
    assert order == ["high"] * 10 + ["normal"] * 10 + ["low"] * 10


def test_concurrency_bound_is_respected(redis_client, handlers, fast, names):
    gauge = Gauge()

    def busy(message: Message) -> None:
        with gauge:
            time.sleep(0.03)

    handlers("busy", busy)
    p = names["prefix"]
    for i in range(60):
        redis_client.xadd(p + "q", {"n": str(i)})

    rec = drain(fast(stream_handlers=("q=busy",), drain_concurrency=4))

    assert rec.counters["succeeded"] == 60, rec.error
    assert gauge.most == 4


def test_budget_max_messages(redis_client, handlers, fast, names):
    handlers("recorder", Recorder)
    p = names["prefix"]
    for i in range(50):
        redis_client.xadd(p + "q", {"n": str(i)})

    rec = drain(fast(stream_handlers=("q=recorder",), drain_max_messages=20))

    assert rec.counters["received"] == 20 and rec.counters["succeeded"] == 20
    assert redis_client.scard(p + "test:done") == 20
    info = redis_client.xinfo_groups(p + "q")[0]
    assert info["pending"] == 0 and info["lag"] == 30


def test_failure_limit_holds_when_calls_still_running_succeed(redis_client, handlers, fast,
                                                              names):
    """The limit is reached while another worker's calls run on and then succeed: the run
    still stops reading and ends with exit 1 (their successes do not undo it)."""
    def handle(message: Message) -> None:
        if message.fields["kind"] == "bad":
            raise ValueError("bad entry")
        time.sleep(0.2)

    handlers("mixed", handle)
    p = names["prefix"]
    for kind in ["bad"] * 10 + ["good"] * 30:
        redis_client.xadd(p + "q", {"kind": kind})

    rec = drain(fast(stream_handlers=("q=mixed",), drain_failure_limit=5, drain_concurrency=2))

    assert rec.outcome is Outcome.FAILED and "failed in a row" in rec.error, rec.error
    assert rec.counters["retried"] == 10 and rec.counters["succeeded"] >= 1


def test_a_batch_that_fails_whole_is_one_failed_call(redis_client, handlers, fast, names):
    """A batch handler's call failing whole (one transaction) counts once towards the
    failure limit, not once per entry: 50 entries of one failed call do not stop a run
    whose limit is 10 (they once did, and the run then ended as a success with most of
    the stream not read)."""
    from novajobs.streams.handlers import Handler

    class Batchy(Handler):
        batch_size = 50

        def handle_batch(self, messages: Any) -> dict[str, BaseException]:
            if any(m.fields["n"] == "0" for m in messages):
                raise RuntimeError("the whole batch failed")
            time.sleep(0.1)  # (the failed call is settled alone, before any success)
            return {}

    handlers("batchy", Batchy)
    p = names["prefix"]
    for i in range(300):  # one worker: two calls read at a time
        redis_client.xadd(p + "q", {"n": str(i)})

    rec = drain(fast(stream_handlers=("q=batchy",), drain_failure_limit=10,
                     drain_concurrency=1))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert (rec.counters["retried"], rec.counters["succeeded"]) == (50, 250)
    assert redis_client.xinfo_groups(p + "q")[0]["lag"] == 0


def test_failure_limit_stops_the_run(redis_client, handlers, fast, names):
    def down(message: Message) -> None:  # a bug that fails every entry (an outage: 69)
        raise KeyError("field the new producer version no longer sends")

    handlers("down", down)
    p = names["prefix"]
    for i in range(100):
        redis_client.xadd(p + "q", {"n": str(i)})

    rec = drain(fast(stream_handlers=("q=down",), drain_failure_limit=5, drain_concurrency=1))

    assert rec.outcome is Outcome.FAILED and rec.exit_code == 1
    assert "handler calls failed in a row; stopped early" in rec.error
    # what was read ahead (two tasks of 32 calls at most) is settled; the rest is not read
    assert 5 <= rec.counters["retried"] == rec.counters["received"] <= 64
    assert redis_client.zcard(stream_keys(p, "q").retry) == rec.counters["retried"]
    assert redis_client.xinfo_groups(p + "q")[0]["lag"] == 100 - rec.counters["received"]


@pytest.mark.cluster
def test_the_lock_is_per_consumer(redis_client, handlers, fast, names):
    handlers("recorder", Recorder)
    p = names["prefix"]
    redis_client.xadd(p + "q", {"n": "1"})
    held = JobLock(redis_client, p + "job:lock:drain-stream:pod-a", 30, {"run_id": "other"})
    assert held.acquire()
    try:
        skipped = drain(fast(stream_handlers=("q=recorder",), stream_consumer="pod-a"))
        ran = drain(fast(stream_handlers=("q=recorder",), stream_consumer="pod-b"))
    finally:
        held.release()

    assert skipped.outcome is Outcome.SKIPPED and "pod-a" in skipped.message
    assert ran.outcome is Outcome.SUCCESS and ran.counters["succeeded"] == 1


def test_a_driver_still_being_imported_by_another_worker_does_not_kill_the_pool(
        redis_client, handlers, fast, names, monkeypatch):
    """A handler's first `import psycopg` in one worker thread while another worker's
    handler fails: the failing call is classified while sys.modules holds a psycopg with
    no attributes yet. Seen in the demo as a dead worker thread, then an IndexError and
    exit 1 from a run whose entries had simply failed."""
    def broken(message: Message) -> None:
        raise KeyError("a field the producer no longer sends")

    handlers("broken", broken)
    p = names["prefix"]
    for i in range(3):
        redis_client.xadd(p + "q", {"n": str(i)})
    monkeypatch.setitem(sys.modules, "psycopg", types.ModuleType("psycopg"))  # mid-import

    rec = drain(fast(stream_handlers=("q=broken",), drain_concurrency=2,
                     drain_message_timeout_sec=2))

    monkeypatch.undo()
    assert rec.outcome is Outcome.SUCCESS, rec.error  # failed entries are retried later
    assert rec.counters["retried"] == 3 and rec.counters.get("left_pending", 0) == 0
    assert redis_client.zcard(stream_keys(p, "q").retry) == 3
