"""daily-stats, group-activity-rank and init-db against a real PostgreSQL 15."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from novajobs import schema
from novajobs.errors import Outcome
from novajobs.runner import run_job
from novajobs_dev import demo_data

# Runs take their lock in Redis; the tables live in PostgreSQL.
pytestmark = pytest.mark.usefixtures("redis_server", "pg_server")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def daily_rows(pg: Any) -> list[tuple[Any, ...]]:
    return pg.execute(
        "SELECT stat_date, total_users, active_users, total_msgs, storage_usage, api_qps_peak"
        " FROM daily_stats ORDER BY stat_date"
    ).fetchall()


# Europe/Berlin days around the spring DST change (2025-03-30 has 23 hours), in UTC:
#   03-29 [03-28 23:00, 03-29 23:00)   03-30 [03-29 23:00, 03-30 22:00)
#   03-31 [03-30 22:00, 03-31 22:00)   04-01 [03-31 22:00, 04-01 22:00)
def load_dst_days(pg: Any) -> None:
    users = [
        (1, "2025-01-01 00:00:00"),  # long before
        (2, "2025-03-28 23:30:00"),  # 03-29 00:30 local
        (3, "2025-03-29 22:59:59"),  # 03-29 23:59:59 local
        (4, "2025-03-29 23:00:00"),  # 03-30 00:00 local
        (5, "2025-03-30 21:59:59"),  # 03-30 23:59:59 CEST
        (6, "2025-03-30 22:00:00"),  # 03-31 00:00 local
        (7, "2025-04-05 00:00:00"),  # after the range
    ]
    for uid, at in users:
        pg.execute("INSERT INTO users VALUES (%s, %s)", [uid, utc(at)])
    audit = [
        (9, "2025-03-28 22:59:59.999"),  # 03-28 local: outside
        (1, "2025-03-29 10:00:00.100"),  # one second with three rows on 03-29
        (1, "2025-03-29 10:00:00.900"),
        (2, "2025-03-29 10:00:00.500"),
        (3, "2025-03-29 10:00:01.000"),
        (4, "2025-03-29 23:00:00.000"),  # 03-30: two rows in one second, then one more
        (4, "2025-03-29 23:00:00.500"),
        (5, "2025-03-30 21:59:59.900"),
        (1, "2025-03-30 22:00:00.000"),  # 03-31
    ]
    for uid, at in audit:
        pg.execute("INSERT INTO audit_logs (user_id, action, created_at) VALUES (%s, 'login', %s)",
                   [uid, utc(at)])
    messages = ["2025-03-29 08:00:00", "2025-03-29 22:59:59", "2025-03-30 21:59:59",
                "2025-04-01 21:59:00", "2025-04-01 22:00:00"]  # the last is 04-02 local
    for i, at in enumerate(messages, start=1):
        pg.execute("INSERT INTO chat_messages VALUES (%s, 1, 1, %s, %s)", [i, i, utc(at)])
    files = [(100, 0, "2025-03-29 01:00:00"), (250, 0, "2025-03-29 12:00:00"),
             (5, 2, "2025-03-29 13:00:00"), (1000, 0, "2025-03-30 22:00:00")]
    for i, (size, status, at) in enumerate(files):
        pg.execute(
            "INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, status, "
            "created_at, updated_at) VALUES (%s, 'b', %s, %s, 1, %s, %s, %s)",
            [f"h{i}", f"p{i}", size, status, utc(at), utc(at)],
        )


DST_EXPECTED = [
    (date(2025, 3, 29), 3, 3, 2, 355, 3),
    (date(2025, 3, 30), 5, 2, 1, 0, 2),
    (date(2025, 3, 31), 6, 1, 0, 1000, 1),
    (date(2025, 4, 1), 6, 0, 1, 0, 0),
]


def test_daily_stats_exact_numbers_across_a_dst_change_and_an_empty_day(report_db, make_settings):
    load_dst_days(report_db)
    settings = make_settings(timezone="Europe/Berlin")

    rec = run_job("daily-stats", settings, from_date="2025-03-29", to_date="2025-04-01")

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert daily_rows(report_db) == DST_EXPECTED
    assert rec.details["inserted"] == ["2025-03-29", "2025-03-30", "2025-03-31", "2025-04-01"]
    assert rec.details["days"][0] == {"stat_date": "2025-03-29", "total_users": 3,
                                      "active_users": 3, "total_msgs": 2,
                                      "storage_usage": 355, "api_qps_peak": 3}
    assert rec.counters == {"days": 4, "days_inserted": 4, "days_updated": 0,
                            "days_unchanged": 0}


def test_daily_stats_day_edges_follow_the_configured_time_zone(report_db, make_settings):
    load_dst_days(report_db)

    rec = run_job("daily-stats", make_settings(timezone="UTC"), on="2025-03-29")

    assert rec.outcome is Outcome.SUCCESS, rec.error
    # In UTC, 03-29 ends 1 h later: user 4 and user 4's audit rows join it.
    assert daily_rows(report_db) == [(date(2025, 3, 29), 4, 4, 2, 355, 3)]


def test_daily_stats_rerun_changes_nothing_and_a_changed_day_is_updated(report_db, make_settings):
    load_dst_days(report_db)
    settings = make_settings(timezone="Europe/Berlin")
    run_job("daily-stats", settings, from_date="2025-03-29", to_date="2025-04-01")
    stamps = report_db.execute("SELECT stat_date, created_at, xmin::text FROM daily_stats"
                               " ORDER BY 1").fetchall()

    again = run_job("daily-stats", settings, from_date="2025-03-29", to_date="2025-04-01")

    assert again.counters == {"days": 4, "days_inserted": 0, "days_updated": 0,
                              "days_unchanged": 4}
    assert report_db.execute("SELECT stat_date, created_at, xmin::text FROM daily_stats"
                             " ORDER BY 1").fetchall() == stamps

    report_db.execute("INSERT INTO chat_messages VALUES (99, 2, 1, 1, '2025-03-31 12:00+00')")
    third = run_job("daily-stats", settings, from_date="2025-03-29", to_date="2025-04-01")

    assert third.details["updated"] == ["2025-03-31"]
    assert daily_rows(report_db)[2] == (date(2025, 3, 31), 6, 1, 1, 1000, 1)


def test_backfill_equals_day_by_day_on_demo_data(pg, pg_tables, make_settings):
    now = datetime.now(UTC)
    demo_data.load_postgres(pg, users=300, channels=20, messages=20_000, audit=20_000,
                            files=300, days=6, gaps=0, indexes=True, now=now)
    schema.ensure_tables(pg)
    settings = make_settings(timezone="America/New_York")
    today = now.astimezone(ZoneInfo("America/New_York")).date()
    first, last = today - timedelta(days=7), today - timedelta(days=1)

    backfill = run_job("daily-stats", settings, from_date=str(first), to_date=str(last))
    assert backfill.counters["days_inserted"] == 7
    stored = daily_rows(pg)
    assert stored[0][2:] == (0, 0, 0, 0)  # before the demo data: zeros, not a missing row
    assert sum(row[3] for row in stored) > 0

    for k in range(7):
        day = first + timedelta(days=k)
        rec = run_job("daily-stats", settings, on=str(day))
        assert rec.counters["days_unchanged"] == 1, (day, rec.details)
    assert daily_rows(pg) == stored


def test_daily_stats_needs_its_table_and_says_how_to_create_it(pg, pg_tables, cli):
    pg_tables("users", "chat_messages", "audit_logs", "file_metadata")

    missing = cli("daily-stats", "--date", "2025-03-29")

    assert missing.returncode == 78
    last = json.loads(missing.stderr.splitlines()[-1])
    assert last["error"] == ("table daily_stats does not exist in this database: "
                             "create it with `novajobs init-db`")

    init = cli("init-db", "--json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout) == [{"table": name, "action": "created"}
                                       for name in schema.OWNED_TABLES]
    assert {"daily_stats", "group_activity_rank"} <= set(schema.OWNED_TABLES)
    again = cli("init-db", "--json")
    assert {row["action"] for row in json.loads(again.stdout)} == {"exists"}

    done = cli("daily-stats", "--date", "2025-03-29", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["details"]["days"] == [
        {"stat_date": "2025-03-29", "total_users": 0, "active_users": 0, "total_msgs": 0,
         "storage_usage": 0, "api_qps_peak": 0}
    ]


def test_init_db_dry_run_prints_the_ddl_without_a_database(cli):
    done = cli("init-db", "--dry-run", extra_env={"DATABASE_URL": "postgresql://nowhere:1/x"})

    assert done.returncode == 0
    assert "CREATE TABLE IF NOT EXISTS daily_stats" in done.stdout
    assert "UNIQUE (stat_week, channel_id)" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--date", "2025-02-30"), "--date '2025-02-30': expected a date like 2025-11-24"),
        (("--from", "2025-03-02", "--to", "2025-03-01"),
         "--from 2025-03-02 is after --to 2025-03-01"),
        (("--date", "2025-03-01", "--from", "2025-03-01"),
         "--date cannot be combined with --from/--to"),
        (("--date", "2999-01-01"), "2999-01-01 is in the future"),
    ],
)
def test_bad_dates_are_one_line_and_exit_2(cli, args, message):
    done = cli("daily-stats", *args)

    assert done.returncode == 2
    [line] = done.stderr.splitlines()  # checked before the lock: one line, nothing else
    assert line.startswith(f"novajobs: {message}")


# ISO week 2025-01 is 2024-12-30 .. 2025-01-05; in Asia/Tokyo (UTC+9) it runs
# from 2024-12-29 15:00 UTC to 2025-01-05 15:00 UTC.
def load_week(pg: Any) -> None:
    rows = []
    mid = utc("2025-01-02 12:00:00")
    rows += [(10, 1, mid)] * 5  # 5 messages, 1 sender
    rows += [(20, s, mid) for s in (1, 2, 3)]  # 3 messages, 3 senders
    rows += [(30, s, mid) for s in (1, 2)]  # 2 messages, 2 senders
    rows += [(5, 7, mid)] * 12  # 12 messages, 1 sender
    rows += [(40, 1, utc("2024-12-29 14:59:59")), (40, 2, utc("2025-01-05 15:00:00"))]
    rows += [(50, 1, utc("2024-12-29 15:00:00"))]  # the first instant of the week
    for i, (channel, sender, at) in enumerate(rows, start=1):
        pg.execute("INSERT INTO chat_messages VALUES (%s, %s, %s, %s, %s)",
                   [i, channel, sender, i, at])
    pg.execute("INSERT INTO group_activity_rank (stat_week, channel_id, msg_count, "
               "active_members, score, rank) VALUES ('2025-01', 999, 1, 1, 1, 1), "
               "('2024-52', 1, 1, 1, 1, 1)")


def ranks(pg: Any, week: str) -> list[tuple[Any, ...]]:
    return pg.execute(
        "SELECT rank, channel_id, msg_count, active_members, score FROM group_activity_rank"
        " WHERE stat_week = %s ORDER BY rank", [week]
    ).fetchall()


def test_group_activity_rank_scores_ranks_and_replaces_the_week(report_db, make_settings):
    load_week(report_db)
    settings = make_settings(timezone="Asia/Tokyo", rank_top_n=4)

    rec = run_job("group-activity-rank", settings, week="2025-01")

    assert rec.outcome is Outcome.SUCCESS, rec.error
    # score = messages + 10 * senders; 5 and 30 tie at 22: the lower channel id first.
    assert ranks(report_db, "2025-01") == [
        (1, 20, 3, 3, Decimal("33.00")),
        (2, 5, 12, 1, Decimal("22.00")),
        (3, 30, 2, 2, Decimal("22.00")),
        (4, 10, 5, 1, Decimal("15.00")),
    ]
    assert ranks(report_db, "2024-52") == [(1, 1, 1, 1, Decimal("1.00"))]  # untouched
    assert rec.counters == {"channels_ranked": 4, "rows_replaced": 1}
    assert rec.details["from"] == "2024-12-30T00:00:00+09:00"


def test_group_activity_rank_weights_are_configurable(report_db, make_settings):
    load_week(report_db)
    settings = make_settings(timezone="Asia/Tokyo", rank_weight_messages=0.5,
                             rank_weight_members=0)

    run_job("group-activity-rank", settings, week="2025-W01")

    assert [(r[1], r[4]) for r in ranks(report_db, "2025-01")] == [
        (5, Decimal("6.00")), (10, Decimal("2.50")), (20, Decimal("1.50")),
        (30, Decimal("1.00")), (50, Decimal("0.50")),
    ]


@pytest.mark.parametrize(
    ("week", "message"),
    [
        ("2025-53", "--week '2025-53': ISO year 2025 has weeks 1 to 52"),
        ("2025-00", "--week '2025-00': ISO year 2025 has weeks 1 to 52"),
        ("48/2025", "--week '48/2025': expected an ISO week like 2025-48"),
        ("2999-01", "--week 2999-01 has not started yet"),
    ],
)
def test_bad_weeks_are_one_line_and_exit_2(cli, week, message):
    done = cli("group-activity-rank", "--week", week)

    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"novajobs: {message}")


def test_default_day_and_week_are_the_last_complete_ones_in_the_time_zone():
    from novajobs.dates import IsoWeek, parse_week, resolve_days, resolve_week

    friday_night = datetime(2025, 1, 3, 20, 0, tzinfo=UTC)  # Saturday 05:00 in Tokyo
    assert resolve_days("Asia/Tokyo", now=friday_night) == (date(2025, 1, 3), date(2025, 1, 3))
    assert resolve_days("America/Los_Angeles", now=friday_night) == (
        date(2025, 1, 2), date(2025, 1, 2))
    # Last week across the year boundary: ISO week 2025-01 began on 2024-12-30.
    assert resolve_week("UTC", now=datetime(2025, 1, 6, 1, tzinfo=UTC)).label == "2025-01"
    assert resolve_week("UTC", now=friday_night) == IsoWeek(2024, 52)
    assert parse_week("2026-53").monday == date(2026, 12, 28)
    assert resolve_days("UTC", first="2025-01-01", now=friday_night) == (
        date(2025, 1, 1), date(2025, 1, 2))
