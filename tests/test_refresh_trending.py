"""refresh-trending against real ClickHouse (chdb) and Redis."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job

WEIGHTS = {"view": 1, "like": 20, "comment": 30, "share": 50}  # score in tenths


def events_at(now: float, rows: list[tuple[int, int, str, float]]) -> list[list[Any]]:
    """(post_id, user_id, event_type, seconds ago) -> insertable rows."""
    return [
        [datetime.fromtimestamp(now - ago, UTC).replace(tzinfo=None), post, user, kind]
        for post, user, kind, ago in rows
    ]


def expected_top(
    rows: list[tuple[int, int, str, float]], k: int, window_sec: float
) -> list[dict[str, Any]]:
    """The independent computation: plain Python over the same rows."""
    per_post: dict[int, Counter[str]] = {}
    for post, _user, kind, ago in rows:
        if ago <= window_sec - 5:  # clear of the window edge
            per_post.setdefault(post, Counter())[kind] += 1
    scored = sorted(
        per_post.items(),
        key=lambda item: (-sum(WEIGHTS[t] * n for t, n in item[1].items()), item[0]),
    )
    return [
        {
            "post_id": post,
            "score": sum(WEIGHTS[t] * n for t, n in c.items()) / 10,
            "views": c["view"],
            "likes": c["like"],
            "comments": c["comment"],
            "shares": c["share"],
        }
        for post, c in scored[:k]
    ]


@pytest.mark.cluster
def test_top_k_matches_an_independent_computation(ch, redis_client, settings, names):
    rng = random.Random(7)
    now = time.time()
    rows = [
        (rng.randint(1, 300), rng.randint(1, 50), rng.choice(list(WEIGHTS)), rng.uniform(10, 3590))
        for _ in range(5000)
    ]
    old = [(1, 1, "share", 3700 + i) for i in range(100)]  # outside the 1 h window
    ch.insert(
        "post_events",
        events_at(now, rows + old),
        ["event_time", "post_id", "user_id", "event_type"],
    )

    rec = run_job("refresh-trending", settings)

    assert rec.outcome is Outcome.SUCCESS, rec.error
    key = names["prefix"] + "nova:cache:trending:1h"
    cached = json.loads(redis_client.get(key))
    assert cached == expected_top(rows, 50, 3600)
    assert 89 <= redis_client.ttl(key) <= 90
    assert rec.counters == {"posts": 50, "keys_written": 1}


def test_ties_are_broken_by_post_id_and_float_weights_do_not_matter(
    ch, redis_client, make_settings, names
):
    now = time.time()
    # 10 views = 1.0 = half a like: posts 30 and 10 tie exactly at 2.0, post 20 at 1.0
    rows = [(30, 1, "view", 60)] * 20 + [(10, 1, "like", 60)] + [(20, 1, "view", 60)] * 10
    ch.insert(
        "post_events", events_at(now, rows), ["event_time", "post_id", "user_id", "event_type"]
    )

    rec = run_job("refresh-trending", make_settings(trending_topk=2))

    assert rec.outcome is Outcome.SUCCESS
    cached = json.loads(redis_client.get(names["prefix"] + "nova:cache:trending:1h"))
    assert [(p["post_id"], p["score"]) for p in cached] == [(10, 2.0), (30, 2.0)]


def test_empty_window_writes_an_empty_list(ch, redis_client, settings, names):
    ch.insert(
        "post_events",
        events_at(time.time(), [(5, 1, "like", 7200)]),
        ["event_time", "post_id", "user_id", "event_type"],
    )

    rec = run_job("refresh-trending", settings)

    assert rec.outcome is Outcome.SUCCESS
    assert json.loads(redis_client.get(names["prefix"] + "nova:cache:trending:1h")) == []


def test_window_and_interval_settings_name_the_key_and_ttl(ch, redis_client, make_settings, names):
    ch.insert(
        "post_events",
        events_at(time.time(), [(5, 1, "like", 7000)]),
        ["event_time", "post_id", "user_id", "event_type"],
    )

    rec = run_job(
        "refresh-trending", make_settings(trending_window_hours=3, trending_interval_sec=200)
    )

    assert rec.outcome is Outcome.SUCCESS
    key = names["prefix"] + "nova:cache:trending:3h"
    assert [p["post_id"] for p in json.loads(redis_client.get(key))] == [5]
    assert 299 <= redis_client.ttl(key) <= 300


def test_readers_never_see_a_missing_or_partial_key(ch, redis_client, make_settings, names):
    rng = random.Random(1)
    now = time.time()
    rows = [
        (rng.randint(1, 2000), 1, rng.choice(list(WEIGHTS)), rng.uniform(1, 3500))
        for _ in range(20000)
    ]
    ch.insert(
        "post_events", events_at(now, rows), ["event_time", "post_id", "user_id", "event_type"]
    )
    settings = make_settings(trending_topk=1000)
    key = names["prefix"] + "nova:cache:trending:1h"
    assert (
        run_job("refresh-trending", settings, RunOptions(use_lock=False)).outcome is Outcome.SUCCESS
    )

    seen: list[int] = []
    bad: list[Any] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            raw = redis_client.get(key)
            try:
                seen.append(len(json.loads(raw)))
            except (TypeError, ValueError) as exc:
                bad.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(5):
        assert (
            run_job("refresh-trending", settings, RunOptions(use_lock=False)).outcome
            is Outcome.SUCCESS
        )
    stop.set()
    thread.join()

    assert bad == []
    assert len(seen) > 50 and set(seen) == {1000}
