#!/usr/bin/env python3
"""Load realistic demo data into the stores novajobs reads (docs/jobs.md, Data contracts).

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

# PostgreSQL tables other services own, as novajobs reads them (docs/jobs.md). The demo and
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


# --- S3 files for gc-files --------------------------------------------------------------
# Kinds of file_metadata rows, as the upload service leaves them:
#   live     status 0, ref_count 1..5                          object present   kept
#   marked   status 2, ref_count 0, updated 2..30 days ago     object present   collected
#   recent   status 2, ref_count 0, updated in the last 20 h   object present   kept (grace)
#   missing  like marked, but the object is already gone       no object        row collected
#   held     status 2 but ref_count 1 (referenced again)       object present   kept
FILE_KINDS = ("live", "marked", "recent", "missing", "held")
FILE_MIX = {"live": 0.60, "marked": 0.30, "recent": 0.06, "missing": 0.03, "held": 0.01}
GC_DEMO_BUCKET = "nova-gc-demo"
_DAY = 86_400.0
_FILE_AGES = {  # seconds since the last update: (min, max)
    "live": (0.0, 90 * _DAY),
    "marked": (2 * _DAY, 30 * _DAY),
    "recent": (60.0, 20 * 3600.0),
    "missing": (2 * _DAY, 30 * _DAY),
    "held": (2 * _DAY, 30 * _DAY),
}
_FILE_COLUMNS = ("id", "file_hash", "bucket", "path", "size", "ref_count", "status",
                 "created_at", "updated_at")


def file_mix(total: int) -> dict[str, int]:
    """``total`` files split as FILE_MIX (the remainder goes to live files)."""
    counts = {kind: int(total * share) for kind, share in FILE_MIX.items()}
    counts["live"] += total - sum(counts.values())
    return counts


def object_path(file_hash: str) -> str:
    """Content-addressed, as the upload service names objects."""
    return f"files/{file_hash[:2]}/{file_hash[2:4]}/{file_hash}"


def load_files(pg_conn: Any, minio_client: Any, bucket: str, *, live: int = 600,
               marked: int = 300, recent: int = 60, missing: int = 30, held: int = 10,
               min_size: int = 64, max_size: int = 8192, seed: int | None = None,
               workers: int = 8, chunk: int = 5000) -> dict[str, list[int]]:
    """Insert file_metadata rows with their objects in ``bucket`` (created if missing).

    The kinds are shuffled together, so every id range and shard gets a mix. Objects are
    uploaded by ``workers`` threads, ``chunk`` rows at a time (memory stays flat). Returns
    the new row ids by kind. ``pg_conn`` may be autocommit or not (it is committed).
    """
    import random

    rng = random.Random(seed)
    wanted = {"live": live, "marked": marked, "recent": recent, "missing": missing,
              "held": held}
    kinds = [kind for kind, n in wanted.items() for _ in range(n)]
    rng.shuffle(kinds)
    pg_conn.execute(POSTGRES_DDL["file_metadata"])
    if not minio_client.bucket_exists(bucket):
        minio_client.make_bucket(bucket)
    ids: dict[str, list[int]] = {kind: [] for kind in FILE_KINDS}
    for start in range(0, len(kinds), chunk):
        part = kinds[start:start + chunk]
        new_ids = _next_file_ids(pg_conn, len(part))
        rows, blobs = _file_rows(rng, bucket, part, new_ids, min_size, max_size)
        _upload(minio_client, bucket, blobs, workers)  # objects first, as an upload does
        with pg_conn.cursor() as cur, cur.copy(
            f"COPY file_metadata ({', '.join(_FILE_COLUMNS)}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        if not pg_conn.autocommit:
            pg_conn.commit()
        for kind, file_id in zip(part, new_ids, strict=True):
            ids[kind].append(file_id)
    return ids


def _next_file_ids(pg_conn: Any, n: int) -> list[int]:
    sql = ("SELECT nextval(pg_get_serial_sequence('file_metadata', 'id')) "
           "FROM generate_series(1, %s)")
    return [r[0] for r in pg_conn.execute(sql, (n,)).fetchall()]


def _file_rows(rng: Any, bucket: str, kinds: list[str], ids: list[int], min_size: int,
               max_size: int) -> tuple[list[tuple[Any, ...]], list[tuple[str, bytes]]]:
    import hashlib
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    rows, blobs = [], []
    for kind, file_id in zip(kinds, ids, strict=True):
        content = rng.randbytes(rng.randint(min_size, max_size))
        file_hash = hashlib.sha256(content).hexdigest()
        path = object_path(file_hash)
        updated = now - timedelta(seconds=rng.uniform(*_FILE_AGES[kind]))
        created = updated - timedelta(seconds=rng.uniform(0, 30 * _DAY))
        status, refs = (0, rng.randint(1, 5)) if kind == "live" else (2, int(kind == "held"))
        rows.append((file_id, file_hash, bucket, path, len(content), refs, status, created,
                     updated))
        if kind != "missing":
            blobs.append((path, content))
    return rows, blobs


def reset_files(pg_conn: Any, minio_client: Any, bucket: str) -> None:
    """Forget a demo bucket: its file_metadata rows and every object in it."""
    from minio.deleteobjects import DeleteObject

    pg_conn.execute(POSTGRES_DDL["file_metadata"])
    pg_conn.execute("DELETE FROM file_metadata WHERE bucket = %s", (bucket,))
    if not pg_conn.autocommit:
        pg_conn.commit()
    if minio_client.bucket_exists(bucket):
        listing = minio_client.list_objects(bucket, recursive=True)
        list(minio_client.remove_objects(bucket, (DeleteObject(o.object_name) for o in listing)))


def add_files_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("S3 files for gc-files (DATABASE_URL, MINIO_*)")
    group.add_argument("--gc-files", type=int, default=1_000, metavar="N",
                       help=f"file_metadata rows with objects, mixed as {FILE_MIX}; 0 = skip")
    group.add_argument("--gc-bucket", default=GC_DEMO_BUCKET, help="replaced on every load")


def load_files_from_args(args: argparse.Namespace) -> None:
    import psycopg

    from novajobs.connections import Connections
    from novajobs.output import JobLog
    from novajobs.settings import load_settings

    settings = load_settings()
    conns = Connections(settings, JobLog())
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        reset_files(conn, conns.minio, args.gc_bucket)
        ids = load_files(conn, conns.minio, args.gc_bucket, **file_mix(args.gc_files))
    conns.close()
    mix = ", ".join(f"{len(v):,} {kind}" for kind, v in ids.items())
    print(f"postgres file_metadata + s3 bucket {args.gc_bucket}: {mix}", file=sys.stderr)


def _upload(minio_client: Any, bucket: str, blobs: list[tuple[str, bytes]], workers: int) -> None:
    import io
    from concurrent.futures import ThreadPoolExecutor

    def put(item: tuple[str, bytes]) -> None:
        path, content = item
        minio_client.put_object(bucket, path, io.BytesIO(content), len(content))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(put, blobs))


# --- PostgreSQL for the PostgreSQL jobs ------------------------------------------------
# Indexes the jobs document: check-message-gaps probes (channel_id, seq) and scans a
# created_at range (INCLUDE: from the index alone); daily-stats reads created_at ranges.
# Tests and benchmarks add them too.
POSTGRES_INDEXES = {
    "chat_messages_channel_seq": "CREATE INDEX IF NOT EXISTS chat_messages_channel_seq_idx "
                                 "ON chat_messages (channel_id, seq)",
    "chat_messages_created_at": "CREATE INDEX IF NOT EXISTS chat_messages_created_at_idx "
                                "ON chat_messages (created_at) INCLUDE (channel_id, seq)",
    "users_created_at": "CREATE INDEX IF NOT EXISTS users_created_at_idx ON users (created_at)",
    "audit_logs_created_at": "CREATE INDEX IF NOT EXISTS audit_logs_created_at_idx "
                             "ON audit_logs (created_at)",
    "file_metadata_created_at": "CREATE INDEX IF NOT EXISTS file_metadata_created_at_idx "
                                "ON file_metadata (created_at)",
    # gc-orphans reads a bucket's rows in S3's key order, and looks paths up.
    "file_metadata_bucket_path": "CREATE INDEX IF NOT EXISTS file_metadata_bucket_path_idx "
                                 'ON file_metadata (bucket, path COLLATE "C", id)',
}
DEMO_FILES_BUCKET = "nova-demo-files"  # live files only; gc-files' loader adds marked ones
RECENT_MINUTES = 15  # the newest messages are dense, so check-message-gaps has work
MEMBERS_PER_CHANNEL = 25

# Messages in time order (i = 0..n-1): the first n - recent spread over the days before
# the recent minutes, the rest over those minutes. Channel popularity is skewed
# (random()^2: low ids are busy); senders come from a pool per channel; seq is 1, 2, ...
# per channel in time order.
_MESSAGES_SQL = """
INSERT INTO chat_messages (id, channel_id, sender_id, seq, created_at)
SELECT i + 1, channel_id, sender_id,
       row_number() OVER (PARTITION BY channel_id ORDER BY i), created_at
FROM (
    SELECT i,
           1 + floor(%(channels)s * power(random(), 2))::bigint AS channel_id,
           created_at
    FROM (
        SELECT i, CASE
            WHEN i < %(old)s THEN %(start)s::timestamptz
                 + ((i + 0.5) / %(old)s)::float8 * %(old_span)s::interval
            ELSE %(recent_start)s::timestamptz
                 + ((i - %(old)s + 0.5) / %(recent)s)::float8 * %(recent_span)s::interval
        END AS created_at
        FROM generate_series(0::bigint, %(messages)s - 1) AS i
    ) timed
) g
CROSS JOIN LATERAL (
    SELECT 1 + (channel_id * 7919 + floor(random() * %(members)s)::bigint) %% %(users)s
        AS sender_id
) s
"""

# Ids grow with time in every table, as they do when rows are appended: an index range
# on created_at then reads neighbouring pages, as in production.
_USERS_SQL = """
INSERT INTO users (id, created_at)
SELECT g, %(now)s::timestamptz - ((%(users)s - g + random()) / %(users)s) * %(span)s::interval
FROM generate_series(1, %(users)s) AS g
"""

# Most audit rows spread evenly; 5 % land in one busy second a day (the daily QPS peak).
_AUDIT_SQL = """
INSERT INTO audit_logs (user_id, action, created_at)
SELECT user_id, action, created_at FROM (
    SELECT 1 + floor(%(users)s * power(random(), 1.5))::bigint AS user_id,
           (ARRAY['login', 'post.create', 'message.send', 'file.upload', 'profile.update'])
               [1 + floor(random() * 5)::int] AS action,
           CASE WHEN random() < 0.05
                THEN %(start)s::timestamptz + floor(random() * %(days)s) * interval '1 day'
                     + interval '12 hours' + random() * interval '1 second'
                ELSE %(start)s::timestamptz + random() * %(span)s::interval
           END AS created_at
    FROM generate_series(1, %(audit)s)
) g
ORDER BY created_at
"""

_FILES_SQL = """
INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, status, created_at,
                           updated_at)
SELECT md5('demo' || g), %(bucket)s, 'demo/' || md5('demo' || g),
       1024 + floor(random() * 10485760)::bigint, 1 + floor(random() * 3)::int, 0, t, t
FROM generate_series(1, %(files)s) AS g,
     LATERAL (SELECT %(start)s::timestamptz
                     + ((g - random()) / %(files)s) * %(span)s::interval AS t) c
"""

_INBOX_SQL = """
INSERT INTO chat_inbox (user_id, message_id, created_at)
SELECT 1 + (sender_id %% %(users)s), id, created_at FROM chat_messages
"""


def month_starts(first: Any, last: Any) -> list[Any]:
    """The first day of every month from ``first``'s month through ``last``'s."""
    from datetime import date

    out, year, month = [], first.year, first.month
    while (year, month) <= (last.year, last.month):
        out.append(date(year, month, 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def create_month_partitions(conn: Any, table: str, first: Any, last: Any) -> list[str]:
    """``{table}_{yyyy_mm}`` partitions (UTC month starts) covering ``first``..``last``."""
    from datetime import date

    from psycopg import sql

    names = []
    for start in month_starts(first, last):
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
        name = f"{table}_{start:%Y_%m}"
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
        ).format(sql.Identifier(name), sql.Identifier(table),
                 sql.Literal(f"{start} 00:00:00+00"), sql.Literal(f"{end} 00:00:00+00")))
        names.append(name)
    return names


def load_postgres(conn: Any, *, users: int = 5_000, channels: int = 200,
                  messages: int = 200_000, audit: int = 100_000, files: int = 2_000,
                  days: int = 30, gaps: int = 3, inbox: bool = True, indexes: bool = True,
                  now: Any = None, seed: float = 0.42) -> dict[str, Any]:
    """(Re)load users, chat_messages (+ chat_inbox), audit_logs and live file_metadata
    rows over the last ``days`` days, in the connection's schema, inside PostgreSQL.

    Monthly partitions are created for the months the data covers (the current one
    included, later ones left to `novajobs create-partitions`). ``gaps`` messages of the
    recent minutes are deleted on purpose, each from a different channel and never a
    channel's last message, so check-message-gaps has exactly these to find. Returns
    the row counts and the deleted (channel_id, seq) pairs. ``conn`` must be autocommit.
    """
    from datetime import UTC, datetime, timedelta

    now = now or datetime.now(UTC)
    start = now - timedelta(days=days)
    recent_start = now - timedelta(minutes=RECENT_MINUTES)
    recent = min(messages // 4, max(messages // 20, 1))
    for table in ("users", "chat_messages", "chat_inbox", "audit_logs", "file_metadata"):
        conn.execute(POSTGRES_DDL[table])
    for table in ("chat_messages", "chat_inbox"):
        create_month_partitions(conn, table, start.date(), now.date())
    conn.execute("TRUNCATE users, chat_messages, chat_inbox, audit_logs")
    conn.execute("DELETE FROM file_metadata WHERE bucket = %s", [DEMO_FILES_BUCKET])
    conn.execute("SELECT setseed(%s)", [seed])
    span = timedelta(days=days)
    conn.execute(_USERS_SQL, {"now": now, "span": span * 2, "users": users})
    conn.execute(_MESSAGES_SQL, {
        "channels": channels, "users": users, "members": MEMBERS_PER_CHANNEL,
        "messages": messages, "old": messages - recent, "recent": recent, "start": start,
        "old_span": recent_start - start, "recent_start": recent_start,
        "recent_span": timedelta(minutes=RECENT_MINUTES),
    })
    if inbox:
        conn.execute(_INBOX_SQL, {"users": users})
    conn.execute(_AUDIT_SQL, {"users": users, "start": start, "days": days, "span": span,
                              "audit": audit})
    conn.execute(_FILES_SQL, {"bucket": DEMO_FILES_BUCKET, "files": files, "start": start,
                              "span": span})
    deleted = delete_some_messages(conn, gaps, now)
    if indexes:
        for ddl in POSTGRES_INDEXES.values():
            conn.execute(ddl)
    for table in ("users", "chat_messages", "chat_inbox", "audit_logs", "file_metadata"):
        conn.execute(f"VACUUM ANALYZE {table}")
    counts: dict[str, Any] = {
        table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("users", "chat_messages", "chat_inbox", "audit_logs", "file_metadata")
    }
    counts["deleted_messages"] = deleted
    return counts


def delete_some_messages(conn: Any, n: int, now: Any) -> list[tuple[int, int]]:
    """Delete ``n`` messages of the last 9 minutes (1 minute old at least), from the
    busiest channels, each followed by a later message of its channel: real gaps."""
    from datetime import timedelta

    rows = conn.execute(
        """
        DELETE FROM chat_messages WHERE (channel_id, seq) IN (
            SELECT channel_id, max(seq) - 1 FROM chat_messages
            WHERE created_at >= %s AND created_at < %s
            GROUP BY channel_id HAVING count(*) >= 3
            ORDER BY count(*) DESC, channel_id LIMIT %s
        ) RETURNING channel_id, seq
        """,
        [now - timedelta(minutes=9), now - timedelta(minutes=1), n],
    ).fetchall()
    return sorted((int(c), int(s)) for c, s in rows)


def add_postgres_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PostgreSQL (DATABASE_URL)")
    group.add_argument("--skip-postgres", action="store_true", help="load ClickHouse only")
    group.add_argument("--pg-users", type=int, default=5_000)
    group.add_argument("--channels", type=int, default=200)
    group.add_argument("--messages", type=int, default=200_000)
    group.add_argument("--audit", type=int, default=100_000, help="audit_logs rows")
    group.add_argument("--files", type=int, default=2_000, help="live file_metadata rows")
    group.add_argument("--days", type=int, default=30, help="history spread over this many days")
    group.add_argument("--gaps", type=int, default=3, help="recent messages deleted on purpose")


def load_postgres_from_args(args: argparse.Namespace) -> None:
    import psycopg

    from novajobs.settings import load_settings

    with psycopg.connect(load_settings().database_url, autocommit=True) as conn:
        counts = load_postgres(conn, users=args.pg_users, channels=args.channels,
                               messages=args.messages, audit=args.audit, files=args.files,
                               days=args.days, gaps=args.gaps)
        history = load_history(conn)
    gaps = counts.pop("deleted_messages")
    for table, n in counts.items():
        print(f"postgres {table}: {n:,} rows", file=sys.stderr)
    print(f"postgres: deleted (channel_id, seq) {gaps} on purpose", file=sys.stderr)
    print(f"postgres: old months to archive {history}", file=sys.stderr)


# -- data lifecycle: old months to archive, orphans to quarantine -----------------------
ARCHIVE_BUCKET = "novajobs-archive"
ORPHANS_BUCKET = "nova-orphans-demo"
HISTORY_CHANNEL_BASE = 1_000_000  # channels of their own: check-message-gaps never mixes them

_HISTORY_SQL = """
INSERT INTO chat_messages (id, channel_id, sender_id, seq, created_at)
SELECT %(base)s + n, %(channels)s + n %% 20, 1 + n %% 97, %(seq)s + n / 20,
       %(start)s::timestamptz + (n::float8 / %(rows)s) * (%(end)s::timestamptz - %(start)s)
FROM generate_series(0, %(rows)s - 1) AS n
"""


def load_history(conn: Any, *, months_back: tuple[int, ...] = (6, 5, 4),
                 rows_per_month: int = 5_000, now: Any = None) -> dict[str, int]:
    """Whole old months of chat_messages (and their chat_inbox rows) in partitions of
    their own, for archive-partitions to archive and restore-partition to bring back."""
    from datetime import UTC, date, datetime

    now = now or datetime.now(UTC)
    counts = {}
    for back in months_back:
        index = now.year * 12 + now.month - 1 - back
        start, end = date(index // 12, index % 12 + 1, 1), date((index + 1) // 12,
                                                                 (index + 1) % 12 + 1, 1)
        for table in ("chat_messages", "chat_inbox"):
            conn.execute(POSTGRES_DDL[table])
            create_month_partitions(conn, table, start, start)
        name = f"chat_messages_{start:%Y_%m}"
        conn.execute(f"TRUNCATE {name}, chat_inbox_{start:%Y_%m}")
        conn.execute(_HISTORY_SQL, {"base": 10_000_000 * (back + 1), "rows": rows_per_month,
                                    "channels": HISTORY_CHANNEL_BASE, "seq": back * 100_000,
                                    "start": start, "end": end})
        conn.execute(f"INSERT INTO chat_inbox_{start:%Y_%m} SELECT sender_id, id, created_at "
                     f"FROM {name}")
        counts[f"{start:%Y-%m}"] = rows_per_month
    return counts


def load_orphans(pg_conn: Any, minio_client: Any, bucket: str = ORPHANS_BUCKET, *,
                 live: int = 200, orphans: int = 30, missing: int = 5) -> dict[str, int]:
    """A bucket for gc-orphans: live files (row + object), objects no row names (an
    upload whose row was never written), live rows whose object is gone."""
    import io

    reset_files(pg_conn, minio_client, bucket)
    load_files(pg_conn, minio_client, bucket, live=live, marked=0, recent=0, missing=0,
               held=0, seed=13, max_size=2048)
    for n in range(orphans):
        body = f"an upload whose row was never written #{n}".encode()
        minio_client.put_object(bucket, f"uploads/tmp/{n:04d}.part", io.BytesIO(body),
                                len(body))
    pg_conn.execute("""
        INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, status, created_at)
        SELECT 'demo-gone-' || n, %s, 'files/gone/' || n, 100, 1, 0, now() - interval '3 days'
        FROM generate_series(1, %s) AS n
    """, [bucket, missing])
    pg_conn.execute(POSTGRES_INDEXES["file_metadata_bucket_path"])
    if not minio_client.bucket_exists(ARCHIVE_BUCKET):
        minio_client.make_bucket(ARCHIVE_BUCKET)
    return {"live": live, "orphans": orphans, "rows_without_object": missing}


# -- Redis, Neo4j and Elasticsearch: small fixed sets that show each job's branches ------
def load_redis(r: Any, *, now: float | None = None) -> dict[str, int]:
    """Token-blacklist entries of every kind, and audit events (2 of them poison) in
    stream:audit:log. Replaces what an earlier load wrote."""
    import json

    now = now or time.time()
    for key in r.scan_iter(match="auth:block:token:demo-*", count=1000):
        r.delete(key)
    pipe = r.pipeline(transaction=False)
    for i in range(50):  # normal: written with a TTL
        pipe.set(f"auth:block:token:demo-ttl-{i}", int(now) + 3600, ex=3600)
    for i in range(20):  # no TTL, expired: clean-token-blacklist deletes them
        pipe.set(f"auth:block:token:demo-expired-{i}", json.dumps({"exp": int(now) - 60 * i - 1}))
    for i in range(10):  # no TTL, still valid: it sets EXPIREAT instead
        pipe.set(f"auth:block:token:demo-valid-{i}", int(now) + 600 + i)
    for i in range(3):  # unreadable: reported, kept unless --delete-unreadable
        pipe.set(f"auth:block:token:demo-garbage-{i}", "not-a-timestamp")
    pipe.delete("stream:audit:log")
    for i in range(1000):
        pipe.xadd("stream:audit:log", {"user_id": 1 + i % 500, "action": "login",
                                       "ts": f"{now - 1000 + i:.3f}"})
    pipe.xadd("stream:audit:log", {"user_id": "abc", "action": "login", "ts": str(now)})
    pipe.xadd("stream:audit:log", {"action": "logout"})
    pipe.execute()
    return {"blacklist keys": 83, "stream entries": 1002}


def load_neo4j(driver: Any, user_ids: list[int], *, missing: int = 3) -> int:
    """(:User {id}) for every PostgreSQL user but ``missing`` of them (in batches of 100:
    FalkorDB, the local stand-in, crashes on larger Bolt requests)."""
    ids = user_ids[missing:]
    for attempt in range(5):  # FalkorDB: every other new connection can hang once
        try:
            with driver.session() as session:
                session.run("MATCH (u:User) DELETE u").consume()
                for start in range(0, len(ids), 100):
                    session.run("UNWIND $ids AS id CREATE (:User {id: id})",
                                ids=ids[start:start + 100]).consume()
            return len(ids)
        except Exception:
            if attempt == 4:
                raise
    return 0


def load_elasticsearch(es: Any, *, now: float | None = None) -> list[str]:
    """Daily log indices of the last 10 days (creation dates to match), plus an alias."""
    from datetime import UTC, datetime

    now = now or time.time()
    names = []
    for days_ago in range(10):
        created = now - days_ago * 86400
        name = "logs-" + datetime.fromtimestamp(created, UTC).strftime("%Y.%m.%d")
        if es.indices.exists(index=name):
            es.indices.delete(index=name)
        es.indices.create(index=name, settings={"index.creation_date": int(created * 1000)})
        es.index(index=name, document={"message": "demo", "ts": int(created)})
        names.append(name)
    es.indices.put_alias(index=names[0], name="logs-write", is_write_index=True)
    return names


def load_others_from_args(args: argparse.Namespace) -> None:
    """Redis, Neo4j and Elasticsearch demo data, from the same settings novajobs uses."""
    from novajobs.connections import Connections
    from novajobs.output import JobLog
    from novajobs.settings import load_settings

    conns = Connections(load_settings(), JobLog())
    try:
        for what, n in load_redis(conns.redis).items():
            print(f"redis {what}: {n}", file=sys.stderr)
        ids = [row[0] for row in conns.pg.execute("SELECT id FROM users ORDER BY id")]
        conns.pg.rollback()
        print(f"neo4j: {load_neo4j(conns.neo4j, ids):,} :User nodes "
              f"({len(ids):,} PostgreSQL users)", file=sys.stderr)
        lifecycle = load_orphans(conns.pg, conns.minio)
        conns.pg.commit()
        print(f"s3 {ORPHANS_BUCKET}: {lifecycle}; archive bucket {ARCHIVE_BUCKET}",
              file=sys.stderr)
        indices = load_elasticsearch(conns.elasticsearch)
        print(f"elasticsearch: {len(indices)} indices {indices[-1]} .. {indices[0]}",
              file=sys.stderr)
    finally:
        conns.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--posts", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--edges", type=int, default=50_000)
    parser.add_argument("--hours", type=int, default=6, help="events spread over this many hours")
    add_postgres_arguments(parser)
    add_files_arguments(parser)
    parser.add_argument("--skip-others", action="store_true",
                        help="no Redis blacklist/stream, Neo4j or Elasticsearch demo data")
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
    if not args.skip_postgres:
        load_postgres_from_args(args)
    if args.gc_files:
        load_files_from_args(args)
    if not args.skip_others and not args.skip_postgres:
        load_others_from_args(args)
    print(f"demo data loaded in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
