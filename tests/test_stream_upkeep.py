"""Bounded memory and visible lag on a real Redis: trimming with two consumer
groups at different positions, the DLQ cap, the lag figures of a hand-built stream,
and the cluster-ready key names with the migration of the old ones."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support import drain, expr_samples, promtool_test

from novajobs.errors import ConfigError, Outcome
from novajobs.metrics import STREAM_GAUGES
from novajobs.runner import run_job
from novajobs.streams import dlq
from novajobs.streams.keys import hash_tag, migrate_legacy, slot, stream_keys
from novajobs.streams.lag import measure
from novajobs.streams.settle import trim_acked


def ids_of(r: Any, key: str) -> list[str]:
    return [i.decode() for i, _ in r.xrange(key)]


@pytest.mark.cluster
def test_trim_keeps_what_any_group_still_needs(redis_client, handlers, fast, names):
    """Group "novajobs" drains everything; group "billing" has read 10 entries and acked
    4 of them: entries from billing's oldest pending one on stay, the rest is trimmed."""
    handlers("noop", lambda message: None)
    key = names["prefix"] + "events"
    ids = [redis_client.xadd(key, {"n": str(i)}).decode() for i in range(30)]
    redis_client.xgroup_create(key, "billing", "0")
    read = redis_client.xreadgroup("billing", "b1", {key: ">"}, count=10)[0][1]
    redis_client.xack(key, "billing", *[i for i, _ in read[:4]])

    rec = drain(fast(stream_handlers=("events=noop",)))

    assert rec.counters["succeeded"] == 30, rec.error
    assert rec.counters["trimmed"] == 4
    assert ids_of(redis_client, key) == ids[4:]
    # billing can still read (and ack) every entry it had not: nothing unread was trimmed
    rest = redis_client.xreadgroup("billing", "b1", {key: ">"})[0][1]
    assert [i.decode() for i, _ in rest] == ids[10:]
    pending = redis_client.xpending_range(key, "billing", "-", "+", 100)
    assert [p["message_id"].decode() for p in pending] == ids[4:]

    redis_client.xack(key, "billing", *ids[4:])
    assert trim_acked(redis_client, stream_keys(names["prefix"], "events")) == 26
    assert redis_client.xlen(key) == 0


def test_a_group_that_has_read_nothing_keeps_everything(redis_client, handlers, fast, names):
    handlers("noop", lambda message: None)
    key = names["prefix"] + "events"
    for i in range(5):
        redis_client.xadd(key, {"n": str(i)})
    redis_client.xgroup_create(key, "late", "0")

    rec = drain(fast(stream_handlers=("events=noop",)))

    assert rec.counters["succeeded"] == 5 and rec.counters["trimmed"] == 0
    assert redis_client.xlen(key) == 5


def test_stream_trim_false_leaves_acked_entries(redis_client, handlers, fast, names):
    """The off switch, for streams that readers outside consumer groups also read: every
    entry drained and acked, none trimmed; the next run with trimming on trims them."""
    handlers("noop", lambda message: None)
    key = names["prefix"] + "events"
    ids = [redis_client.xadd(key, {"n": str(i)}).decode() for i in range(6)]

    off = drain(fast(stream_handlers=("events=noop",), stream_trim=False))

    assert off.counters["succeeded"] == 6 and off.counters.get("trimmed", 0) == 0, off.error
    assert redis_client.xpending(key, "novajobs")["pending"] == 0
    assert ids_of(redis_client, key) == ids
    on = drain(fast(stream_handlers=("events=noop",)))
    assert on.counters["trimmed"] == 6 and redis_client.xlen(key) == 0


@pytest.mark.cluster
def test_dlq_cap_drops_the_oldest_and_counts_them(redis_client, handlers, fast, names):
    def poison(message: Any) -> None:
        from novajobs.streams.handlers import PermanentError

        raise PermanentError(f"bad {message.fields['n']}")

    handlers("poison", poison)
    p = names["prefix"]
    keys = stream_keys(p, "q")
    for i in range(12):
        redis_client.xadd(p + "q", {"n": str(i)})

    rec = drain(fast(stream_handlers=("q=poison",), stream_dlq_max_len=5))

    assert rec.counters["dead_lettered"] == 12 and rec.counters["dlq_dropped"] == 7
    assert [d.fields["n"] for d in dlq.read(redis_client, keys)] == [str(i) for i in range(7, 12)]
    assert rec.counters["dlq_dropped_total[q]"] == 7
    assert dlq.dropped_total(redis_client, keys) == 7
    # by age: dead letters dead-lettered more than max_age ago go too (and are counted)
    assert dlq.cap(redis_client, keys, 100, 60, now=time.time() + 61) == 5
    assert dlq.dropped_total(redis_client, keys) == 12 and dlq.length(redis_client, keys) == 0


def test_dlq_age_cap_must_stay_below_the_dedupe_retention(redis_client, fast, cli):
    with pytest.raises(ConfigError, match="stream_dlq_max_age"):
        dlq.max_age_sec(fast(stream_dlq_max_age="30d", stream_dedupe_retention_days=30))
    run = cli("drain-stream", "-s", "stream_dlq_max_age=40d")
    assert run.returncode == 78 and "stream_dedupe_retention_days" in run.stderr


@pytest.mark.cluster
def test_lag_figures_of_a_hand_built_stream(redis_client, names):
    p = names["prefix"]
    keys = stream_keys(p, "s")
    now = 1_800_000_000.0
    hand_built(redis_client, keys, "g", now)

    lag = measure(redis_client, keys, "g", now)

    assert lag.figures() == {
        "length": 10, "lag": 4, "pending": 4, "oldest_pending_age_sec": 98.0,
        "retry_size": 2, "retry_next_due": now + 30, "dlq_size": 2,
        "dlq_oldest_age_sec": 3600.0, "dlq_dropped_total": 3, "queued": 10,
    }
    empty = measure(redis_client, stream_keys(p, "nothing"), "g", now)
    assert empty.figures() == {"length": 0, "lag": 0, "pending": 0, "retry_size": 0,
                               "dlq_size": 0, "dlq_dropped_total": 0, "queued": 0}


def hand_built(r: Any, keys: Any, group: str, now: float) -> None:
    """10 entries produced 100 s, 99 s, ... ago; the group has read 6 and acked 2 (so 4
    pending, the oldest 98 s old; 4 not read); 2 retries due in 30 s and 90 s; 2 dead
    letters of 1 h and 1 min ago; 3 dead letters dropped by the cap so far."""
    for i in range(10):
        r.xadd(keys.stream, {"n": str(i)}, id=f"{int((now - 100 + i) * 1000)}-0")
    r.xgroup_create(keys.stream, group, "0")
    r.xreadgroup(group, "c", {keys.stream: ">"}, count=6)
    r.xack(keys.stream, group, f"{int((now - 100) * 1000)}-0", f"{int((now - 99) * 1000)}-0")
    r.zadd(keys.retry, {"a": now + 30, "b": now + 90})
    r.xadd(keys.dlq, {"x": "1"}, id=f"{int((now - 3600) * 1000)}-0")
    r.xadd(keys.dlq, {"x": "2"}, id=f"{int((now - 60) * 1000)}-0")
    r.set(keys.dropped, 3)


def test_lag_figures_of_a_run_in_record_pushgateway_and_dlq_list(
        redis_client, fast, names, pushgateway, cli):
    """The same hand-built stream as above, measured by a real promote-retries run (no
    retry due: it moves nothing) and by `dlq list`: every figure exact where it is
    (the ages: at least the built age, at most that plus the seconds gone by)."""
    import json
    import urllib.request

    p = names["prefix"]
    keys = stream_keys(p, "lagged")
    built = time.time()
    hand_built(redis_client, keys, "novajobs", built)
    settings = fast(stream_handlers=("lagged=noop",), pushgateway_url=pushgateway)
    exact = {"length": 10, "lag": 4, "pending": 4, "retry_size": 2,
             "retry_next_due": built + 30, "dlq_size": 2, "dlq_dropped_total": 3,
             "queued": 10}
    ages = {"oldest_pending_age_sec": 98.0, "dlq_oldest_age_sec": 3600.0}

    def check(figures: dict[str, float], rounding: float) -> None:
        gone = time.time() - built + rounding
        assert {k: v for k, v in figures.items() if k not in ages} == pytest.approx(
            exact, abs=rounding)
        for name, age in ages.items():
            assert age - rounding <= figures[name] <= age + gone, (name, figures[name])

    rec = run_job("promote-retries", settings)

    assert rec.outcome is Outcome.NOTHING_TO_DO, rec.error
    check(rec.details["lag"]["lagged"], 0.001)
    check({k[: -len("[lagged]")]: v for k, v in rec.counters.items()
           if k.endswith("[lagged]")}, 0.5)
    with urllib.request.urlopen(f"{pushgateway}/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    [group] = [g for g in groups if g["labels"].get("job") == "promote-retries"]
    gauges = {figure: float(m["value"]) for figure, (gauge, _help) in STREAM_GAUGES.items()
              for m in group[gauge]["metrics"] if m["labels"]["stream"] == "lagged"}
    check(gauges, 0.001)
    listed = cli("dlq", "list", "--json", "-s", "stream_handlers=lagged=noop")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row.pop("stream") == "lagged"
    check(row, 0.001)


@pytest.mark.cluster
def test_runs_report_lag_per_stream(redis_client, handlers, fast, names):
    handlers("noop", lambda message: None)
    p = names["prefix"]
    for i in range(7):
        redis_client.xadd(p + "a", {"n": str(i)})
    redis_client.zadd(stream_keys(p, "a").retry, {"m": time.time() + 600})

    rec = drain(fast(stream_handlers=("a=noop", "b=noop"), drain_max_messages=3))

    assert rec.counters["lag[a]"] == 4 and rec.counters["queued[a]"] == 5
    assert rec.counters["retry_size[a]"] == 1 and rec.counters["length[b]"] == 0
    assert rec.details["lag"]["a"]["pending"] == 0
    promoted = run_job("promote-retries", fast(stream_handlers=("a=noop",)))
    assert promoted.outcome is Outcome.NOTHING_TO_DO and promoted.counters["lag[a]"] == 4


# -- key names ----------------------------------------------------------------------------
@pytest.mark.parametrize("prefix, name, retry", [
    ("", "stream:audit:log", "retry:{stream:audit:log}"),
    ("t1:", "jobs", "t1:retry:{t1:jobs}"),
    ("", "{orders}:created", "retry:{orders}:created"),
    ("{app}:", "orders", "{app}:retry:orders"),
    ("", "odd{name", "retry:{odd{name}"),
])
def test_companion_keys_share_the_stream_slot(prefix, name, retry):
    keys = stream_keys(prefix, name)
    assert keys.retry == retry
    assert {slot(k) for k in (keys.stream, *keys.companions)} == {slot(keys.stream)}
    assert hash_tag("a{b}c") == "b" and hash_tag("a{}c") is None and hash_tag("abc") is None


def test_a_name_that_cannot_share_its_slot_is_refused():
    with pytest.raises(ConfigError, match="hash slot"):
        stream_keys("", "odd}name")


def test_legacy_keys_migrate_on_the_next_run(redis_client, handlers, fast, names):
    """A deployment upgraded from `retry:<stream>` / `dlq:<stream>`: the next run moves
    their contents (dead letters keep their ids and only their first novajobs:id)."""
    handlers("noop", lambda message: None)
    p = names["prefix"]
    keys = stream_keys(p, "q")
    redis_client.zadd(keys.legacy_retry, {"member-1": time.time() + 600, "member-2": 5})
    redis_client.execute_command("XADD", keys.legacy_dlq, "1700000000000-0", "n", "1",
                                 "novajobs:id", "1-1", "novajobs:id", "1700000000000-9")
    redis_client.zadd(keys.retry, {"member-3": 7})

    rec = drain(fast(stream_handlers=("q=noop",), stream_dlq_max_age="20d"))

    assert rec.outcome is Outcome.NOTHING_TO_DO, rec.error
    assert redis_client.exists(keys.legacy_retry, keys.legacy_dlq) == 0
    assert sorted(redis_client.zrange(keys.retry, 0, -1)) == [b"member-1", b"member-2",
                                                              b"member-3"]
    raw = redis_client.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, keys.dlq)
    # (2023 is older than the 20-day cap: the cap of this same run dropped it, counted)
    assert raw == [] and rec.counters["dlq_dropped"] == 1
    redis_client.execute_command("XADD", keys.legacy_dlq, "*", "n", "2", "novajobs:id", "1-1",
                                 "novajobs:id", "9-9")
    assert migrate_legacy(redis_client, keys) == 1
    [(_, fields)] = redis_client.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1,
                                      keys.dlq)
    assert fields == [b"n", b"2", b"novajobs:id", b"1-1"]
    assert migrate_legacy(redis_client, keys) == 0


def test_lag_gauges_reach_the_pushgateway(redis_client, handlers, fast, names, pushgateway):
    import json
    import urllib.request

    handlers("noop", lambda message: None)
    p = names["prefix"]
    for i in range(5):
        redis_client.xadd(p + "a", {"n": str(i)})
    consumer = f"pod-{names['prefix'][:-1]}"
    settings = fast(stream_handlers=("a=noop",), drain_max_messages=2,
                    pushgateway_url=pushgateway, stream_consumer=consumer)

    rec = drain(settings)

    assert rec.outcome is Outcome.SUCCESS, rec.error
    with urllib.request.urlopen(f"{pushgateway}/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    [group] = [g for g in groups if g["labels"].get("job") == "drain-stream"
               and any(m["labels"].get("stream") == "a"
                       for m in g.get("novajobs_jobs_queued", {}).get("metrics", []))]
    values = {name: {m["labels"]["stream"]: float(m["value"]) for m in fam["metrics"]}
              for name, fam in group.items() if isinstance(fam, dict) and "metrics" in fam
              and name.startswith(("novajobs_stream_", "novajobs_jobs_"))}
    assert values["novajobs_jobs_queued"]["a"] == 3
    assert values["novajobs_stream_lag"]["a"] == 3 and values["novajobs_stream_length"]["a"] == 3
    assert values["novajobs_stream_dlq_size"]["a"] == 0


def test_stream_alert_rules_fire_on_the_gauges_runs_push(tmp_path):
    """promtool evaluates the generated rules on series shaped like the pushes of
    drain-stream and promote-retries (the same gauge from two job groups)."""
    import yaml

    from novajobs import deploy, yamltext
    from novajobs.alert_rules import stream_rules

    rules = tmp_path / "rules.yml"
    rules.write_text(yamltext.dump({"groups": [{"name": "s", "rules": stream_rules()}]}))
    exprs = {r["alert"]: r["expr"] for r in yaml.safe_load(rules.read_text())["groups"][0]["rules"]}
    series = [
        ('novajobs_stream_dlq_size{job="drain-stream",stream="a"}', "0 0 2 5 5 5"),
        ('novajobs_stream_dlq_size{job="promote-retries",stream="a"}', "0 0 0 3 5 5"),
        ('novajobs_stream_lag{job="drain-stream",stream="a"}', "20000x30"),
        ('novajobs_stream_lag{job="drain-stream",stream="b"}', "5x30"),
        ('novajobs_stream_oldest_pending_age_seconds{job="drain-stream",stream="a"}',
         "60 120 1000 NaN"),
        ('novajobs_stream_retry_next_due_timestamp_seconds{job="drain-stream",stream="a"}',
         "60x20"),
        ('novajobs_stream_dlq_dropped_total{job="drain-stream",stream="a"}', "0 0 4 4"),
    ]
    cases = [
        ("NovajobsDeadLettersGrowing", "1m", []),
        ("NovajobsDeadLettersGrowing", "3m", [('{stream="a"}', 5)]),
        ("NovajobsStreamLagging", "10m", [('{stream="a"}', 20000)]),
        ("NovajobsStreamPendingStuck", "1m", []),
        ("NovajobsStreamPendingStuck", "2m", [('{stream="a"}', 1000)]),
        ("NovajobsStreamPendingStuck", "3m", []),
        ("NovajobsRetriesOverdue", "5m", []),
        ("NovajobsRetriesOverdue", "12m", [('{stream="a"}', 660)]),
        ("NovajobsDeadLettersDropped", "1m", []),
        ("NovajobsDeadLettersDropped", "3m", [('{stream="a"}', 4)]),
    ]
    promtool_test(tmp_path, rules, series, promql_expr_test=expr_samples(exprs, cases))

    shipped = (Path(__file__).resolve().parent.parent / deploy.RULES).read_text()
    assert all(f"alert: {name}" in shipped for name in exprs)  # rendered with the others
