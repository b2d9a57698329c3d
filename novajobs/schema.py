"""Tables novajobs itself owns, created idempotently by `novajobs init-db`.

Tables other services own (users, chat_messages, file_metadata, ...) are only read;
their DDL lives with the demo data (scripts/demo_data.py), never here.
"""

from __future__ import annotations

from typing import Any

from novajobs.errors import ConfigError

# name -> idempotent DDL (CREATE ... IF NOT EXISTS). Order matters: dependencies first.
OWNED_TABLES: dict[str, str] = {}

# daily-stats (the table other services read): one row per day, upserted on stat_date.
OWNED_TABLES["daily_stats"] = """
CREATE TABLE IF NOT EXISTS daily_stats (
    id BIGSERIAL PRIMARY KEY,
    stat_date DATE NOT NULL,
    total_users BIGINT DEFAULT 0,
    active_users BIGINT DEFAULT 0,
    total_msgs BIGINT DEFAULT 0,
    storage_usage BIGINT DEFAULT 0,
    api_qps_peak INT DEFAULT 0,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE (stat_date)
)"""

# group-activity-rank (plus a unique key, so a re-run replaces a week): the top channels
# of one ISO week, "2025-48"; a re-run replaces the week's rows.
OWNED_TABLES["group_activity_rank"] = """
CREATE TABLE IF NOT EXISTS group_activity_rank (
    id BIGSERIAL PRIMARY KEY,
    stat_week VARCHAR(10),
    channel_id BIGINT NOT NULL,
    msg_count BIGINT,
    active_members INT,
    score DECIMAL(10, 2),
    rank INT,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    UNIQUE (stat_week, channel_id)
)"""

# drain-stream's audit-log handler: which stream entries were already written to
# audit_logs (another service's table, never altered). Inserted in the same transaction
# as the audit row, so an entry delivered twice is written once; pruned by handled_at.
OWNED_TABLES["novajobs_stream_dedupe"] = """
CREATE TABLE IF NOT EXISTS novajobs_stream_dedupe (
    stream TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (stream, entry_id)
);
CREATE INDEX IF NOT EXISTS novajobs_stream_dedupe_handled_at
    ON novajobs_stream_dedupe (handled_at)"""

# Fencing tokens (novajobs/fencing.py): the newest fence each lock has written with.
# A write transaction advances its lock's row first and rolls back if a newer fence is
# there; the row lock orders the write transactions of two holders of one lock.
OWNED_TABLES["novajobs_fences"] = """
CREATE TABLE IF NOT EXISTS novajobs_fences (
    lock_key TEXT PRIMARY KEY,
    fence BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)"""

# archive-audit-logs: the committed archives of audit_logs batches. A row here is
# written in the same transaction that deletes the batch's rows, so an object without
# one is an unfinished upload (its rows are still in audit_logs) and may be removed.
OWNED_TABLES["novajobs_audit_archive"] = """
CREATE TABLE IF NOT EXISTS novajobs_audit_archive (
    bucket TEXT NOT NULL,
    object_key TEXT NOT NULL,
    first_id BIGINT NOT NULL,
    last_id BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    cutoff TIMESTAMPTZ NOT NULL,
    archived_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (bucket, object_key)
)"""

# gc-orphans --mark-missing: live file_metadata rows whose object is missing (another
# service's table is never altered). key_hash lets a shard clear only its own marks.
OWNED_TABLES["novajobs_missing_objects"] = """
CREATE TABLE IF NOT EXISTS novajobs_missing_objects (
    file_id BIGINT PRIMARY KEY,
    bucket TEXT NOT NULL,
    path TEXT NOT NULL,
    key_hash BIGINT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL
)"""

# Two `init-db` at once would race on CREATE TABLE IF NOT EXISTS (the loser fails on
# pg_type's unique index); one transaction-scoped advisory lock serialises them.
INIT_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('novajobs:init-db'))"


def missing_tables(conn: Any, names: list[str] | tuple[str, ...]) -> list[str]:
    """Those of ``names`` that do not resolve on the connection's search_path."""
    rows = conn.execute(
        "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(quote_ident(name)) IS NULL",
        [list(names)],
    ).fetchall()
    return [row[0] for row in rows]


def ensure_tables(conn: Any, names: list[str] | None = None) -> list[str]:
    """Create the owned tables that are missing (all, or ``names``) in one transaction.

    Returns the names that were asked for."""
    wanted = list(OWNED_TABLES) if names is None else names
    with conn.transaction():
        conn.execute(INIT_LOCK_SQL)
        for name in wanted:
            conn.execute(OWNED_TABLES[name])
    return wanted


def require_tables(conn: Any, owned: tuple[str, ...] = (), read: tuple[str, ...] = ()) -> None:
    """Raise one clear ConfigError when a table a job needs is missing.

    ``owned`` tables are novajobs' own (the fix is `novajobs init-db`); ``read`` tables
    belong to other services (the fix is pointing DATABASE_URL at the right database)."""
    gone = missing_tables(conn, [*owned, *read])
    mine = [name for name in gone if name in owned]
    if mine:
        raise ConfigError(
            f"table {', '.join(mine)} does not exist in this database: "
            "create it with `novajobs init-db`"
        )
    if gone:
        raise ConfigError(
            f"table {', '.join(gone)} does not exist in this database "
            "(it belongs to another service: check DATABASE_URL and its search_path)"
        )
