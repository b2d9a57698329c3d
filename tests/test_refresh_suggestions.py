"""refresh-suggestions against real ClickHouse (chdb) and Redis."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from s3_faults import FaultyProxy

from novajobs.context import JobContext, Shard
from novajobs.errors import Outcome
from novajobs.jobs import refresh_suggestions as job
from novajobs.runner import RunOptions, run_job

# A small hand-made graph: (follower, followee)
EDGES = [
    (1, 2),
    (1, 3),
    (1, 4),  # user 1 follows 2, 3, 4
    (2, 5),
    (2, 6),
    (2, 4),
    (2, 1),  # 4 is already followed by 1; 1 is 1 itself
    (3, 5),
    (3, 7),
    (3, 1),
    (4, 5),
    (4, 6),
    (4, 8),
    (5, 9),  # two hops from 1: not a candidate
]


def follow(ch: Any, edges: list[tuple[int, int]]) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    ch.insert(
        "user_relationships",
        [[a, b, now] for a, b in edges],
        ["follower_id", "followee_id", "created_at"],
    )


def activity(ch: Any, users: list[int], days_ago: float = 0.1) -> None:
    when = datetime.fromtimestamp(time.time() - days_ago * 86400, UTC).replace(tzinfo=None)
    ch.insert(
        "post_events",
        [[when, 1, u, "view"] for u in users],
        ["event_time", "post_id", "user_id", "event_type"],
    )


def cached(redis_client: Any, names: dict[str, str], user: int) -> Any:
    raw = redis_client.get(f"{names['prefix']}nova:cache:suggested_users:{user}")
    return None if raw is None else json.loads(raw)


@pytest.mark.cluster
def test_friends_of_friends_ranked_by_mutual_connections(ch, redis_client, settings, names):
    follow(ch, EDGES)
    activity(ch, [1])

    rec = run_job("refresh-suggestions", settings)

    assert rec.outcome is Outcome.SUCCESS, rec.error
    # 5: via 2, 3, 4 (3 mutual); 6: via 2, 4 (2); 7: via 3; 8: via 4 (1 each, by id).
    # Excluded: 1 (the user), 4 (already followed), 9 (three hops).
    assert cached(redis_client, names, 1) == [
        {"user_id": 5, "mutual_count": 3},
        {"user_id": 6, "mutual_count": 2},
        {"user_id": 7, "mutual_count": 1},
        {"user_id": 8, "mutual_count": 1},
    ]
    ttl = redis_client.ttl(f"{names['prefix']}nova:cache:suggested_users:1")
    assert 1150 <= ttl <= 1200  # 2 x the interval, less the seconds since the write
    assert rec.counters["users_refreshed"] == 1 and rec.counters["keys_written"] == 1


def test_per_user_limit_and_an_empty_list_for_a_user_without_candidates(
    ch, redis_client, make_settings, names
):
    follow(ch, EDGES)
    activity(ch, [1, 9])  # 9 follows nobody

    rec = run_job("refresh-suggestions", make_settings(suggestions_per_user=2))

    assert rec.outcome is Outcome.SUCCESS
    assert [s["user_id"] for s in cached(redis_client, names, 1)] == [5, 6]
    assert cached(redis_client, names, 9) == []
    assert rec.counters["users_without_suggestions"] == 1


def test_only_active_users_are_refreshed(ch, redis_client, settings, names):
    follow(ch, EDGES)
    activity(ch, [2])
    activity(ch, [3], days_ago=8)  # inactive: last post event 8 days ago

    run_job("refresh-suggestions", settings)

    assert cached(redis_client, names, 2) is not None
    assert cached(redis_client, names, 3) is None


def test_user_option_refreshes_one_user_even_if_inactive(ch, redis_client, settings, names):
    follow(ch, EDGES)

    rec = run_job("refresh-suggestions", settings, user=3)

    assert rec.outcome is Outcome.SUCCESS
    # 3 follows 5, 7, 1; their followees: 9 (via 5), 2, 3, 4 (via 1); minus 3 and followed.
    assert cached(redis_client, names, 3) == [
        {"user_id": 2, "mutual_count": 1},
        {"user_id": 4, "mutual_count": 1},
        {"user_id": 9, "mutual_count": 1},
    ]


@pytest.mark.cluster
def test_successive_runs_cover_every_active_user_stalest_first(
    ch, redis_client, make_settings, names
):
    rng = random.Random(3)
    users = list(range(1, 251))
    follow(ch, [(a, b) for a in users for b in rng.sample(users, 5) if a != b])
    activity(ch, users)
    settings = make_settings(suggestion_batch_size=60, suggestion_chunk_size=25)

    refreshed: Counter[int] = Counter()
    for _ in range(5):  # ceil(250 / 60) = 5 runs reach everyone...
        before = {u for u in users if cached(redis_client, names, u) is not None}
        assert run_job("refresh-suggestions", settings).outcome is Outcome.SUCCESS
        now = {u for u in users if cached(redis_client, names, u) is not None}
        refreshed.update(now - before)
    assert set(refreshed) == set(users)
    assert max(refreshed.values()) == 1  # ...and nobody twice while others wait

    # The sixth run takes the 60 refreshed longest ago: the first run's users.
    zset = f"{names['prefix']}novajobs:suggestions:refreshed"
    oldest = {int(m) for m in redis_client.zrange(zset, 0, 59)}
    first_time = {int(m): s for m, s in redis_client.zrange(zset, 0, -1, withscores=True)}
    run_job("refresh-suggestions", settings)
    after = {int(m): s for m, s in redis_client.zrange(zset, 0, -1, withscores=True)}
    assert {u for u in users if after[u] != first_time[u]} == oldest


@pytest.mark.cluster
def test_shards_partition_the_active_users(ch, redis_client, make_settings, names):
    users = list(range(1, 31))
    follow(ch, [(u, u % 30 + 1) for u in users])
    activity(ch, users)
    settings = make_settings(suggestion_batch_size=0)

    seen = []
    for i in (1, 2, 3):
        rec = run_job("refresh-suggestions", settings, RunOptions(shard=Shard(i, 3)))
        assert rec.outcome is Outcome.SUCCESS
        assert rec.shard == f"{i}-of-3"
        seen.append(rec.counters["users_refreshed"])
    assert seen == [10, 10, 10]
    assert all(cached(redis_client, names, u) is not None for u in users)


def test_no_active_users_is_nothing_to_do(ch, settings):
    rec = run_job("refresh-suggestions", settings)

    assert rec.outcome is Outcome.NOTHING_TO_DO
    assert rec.exit_code == 0


def test_a_pipeline_cut_mid_write_is_sent_again_whole(redis_client, settings, names, stack):
    """A retried write must resend its commands: redis-py empties a pipeline whose
    execute() failed, so retrying that same pipeline wrote nothing and reported success."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    proxy = FaultyProxy(stack.ports["redis"])
    proxy.cut_on, proxy.cuts = b"suggested_users", 1  # the first write of a suggestions key
    with JobContext(settings, "refresh-suggestions") as ctx:
        # the driver's own retries off, so the cut reaches novajobs' retry policy
        ctx.conns.__dict__["redis"] = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 0))
        job.write(ctx, {1: [{"user_id": 5, "mutual_count": 3}], 2: []}, ttl_sec=60)
        ctx.redis.close()
    proxy.close()

    assert proxy.cuts == 0  # the cut happened
    assert cached(redis_client, names, 1) == [{"user_id": 5, "mutual_count": 3}]
    assert cached(redis_client, names, 2) == []
