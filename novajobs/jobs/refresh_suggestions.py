"""refresh-suggestions: friends-of-friends suggestions, ClickHouse -> one Redis key per user.

For a user U, the candidates are the followees of U's followees, minus U and whom U
already follows, ranked by *mutual connections* (how many of U's followees follow the
candidate; ties: lower candidate id first). One ClickHouse query serves a whole chunk
of users; one Redis pipeline writes their keys.

Which users: the active ones (a ``post_events`` row in the last active-days), stalest
first. A sorted set (``novajobs:suggestions:refreshed``, user id -> time of the last
refresh) remembers when each user was last done; a run takes the ``batch_size`` active
users never done or done longest ago, so successive runs reach every active user.
Users whose candidate list is empty get an empty list: "no suggestions" is an answer.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from array import array
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from novajobs.context import JobContext, Result
from novajobs.conversions import batched
from novajobs.errors import Outcome, UsageError
from novajobs.fencing import FencedPipeline, fenced_command

if TYPE_CHECKING:
    from novajobs.settings import Settings

REFRESHED_ZSET = "novajobs:suggestions:refreshed"

ACTIVE_USERS_SQL = """
SELECT DISTINCT user_id
FROM post_events
WHERE event_time >= toDateTime({since:UInt32})
  AND user_id % {shards:UInt32} = {remainder:UInt32}
ORDER BY user_id
"""

CANDIDATES_SQL = """
SELECT
    f1.follower_id AS user_id,
    f2.followee_id AS candidate,
    uniqExact(f1.followee_id) AS mutual
FROM user_relationships AS f1
INNER JOIN (
    SELECT follower_id, followee_id
    FROM user_relationships
    WHERE follower_id IN (
        SELECT followee_id FROM user_relationships WHERE follower_id IN {users:Array(UInt64)}
    )
) AS f2 ON f2.follower_id = f1.followee_id
WHERE f1.follower_id IN {users:Array(UInt64)}
  AND f2.followee_id != f1.follower_id
  AND (f1.follower_id, f2.followee_id) NOT IN (
      SELECT follower_id, followee_id
      FROM user_relationships
      WHERE follower_id IN {users:Array(UInt64)}
  )
GROUP BY user_id, candidate
ORDER BY user_id, mutual DESC, candidate
LIMIT {per_user:UInt32} BY user_id
"""


def suggestions_key(user_id: int) -> str:
    return f"nova:cache:suggested_users:{user_id}"


def suggest(ctx: JobContext, users: list[int], per_user: int) -> dict[int, list[dict[str, int]]]:
    """Suggestions for each of ``users`` (every user present, maybe with an empty list)."""
    params = {"users": users, "per_user": per_user}
    rows = ctx.retry(
        lambda: ctx.clickhouse.query(CANDIDATES_SQL, parameters=params).result_rows,
        "query ClickHouse user_relationships",
    )
    out: dict[int, list[dict[str, int]]] = {user: [] for user in users}
    for user_id, candidate, mutual in rows:
        out[int(user_id)].append({"user_id": int(candidate), "mutual_count": int(mutual)})
    return out


def active_users(ctx: JobContext, now: float) -> array[int]:
    """Ids of the active users of this shard, ascending, as a compact array."""
    since = int(now) - ctx.settings.suggestion_active_days * 86400
    shard = ctx.shard
    params = {
        "since": since,
        "shards": shard.total if shard else 1,
        "remainder": shard.remainder if shard else 0,
    }

    def fetch() -> array[int]:
        ids: array[int] = array("Q")
        with ctx.clickhouse.query_column_block_stream(
            ACTIVE_USERS_SQL, parameters=params
        ) as blocks:
            for block in blocks:
                ids.extend(block[0])
        return ids

    return ctx.retry(fetch, "query ClickHouse active users")


def pick_stalest(ctx: JobContext, users: array[int], n: int) -> list[int]:
    """The ``n`` users refreshed longest ago (never refreshed first), ties by id."""
    zset = ctx.key(REFRESHED_ZSET)
    heap: list[tuple[float, int]] = []  # max-heap on (-refreshed_at, -id) of the n stalest
    for chunk in batched(users, 10_000):
        members = [str(u) for u in chunk]
        scores = ctx.retry(partial(ctx.redis.zmscore, zset, members), "read refresh times")
        for user, score in zip(chunk, scores, strict=True):
            item = (-(score if score is not None else -1.0), -user)
            if len(heap) < n:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    return sorted(-user for _, user in heap)


def write(ctx: JobContext, suggestions: dict[int, list[dict[str, int]]], ttl_sec: int) -> None:
    """One pipeline: every user's key with its TTL, and their refresh times.

    On a Redis Cluster the pipeline is split per node and is not atomic (it never was:
    transaction=False); every command is a SET or a ZADD, so a retry repeats it safely.
    """
    now = time.time()

    def send() -> list[Any]:
        pipe = FencedPipeline(ctx)  # each write refused if another run took the lock
        for user, items in suggestions.items():
            pipe.set(ctx.key(suggestions_key(user)), json.dumps(items, separators=(",", ":")),
                     "EX", ttl_sec)
        pipe.zadd(ctx.key(REFRESHED_ZSET), {str(user): now for user in suggestions})
        return pipe.execute("write suggestions")

    ctx.checkpoint()
    ctx.retry(send, "write suggestions to Redis")  # SET and ZADD: safe to repeat


def check_params(settings: Settings, user: int | None = None) -> None:
    valid = isinstance(user, int) and not isinstance(user, bool) and 0 <= user < 2**64
    if user is not None and not valid:
        raise UsageError(f"--user {user!r}: expected a user id (an integer from 0 to 2^64-1)")


def run(ctx: JobContext, user: int | None = None) -> Result:
    s = ctx.settings
    ttl_sec = math.ceil(s.suggestion_interval_sec * 2)
    now = time.time()
    if user is not None:
        chosen: Iterable[int] = [user]
        total = 1
    else:
        active = active_users(ctx, now)
        ctx.count("active_users", len(active))
        if s.suggestion_batch_size and s.suggestion_batch_size < len(active):
            chosen = pick_stalest(ctx, active, s.suggestion_batch_size)
        else:
            chosen = active
        total = min(len(active), s.suggestion_batch_size or len(active))
    if total == 0:
        return Result(Outcome.NOTHING_TO_DO, "no active users in the window")
    with ctx.progress("users", total) as bar:
        for chunk in batched(chosen, s.suggestion_chunk_size):
            ctx.checkpoint()
            suggestions = suggest(ctx, chunk, s.suggestions_per_user)
            write(ctx, suggestions, ttl_sec)
            ctx.count("users_refreshed", len(chunk))
            ctx.count("keys_written", len(chunk))
            ctx.count("suggestions", sum(len(v) for v in suggestions.values()))
            ctx.count("users_without_suggestions", sum(1 for v in suggestions.values() if not v))
            bar.advance(len(chunk))
    _forget_inactive(ctx, now)
    done = ctx.counters["users_refreshed"]
    return Result(
        Outcome.SUCCESS,
        f"refreshed suggestions of {done} users (TTL {ttl_sec} s)",
        {"ttl_sec": ttl_sec, "users": done},
    )


def _forget_inactive(ctx: JobContext, now: float) -> None:
    """Keep the refresh-time set bounded: users gone inactive drop out of it."""
    horizon = now - ctx.settings.suggestion_active_days * 86400
    ctx.retry(
        lambda: fenced_command(ctx, "zremrangebyscore", ctx.key(REFRESHED_ZSET), "-inf",
                               repr(horizon)),
        "prune refresh times",
    )
