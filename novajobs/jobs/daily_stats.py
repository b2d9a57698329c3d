"""daily-stats: one row per day in ``daily_stats`` (seed 003 §5), upserted on ``stat_date``.

For each day, in the configured time zone (a day is local midnight to midnight):

- ``total_users``: users created before the end of the day (a NULL ``created_at`` is
  never counted: we cannot say when that user arrived);
- ``active_users`` (DAU): distinct ``audit_logs.user_id`` that day;
- ``total_msgs``: ``chat_messages`` rows created that day;
- ``storage_usage``: the sum of ``file_metadata.size`` of files created that day (bytes
  added; files already garbage-collected are gone from the table and not counted);
- ``api_qps_peak``: the most ``audit_logs`` rows in one second of that day.

A range (``--from/--to``) is computed set-wise: ``generate_series`` over the days, left
joined with one grouped aggregate per source table over the whole range, so a year
costs a handful of scans, not 5 x 365 queries. Days without data get zero rows. The
upsert only touches rows whose numbers changed, so a re-run over the same data writes
nothing. Indexes on ``created_at`` of users, audit_logs and file_metadata help short
ranges (chat_messages is pruned by its partitions); a long backfill scans anyway.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.dates import day_start, local_today, resolve_days
from novajobs.errors import Outcome
from novajobs.pgsession import open_session, pg_errors
from novajobs.schema import require_tables

LOGGED_DAYS_MAX = 31  # a longer backfill logs its summary only; --json has every day
METRICS = ("total_users", "active_users", "total_msgs", "storage_usage", "api_qps_peak")

# %(lo)s / %(hi)s: the range's first midnight and the midnight after its last day, so
# every scan below is one index- or partition-friendly range over created_at.
STATS_SQL = """
WITH days AS (
    SELECT d::date AS stat_date
    FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
),
users_before AS (
    SELECT count(*) AS n FROM users WHERE created_at < %(lo)s
),
new_users AS (
    SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date, count(*) AS n
    FROM users
    WHERE created_at >= %(lo)s AND created_at < %(hi)s
    GROUP BY 1
),
activity AS (
    SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date,
           count(DISTINCT user_id) AS n
    FROM audit_logs
    WHERE created_at >= %(lo)s AND created_at < %(hi)s
    GROUP BY 1
),
per_second AS (
    SELECT date_trunc('second', created_at) AS second, count(*) AS n
    FROM audit_logs
    WHERE created_at >= %(lo)s AND created_at < %(hi)s
    GROUP BY 1
),
busiest AS (
    SELECT (second AT TIME ZONE %(tz)s)::date AS stat_date, max(n) AS n
    FROM per_second
    GROUP BY 1
),
messages AS (
    SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date, count(*) AS n
    FROM chat_messages
    WHERE created_at >= %(lo)s AND created_at < %(hi)s
    GROUP BY 1
),
storage AS (
    SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date, sum(size) AS n
    FROM file_metadata
    WHERE created_at >= %(lo)s AND created_at < %(hi)s
    GROUP BY 1
)
SELECT
    d.stat_date,
    ((SELECT n FROM users_before)
        + coalesce(sum(new_users.n) OVER (ORDER BY d.stat_date), 0))::bigint AS total_users,
    coalesce(activity.n, 0)::bigint AS active_users,
    coalesce(messages.n, 0)::bigint AS total_msgs,
    coalesce(storage.n, 0)::bigint AS storage_usage,
    coalesce(busiest.n, 0)::int AS api_qps_peak
FROM days d
LEFT JOIN new_users USING (stat_date)
LEFT JOIN activity USING (stat_date)
LEFT JOIN busiest USING (stat_date)
LEFT JOIN messages USING (stat_date)
LEFT JOIN storage USING (stat_date)
ORDER BY d.stat_date
"""

# Rows whose numbers did not change are left alone (no new tuple, created_at kept).
UPSERT_SQL = """
INSERT INTO daily_stats AS t
    (stat_date, total_users, active_users, total_msgs, storage_usage, api_qps_peak)
SELECT * FROM unnest(%s::date[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],
                     %s::int[])
ON CONFLICT (stat_date) DO UPDATE SET
    total_users = EXCLUDED.total_users,
    active_users = EXCLUDED.active_users,
    total_msgs = EXCLUDED.total_msgs,
    storage_usage = EXCLUDED.storage_usage,
    api_qps_peak = EXCLUDED.api_qps_peak,
    created_at = now()
WHERE (t.total_users, t.active_users, t.total_msgs, t.storage_usage, t.api_qps_peak)
    IS DISTINCT FROM (EXCLUDED.total_users, EXCLUDED.active_users, EXCLUDED.total_msgs,
                      EXCLUDED.storage_usage, EXCLUDED.api_qps_peak)
RETURNING stat_date, xmax = 0 AS inserted
"""


def compute_days(ctx: JobContext, first: date, last: date) -> list[dict[str, Any]]:
    """The metrics of every day from ``first`` to ``last`` (inclusive), in one query."""
    tz = ctx.settings.timezone
    params = {
        "first": first,
        "last": last,
        "lo": day_start(first, tz),
        "hi": day_start(last + timedelta(days=1), tz),
        "tz": tz,
    }
    # No ctx.retry here: a psycopg connection that broke stays broken, so only the
    # connect is retried (in Connections); a drop mid-query ends the run as "unavailable".
    rows = ctx.pg.execute(STATS_SQL, params).fetchall()
    return [dict(zip(("stat_date", *METRICS), row, strict=True)) for row in rows]


def upsert_days(ctx: JobContext, days: list[dict[str, Any]]) -> tuple[list[date], list[date]]:
    """Write the days; returns (inserted, updated) dates. Unchanged days are neither."""
    columns = [[day[name] for day in days] for name in ("stat_date", *METRICS)]
    ctx.checkpoint()
    with ctx.pg.transaction():
        written = ctx.pg.execute(UPSERT_SQL, columns).fetchall()
    inserted = sorted(d for d, is_new in written if is_new)
    updated = sorted(d for d, is_new in written if not is_new)
    return inserted, updated


def run(
    ctx: JobContext,
    on: str | None = None,
    from_date: str | None = None,
    to_date: str | None = None,
) -> Result:
    tz = ctx.settings.timezone
    first, last = resolve_days(tz, on=on, first=from_date, last=to_date)
    if last == local_today(tz):
        ctx.log.warning("today is not over: its numbers will grow", stat_date=str(last))
    with pg_errors("daily-stats"):
        conn = open_session(ctx)
        require_tables(
            conn,
            owned=("daily_stats",),
            read=("users", "audit_logs", "chat_messages", "file_metadata"),
        )
        days = compute_days(ctx, first, last)
        inserted, updated = upsert_days(ctx, days)
    unchanged = len(days) - len(inserted) - len(updated)
    ctx.count("days", len(days))
    ctx.count("days_inserted", len(inserted))
    ctx.count("days_updated", len(updated))
    ctx.count("days_unchanged", unchanged)
    span = str(first) if first == last else f"{first}..{last}"
    if len(days) <= LOGGED_DAYS_MAX:
        for day in days:
            ctx.log.info("daily stats", **{**day, "stat_date": str(day["stat_date"])})
    return Result(
        Outcome.SUCCESS,
        f"daily stats for {span} ({tz}): {len(inserted)} inserted, {len(updated)} updated, "
        f"{unchanged} unchanged",
        {
            "table": "days",
            "days": [{**day, "stat_date": day["stat_date"].isoformat()} for day in days],
            "inserted": [d.isoformat() for d in inserted],
            "updated": [d.isoformat() for d in updated],
            "timezone": tz,
        },
    )
