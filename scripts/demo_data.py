#!/usr/bin/env python3
"""Load realistic demo data into the stores novajobs reads (SPEC §3 contracts).

    python scripts/demo_data.py                 # small: seconds
    python scripts/demo_data.py --events 10000000 --edges 1000000 --users 200000

ClickHouse ``post_events``: post popularity is skewed (a few posts take most events),
event types are mostly views (80 % views, 12 % likes, 5 % comments, 3 % shares), and
timestamps spread over the last ``--hours`` hours. ``user_relationships``: a power-law
follow graph (a few users have most followers), no self-follows, no duplicate edges.
Everything is generated inside ClickHouse, so 10M rows take seconds, not minutes.
Connection settings come from the environment as for novajobs (CLICKHOUSE_URL).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

CLICKHOUSE_DDL = (
    """
    CREATE TABLE IF NOT EXISTS post_events (
        event_time DateTime,
        post_id UInt64,
        user_id UInt64,
        event_type LowCardinality(String)
    ) ENGINE = MergeTree
    PARTITION BY toYYYYMMDD(event_time)
    ORDER BY (event_time, post_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS user_relationships (
        follower_id UInt64,
        followee_id UInt64,
        created_at DateTime
    ) ENGINE = ReplacingMergeTree
    ORDER BY (follower_id, followee_id)
    """,
)

# PostgreSQL tables other services own, as novajobs reads them (SPEC §3). The demo and
# the tests create them; novajobs never does.
POSTGRES_DDL = {
    "users": """
        CREATE TABLE IF NOT EXISTS users (
            id bigint PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
    "chat_messages": """
        CREATE TABLE IF NOT EXISTS chat_messages (
            id bigint NOT NULL,
            channel_id bigint NOT NULL,
            sender_id bigint NOT NULL,
            seq bigint NOT NULL,
            created_at timestamptz NOT NULL
        ) PARTITION BY RANGE (created_at)""",
    "chat_inbox": """
        CREATE TABLE IF NOT EXISTS chat_inbox (
            user_id bigint NOT NULL,
            message_id bigint NOT NULL,
            created_at timestamptz NOT NULL
        ) PARTITION BY RANGE (created_at)""",
    "audit_logs": """
        CREATE TABLE IF NOT EXISTS audit_logs (
            id bigserial PRIMARY KEY,
            user_id bigint,
            action text,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
    "file_metadata": """
        CREATE TABLE IF NOT EXISTS file_metadata (
            id bigserial PRIMARY KEY,
            file_hash text UNIQUE,
            bucket text NOT NULL,
            path text NOT NULL,
            size bigint NOT NULL DEFAULT 0,
            ref_count int NOT NULL DEFAULT 0,
            status smallint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
}

POST_EVENTS_SQL = """
INSERT INTO post_events
SELECT
    toDateTime({now:UInt32} - toUInt32(rand(1) % ({hours:UInt32} * 3600))) AS event_time,
    1 + toUInt64(pow(rand(2) / 4294967296.0, 3) * {posts:UInt64}) AS post_id,
    1 + rand(3) % {users:UInt64} AS user_id,
    multiIf(rand(4) % 100 < 80, 'view', rand(4) % 100 < 92, 'like',
            rand(4) % 100 < 97, 'comment', 'share') AS event_type
FROM numbers({events:UInt64})
"""

# Followees drawn with a power law: low ids are the celebrities.
EDGES_SQL = """
INSERT INTO user_relationships
SELECT DISTINCT follower_id, followee_id, toDateTime({now:UInt32}) - rand(7) % 86400000
FROM (
    SELECT
        1 + rand(5) % {users:UInt64} AS follower_id,
        1 + toUInt64(pow(rand(6) / 4294967296.0, 2.5) * {users:UInt64}) AS followee_id
    FROM numbers({edges:UInt64})
)
WHERE follower_id != followee_id
"""


def load_clickhouse(client: Any, *, users: int, posts: int, events: int, edges: int,
                    hours: int, now: int | None = None) -> dict[str, int]:
    """(Re)create the demo tables' contents; returns the row counts."""
    now = now or int(time.time())
    for ddl in CLICKHOUSE_DDL:
        client.command(ddl)
    client.command("TRUNCATE TABLE post_events")
    client.command("TRUNCATE TABLE user_relationships")
    client.command(POST_EVENTS_SQL, parameters={"now": now, "hours": hours, "posts": posts,
                                                "users": users, "events": events})
    client.command(EDGES_SQL, parameters={"now": now, "users": users, "edges": edges})
    client.command("OPTIMIZE TABLE user_relationships FINAL")
    counts = {}
    for table in ("post_events", "user_relationships"):
        counts[table] = int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--posts", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--edges", type=int, default=50_000)
    parser.add_argument("--hours", type=int, default=6, help="events spread over this many hours")
    args = parser.parse_args()

    from novajobs.connections import clickhouse_client
    from novajobs.settings import load_settings

    started = time.monotonic()
    client = clickhouse_client(load_settings())
    try:
        counts = load_clickhouse(client, users=args.users, posts=args.posts, events=args.events,
                                 edges=args.edges, hours=args.hours)
    finally:
        client.close()  # chdb: another process may open the path only after this
    for table, n in counts.items():
        print(f"clickhouse {table}: {n:,} rows", file=sys.stderr)
    print(f"demo data loaded in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
