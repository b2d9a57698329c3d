"""refresh-trending: the top K posts of the last hours, ClickHouse -> one Redis key.

The score ``views*0.1 + likes*2 + comments*3 + shares*5`` is computed inside
ClickHouse in integer tenths (``views + 20*likes + 30*comments + 50*shares``), so ties
are exact and broken the same way every time: higher score first, then lower post id.
The whole list is written with one ``SET key value EX ttl``: readers see the old list or
the new one, never a missing or partial key.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.errors import Outcome
from novajobs.fencing import fenced_set

TRENDING_SQL = """
SELECT
    post_id,
    countIf(event_type = 'view') AS views,
    countIf(event_type = 'like') AS likes,
    countIf(event_type = 'comment') AS comments,
    countIf(event_type = 'share') AS shares,
    views + 20 * likes + 30 * comments + 50 * shares AS score_tenths
FROM post_events
WHERE event_time >= toDateTime({start:UInt32})
  AND event_time < toDateTime({end:UInt32})
  AND event_type IN ('view', 'like', 'comment', 'share')
GROUP BY post_id
ORDER BY score_tenths DESC, post_id ASC
LIMIT {k:UInt32}
"""


def trending_key(window_hours: int) -> str:
    return f"nova:cache:trending:{window_hours}h"


def top_posts(ctx: JobContext, window_hours: int, k: int, now: float) -> list[dict[str, Any]]:
    """The top ``k`` posts of the ``window_hours`` before ``now`` (Unix seconds)."""
    end = int(now)
    params = {"start": end - window_hours * 3600, "end": end, "k": k}
    rows = ctx.retry(
        lambda: ctx.clickhouse.query(TRENDING_SQL, parameters=params).result_rows,
        "query ClickHouse post_events",
    )
    return [
        {
            "post_id": int(post_id),
            "score": score_tenths / 10,
            "views": views,
            "likes": likes,
            "comments": comments,
            "shares": shares,
        }
        for post_id, views, likes, comments, shares, score_tenths in rows
    ]


def run(ctx: JobContext) -> Result:
    s = ctx.settings
    key = ctx.key(trending_key(s.trending_window_hours))
    ttl_sec = math.ceil(s.trending_interval_sec * 1.5)
    started = time.monotonic()
    posts = top_posts(ctx, s.trending_window_hours, s.trending_topk, time.time())
    query_ms = round((time.monotonic() - started) * 1000)
    payload = json.dumps(posts, separators=(",", ":"))
    ctx.checkpoint()
    ctx.retry(lambda: fenced_set(ctx, key, payload, "EX", ttl_sec), "write the trending cache")
    ctx.count("posts", len(posts))
    ctx.count("keys_written")
    ctx.log.info(
        "cache refreshed",
        redis_key=key,
        ttl_sec=ttl_sec,
        posts=len(posts),
        query_ms=query_ms,
        elapsed_ms=round((time.monotonic() - started) * 1000),
    )
    if not posts:
        ctx.log.warning("no post events in the window; wrote an empty list", redis_key=key)
    return Result(
        outcome=Outcome.SUCCESS,
        message=f"wrote top {len(posts)} posts to {key} (TTL {ttl_sec} s)",
        details={"redis_key": key, "ttl_sec": ttl_sec, "posts": posts},
    )
