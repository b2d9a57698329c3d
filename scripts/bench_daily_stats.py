#!/usr/bin/env python3
"""Benchmark: daily-stats over a year, set-wise, vs one query per metric per day.

    .venv/bin/python scripts/bench_daily_stats.py                  # 10M messages, 5M audit rows
    .venv/bin/python scripts/bench_daily_stats.py --messages 1000000 --audit 500000   # quick

Starts its own PostgreSQL 15 (scripts/stack.py) in a temporary directory, loads
``novajobs_dev.demo_data.load_postgres`` data (generated inside PostgreSQL, appended in time
order, with the documented created_at indexes), then times on the same data:

- the job: ``daily-stats --from D-365 --to D-1`` (one statement computes every day,
  then one upsert), through the job's own code;
- the naive loop: for each day, one query per metric (5 x 365) and one upsert per day;
- the previous design, for the record: GROUP BY (created_at AT TIME ZONE tz)::date
  per source table, joined to generate_series (compute only).

Each is run ``--repeat`` times; the best time counts (the machine is shared and noisy).
The job's rows and the naive loop's rows must be identical, or the script fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary

NAIVE_SQL = {
    "total_users": "SELECT count(*) FROM users WHERE created_at < %(hi)s",
    "active_users": "SELECT count(DISTINCT user_id) FROM audit_logs"
                    " WHERE created_at >= %(lo)s AND created_at < %(hi)s",
    "total_msgs": "SELECT count(*) FROM chat_messages"
                  " WHERE created_at >= %(lo)s AND created_at < %(hi)s",
    "storage_usage": "SELECT coalesce(sum(size), 0) FROM file_metadata"
                     " WHERE created_at >= %(lo)s AND created_at < %(hi)s",
    "api_qps_peak": "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM audit_logs"
                    " WHERE created_at >= %(lo)s AND created_at < %(hi)s"
                    " GROUP BY date_trunc('second', created_at)) s",
}
NAIVE_UPSERT = """
INSERT INTO daily_stats (stat_date, total_users, active_users, total_msgs, storage_usage,
                         api_qps_peak)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (stat_date) DO UPDATE SET total_users = EXCLUDED.total_users,
    active_users = EXCLUDED.active_users, total_msgs = EXCLUDED.total_msgs,
    storage_usage = EXCLUDED.storage_usage, api_qps_peak = EXCLUDED.api_qps_peak
"""

GROUPED_SQL = """
WITH days AS (
    SELECT d::date AS stat_date FROM generate_series(%(first)s::date, %(last)s::date,
                                                     interval '1 day') AS d
),
new_users AS (SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date, count(*) AS n
              FROM users WHERE created_at >= %(lo)s AND created_at < %(hi)s GROUP BY 1),
activity AS (SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date,
                    count(DISTINCT user_id) AS n
             FROM audit_logs WHERE created_at >= %(lo)s AND created_at < %(hi)s GROUP BY 1),
per_second AS (SELECT date_trunc('second', created_at) AS second, count(*) AS n
               FROM audit_logs WHERE created_at >= %(lo)s AND created_at < %(hi)s GROUP BY 1),
busiest AS (SELECT (second AT TIME ZONE %(tz)s)::date AS stat_date, max(n) AS n
            FROM per_second GROUP BY 1),
messages AS (SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date, count(*) AS n
             FROM chat_messages WHERE created_at >= %(lo)s AND created_at < %(hi)s GROUP BY 1),
storage AS (SELECT (created_at AT TIME ZONE %(tz)s)::date AS stat_date, sum(size) AS n
            FROM file_metadata WHERE created_at >= %(lo)s AND created_at < %(hi)s GROUP BY 1)
SELECT d.stat_date,
       ((SELECT count(*) FROM users WHERE created_at < %(lo)s)
        + coalesce(sum(new_users.n) OVER (ORDER BY d.stat_date), 0))::bigint,
       coalesce(activity.n, 0)::bigint, coalesce(messages.n, 0)::bigint,
       coalesce(storage.n, 0)::bigint, coalesce(busiest.n, 0)::int
FROM days d LEFT JOIN new_users USING (stat_date) LEFT JOIN activity USING (stat_date)
LEFT JOIN busiest USING (stat_date) LEFT JOIN messages USING (stat_date)
LEFT JOIN storage USING (stat_date)
ORDER BY d.stat_date
"""

ROWS_SQL = ("SELECT stat_date, total_users, active_users, total_msgs, storage_usage, "
            "api_qps_peak FROM daily_stats ORDER BY stat_date")


def day_bounds(day: date) -> dict[str, datetime]:
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return {"lo": lo, "hi": lo + timedelta(days=1)}


def time_job(settings: Any, first: date, last: date) -> float:
    from novajobs.context import JobContext
    from novajobs.jobs import daily_stats

    with JobContext(settings, "daily-stats") as ctx:
        ctx.pg.autocommit = True
        ctx.pg.execute("TRUNCATE daily_stats")
        started = time.monotonic()
        result = daily_stats.run(ctx, from_date=str(first), to_date=str(last))
        elapsed = time.monotonic() - started
    assert result.outcome == "success", result
    return elapsed


def run_naive(conn: Any, first: date, last: date) -> float:
    conn.execute("TRUNCATE daily_stats")
    started = time.monotonic()
    day = first
    while day <= last:
        bounds = day_bounds(day)
        values = [conn.execute(sql, bounds).fetchone()[0] for sql in NAIVE_SQL.values()]
        conn.execute(NAIVE_UPSERT, [day, *values])
        day += timedelta(days=1)
    return time.monotonic() - started


def run_grouped(conn: Any, first: date, last: date) -> tuple[float, list[Any]]:
    params = {"first": first, "last": last, "tz": "UTC", **day_bounds(first)}
    params["hi"] = day_bounds(last)["hi"]
    conn.execute("SET jit = off")
    started = time.monotonic()
    rows = conn.execute(GROUPED_SQL, params).fetchall()
    return time.monotonic() - started, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--audit", type=int, default=5_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=500_000)
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=2)
    args = parse_args(parser, tiny={"messages": 2000, "audit": 1000, "users": 200, "files": 100,
                                    "channels": 20, "days": 10, "repeat": 1})

    import psycopg

    from novajobs import schema
    from novajobs.settings import load_settings

    with temporary(("redis", "postgres")) as stack:
        env = stack.env()
        settings = load_settings(environ={"DATABASE_URL": env["DATABASE_URL"],
                                          "REDIS_URL": env["REDIS_URL"]})
        conn = psycopg.connect(env["DATABASE_URL"], autocommit=True)
        started = time.monotonic()
        counts = demo_data.load_postgres(
            conn, users=args.users, channels=args.channels, messages=args.messages,
            audit=args.audit, files=args.files, days=args.days, gaps=0, inbox=False)
        schema.ensure_tables(conn)
        print(f"loaded in {time.monotonic() - started:.0f} s: " + ", ".join(
            f"{table} {n:,}" for table, n in counts.items() if isinstance(n, int)))
        today = datetime.now(UTC).date()
        first, last = today - timedelta(days=args.days), today - timedelta(days=1)
        print(f"range {first} .. {last} ({args.days} days), time zone UTC")

        job, naive, grouped = [], [], []
        for _ in range(args.repeat):
            job.append(time_job(settings, first, last))
            job_rows = conn.execute(ROWS_SQL).fetchall()
            naive.append(run_naive(conn, first, last))
            naive_rows = conn.execute(ROWS_SQL).fetchall()
            elapsed, grouped_rows = run_grouped(conn, first, last)
            grouped.append(elapsed)
            if not job_rows == naive_rows == grouped_rows:
                print("MISMATCH between the job, the naive loop and the grouped query")
                return 1
        best_job, best_naive, best_grouped = min(job), min(naive), min(grouped)
        print(f"job (one statement + one upsert): {best_job:7.2f} s   runs {_fmt(job)}")
        print(f"naive loop ({len(NAIVE_SQL)} x {args.days} queries + upserts):"
              f" {best_naive:7.2f} s   runs {_fmt(naive)}")
        print(f"GROUP BY day (compute only):      {best_grouped:7.2f} s   runs {_fmt(grouped)}")
        print(f"speed-up vs naive: {best_naive / best_job:.1f}x (goal >= 5x); "
              f"vs GROUP BY day: {best_grouped / best_job:.1f}x; results identical: yes")
        fencing_overhead(settings, first, last, max(args.repeat, 3))
        conn.close()
    return 0


def fencing_overhead(settings: Any, first: date, last: date, runs: int) -> None:
    """Whole runs (lock, records, the fenced upsert) with and without fencing tokens,
    interleaved: the range above, and one day (what the daily schedule runs)."""
    from novajobs.runner import run_job
    from novajobs_dev.bench import interleaved
    from novajobs_dev.unfenced import unfenced

    for label, span in (("range", (first, last)), ("one day", (last, last))):

        def fenced(span: tuple[date, date] = span) -> None:
            rec = run_job("daily-stats", settings, from_date=str(span[0]), to_date=str(span[1]))
            assert rec.outcome.ok, rec.error

        def plain() -> None:
            with unfenced():
                fenced()

        t_plain, t_fenced = interleaved(plain, fenced, runs)
        print(f"fencing overhead, run_job {label:7}: {t_plain * 1000:9.1f} ms without, "
              f"{t_fenced * 1000:9.1f} ms with: {(t_fenced / t_plain - 1) * 100:+.1f}% "
              f"(goal < 5%; median of {runs})")


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    sys.exit(main())
