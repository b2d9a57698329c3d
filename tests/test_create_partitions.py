"""create-partitions against a real PostgreSQL 15."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from novajobs.context import JobContext
from novajobs.errors import Outcome
from novajobs.jobs.create_partitions import PartitionRun, months_ahead
from novajobs.pgsession import open_session
from novajobs.runner import RunOptions, run_job

# Runs take their lock in Redis; the tables live in PostgreSQL.
pytestmark = pytest.mark.usefixtures("redis_server", "pg_server")


def partitions(pg: Any, table: str) -> dict[str, str]:
    """name -> bound expression, rendered in UTC."""
    pg.execute("SET TimeZone = 'UTC'")
    rows = pg.execute(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(%s)
        """,
        [table],
    ).fetchall()
    return dict(rows)


def bound(lo: str, hi: str) -> str:
    return f"FOR VALUES FROM ('{lo}') TO ('{hi}')"


def expected_months(today: date, ahead: int) -> list[tuple[str, str, str]]:
    """(suffix, start, end) computed independently of the job."""
    out = []
    for k in range(ahead + 1):
        y, m = divmod(today.month - 1 + k, 12)
        start = date(today.year + y, m + 1, 1)
        y2, m2 = divmod(today.month + k, 12)
        end = date(today.year + y2, m2 + 1, 1)
        out.append((f"{start:%Y_%m}", f"{start} 00:00:00+00", f"{end} 00:00:00+00"))
    return out


def test_creates_current_month_and_three_ahead_then_nothing_to_do(pg, pg_tables, settings):
    pg_tables("chat_messages", "chat_inbox")

    rec = run_job("create-partitions", settings)

    assert rec.outcome is Outcome.SUCCESS, rec.error
    today = datetime.now(UTC).date()
    for table in ("chat_messages", "chat_inbox"):
        assert partitions(pg, table) == {
            f"{table}_{suffix}": bound(lo, hi) for suffix, lo, hi in expected_months(today, 3)
        }
    assert rec.counters == {"partitions_created": 8}
    assert [row["action"] for row in rec.details["partitions"]] == ["created"] * 8

    again = run_job("create-partitions", settings)

    assert again.outcome is Outcome.NOTHING_TO_DO
    assert again.counters == {"partitions_existing": 8}
    assert again.exit_code == 0


def test_names_and_bounds_across_a_year_boundary_and_in_another_time_zone(
    pg, pg_tables, make_settings
):
    pg_tables("chat_messages")
    months = months_ahead(date(2025, 11, 30), 3)
    assert [m.suffix for m in months] == ["2025_11", "2025_12", "2026_01", "2026_02"]

    settings = make_settings(partition_timezone="Asia/Shanghai")
    with JobContext(settings, "create-partitions") as ctx:
        job = PartitionRun(ctx, open_session(ctx, lock_timeout_sec=5), move=False)
        job.handle_table("chat_messages", months)

    assert job.problems == [] and job.failures == []
    # Shanghai is UTC+8: its month starts are 16:00 UTC the day before.
    assert partitions(pg, "chat_messages") == {
        "chat_messages_2025_11": bound("2025-10-31 16:00:00+00", "2025-11-30 16:00:00+00"),
        "chat_messages_2025_12": bound("2025-11-30 16:00:00+00", "2025-12-31 16:00:00+00"),
        "chat_messages_2026_01": bound("2025-12-31 16:00:00+00", "2026-01-31 16:00:00+00"),
        "chat_messages_2026_02": bound("2026-01-31 16:00:00+00", "2026-02-28 16:00:00+00"),
    }
    # Rows route to the month of their Shanghai time.
    pg.execute("INSERT INTO chat_messages VALUES (1, 1, 1, 1, '2025-12-31 17:00:00+00')")
    assert pg.execute("SELECT tableoid::regclass::text FROM chat_messages").fetchone()[0] == (
        "chat_messages_2026_01"
    )


def test_dry_run_prints_the_ddl_and_changes_nothing(pg, pg_tables, cli, names):
    pg_tables("chat_messages", "chat_inbox")

    done = cli("create-partitions", "--dry-run", "--months", "1", "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "dry_run"
    suffix, lo, hi = expected_months(datetime.now(UTC).date(), 1)[0]
    lo, hi = lo + ":00", hi + ":00"  # the DDL spells the offset in full: +00:00
    schema = names["schema"]
    assert result["details"]["ddl"][0] == (
        f'CREATE TABLE IF NOT EXISTS "{schema}"."chat_messages_{suffix}" PARTITION OF '
        f"\"{schema}\".\"chat_messages\" FOR VALUES FROM ('{lo}') TO ('{hi}')"
    )
    assert len(result["details"]["ddl"]) == 4
    assert partitions(pg, "chat_messages") == {} and partitions(pg, "chat_inbox") == {}


def with_default_partition(pg: Any) -> tuple[str, str, str]:
    """chat_messages with a DEFAULT partition holding 3 rows of next month (its first
    and last instant included), one of the month after (on the boundary) and one far
    away; returns next month's (suffix, start, end)."""
    pg.execute("CREATE TABLE chat_messages_default PARTITION OF chat_messages DEFAULT")
    suffix, lo, hi = expected_months(datetime.now(UTC).date(), 1)[1]
    pg.execute(
        """
        INSERT INTO chat_messages (id, channel_id, sender_id, seq, created_at) VALUES
            (1, 7, 1, 1, %(lo)s::timestamptz),
            (2, 7, 1, 2, %(lo)s::timestamptz + interval '3 days'),
            (3, 7, 1, 3, %(hi)s::timestamptz - interval '1 microsecond'),
            (4, 8, 1, 1, '2031-05-01 00:00:00+00'),
            (5, 8, 1, 2, %(hi)s::timestamptz)
        """,
        {"lo": lo, "hi": hi},
    )
    return suffix, lo, hi


def test_rows_in_the_default_partition_stop_that_month_with_a_clear_message(
    pg, pg_tables, settings
):
    pg_tables("chat_messages")
    suffix, lo, hi = with_default_partition(pg)

    rec = run_job("create-partitions", settings, table=("chat_messages",))

    assert rec.outcome is Outcome.FAILED and rec.exit_code == 1
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    lo, hi = lo + ":00", hi + ":00"
    first = rec.error.split("; ")[0] + "; " + rec.error.split("; ")[1]
    assert first == (
        f"{schema}.chat_messages: the default partition chat_messages_default holds 3 rows "
        f"in [{lo}, {hi}); chat_messages_{suffix} not created (re-run with "
        "--move-default-rows to move them into it)"
    )
    assert "chat_messages_default holds 1 rows in" in rec.error  # the month after
    made = partitions(pg, "chat_messages")
    assert f"chat_messages_{suffix}" not in made
    assert len(made) == 1 + 2  # default + the two months without rows in the default
    assert pg.execute("SELECT count(*) FROM chat_messages_default").fetchone()[0] == 5
    assert rec.counters == {"partitions_created": 2, "partitions_blocked": 2}


def test_move_default_rows_moves_them_into_the_new_partition(pg, pg_tables, settings):
    pg_tables("chat_messages")
    suffix, _lo, _hi = with_default_partition(pg)

    rec = run_job(
        "create-partitions", settings, table=("chat_messages",), move_default_rows=True
    )

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert "chat_messages_default" in partitions(pg, "chat_messages")
    placed = pg.execute(
        "SELECT tableoid::regclass::text, array_agg(id ORDER BY id) FROM chat_messages GROUP BY 1"
    ).fetchall()
    after = expected_months(datetime.now(UTC).date(), 2)[2][0]
    assert dict(placed) == {
        f"chat_messages_{suffix}": [1, 2, 3],
        f"chat_messages_{after}": [5],
        "chat_messages_default": [4],
    }
    assert rec.counters == {"partitions_created": 4, "rows_moved": 4}


def test_bad_tables_exit_78_and_the_good_ones_are_still_handled(pg, pg_tables, cli):
    pg_tables("chat_messages", "users")
    pg.execute("CREATE TABLE by_list (id int, kind text) PARTITION BY LIST (kind)")
    pg.execute("CREATE TABLE by_int (id bigint) PARTITION BY RANGE (id)")
    tables = "users,no_such_table,by_list,by_int,chat_messages"

    done = cli("create-partitions", "--months", "0", "--json",
               extra_env={"JOB_PARTITION_TABLES": tables})

    assert done.returncode == 78, done.stderr
    record = json.loads(done.stdout)  # what was done before the error is still reported
    assert [(p["table"].rpartition(".")[2], p["action"])
            for p in record["details"]["partitions"]] == [("chat_messages", "created")]
    errors = [json.loads(line) for line in done.stderr.splitlines()]
    messages = [e["message"] for e in errors if e["level"] == "error"]
    assert messages[:4] == [
        "table 'users' is not partitioned (expected PARTITION BY RANGE on a timestamp)",
        "table 'no_such_table' does not exist",
        "table 'by_list' is partitioned by LIST, not by RANGE",
        "table 'by_int' is range-partitioned on id (bigint), not on one timestamp or date column",
    ]
    assert list(partitions(pg, "chat_messages")) == [
        f"chat_messages_{expected_months(datetime.now(UTC).date(), 0)[0][0]}"
    ]


def test_sql_injection_through_table_names_is_harmless(pg, pg_tables, make_settings):
    pg_tables("chat_messages", "users")
    pg.execute("INSERT INTO users VALUES (1, now()), (2, now())")
    evil = (
        "chat_messages; DROP TABLE users; --",
        'users" CASCADE; DROP TABLE users; --',
        "chat_messages_x PARTITION OF users FOR VALUES FROM (1) TO (2); DROP TABLE users",
        "x'); DROP TABLE users; --",
    )
    settings = make_settings(partition_tables=",".join((*evil, "chat_messages")),
                             partition_months_ahead=0)

    rec = run_job("create-partitions", settings)

    assert rec.outcome is Outcome.CONFIG_ERROR and rec.exit_code == 78
    assert rec.error.count("does not exist") == 4
    assert pg.execute("SELECT count(*) FROM users").fetchone()[0] == 2
    assert len(partitions(pg, "chat_messages")) == 1


def test_a_same_named_table_that_is_not_a_partition_is_a_config_error(pg, pg_tables, settings):
    pg_tables("chat_messages")
    suffix = expected_months(datetime.now(UTC).date(), 0)[0][0]
    pg.execute(f"CREATE TABLE chat_messages_{suffix} (id bigint)")

    rec = run_job("create-partitions", settings, table=("chat_messages",))

    assert rec.exit_code == 78
    assert f"chat_messages_{suffix} exists but is not a partition of" in rec.error


def test_losing_the_create_race_counts_as_existing(pg, pg_tables, stack, names, settings):
    pg_tables("chat_messages")
    suffix, lo, hi = expected_months(datetime.now(UTC).date(), 0)[0]
    other = psycopg.connect(stack.env()["DATABASE_URL"])
    other.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(names["schema"])))
    other.execute(  # another run's CREATE, not committed yet: ours must wait, then lose
        f"CREATE TABLE chat_messages_{suffix} PARTITION OF chat_messages "
        f"FOR VALUES FROM ('{lo}') TO ('{hi}')"
    )
    records: list[Any] = []
    runner = threading.Thread(
        target=lambda: records.append(
            run_job("create-partitions", settings, RunOptions(use_lock=False),
                    table=("chat_messages",))
        )
    )
    runner.start()
    time.sleep(1.0)
    other.commit()
    other.close()
    runner.join()

    rec = records[0]
    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters == {"partitions_existing": 1, "partitions_created": 3}
    assert rec.details["partitions"][0]["action"] == "exists"


def test_two_runs_at_once_without_the_lock_both_succeed(pg, pg_tables, cli):
    pg_tables("chat_messages", "chat_inbox")
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(cli("create-partitions", "--no-lock")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert len(partitions(pg, "chat_messages")) == 4 and len(partitions(pg, "chat_inbox")) == 4


def test_a_held_table_lock_times_out_and_the_other_tables_go_on(
    pg, pg_tables, stack, names, make_settings
):
    pg_tables("chat_messages", "chat_inbox")
    blocker = psycopg.connect(stack.env()["DATABASE_URL"])
    blocker.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(names["schema"])))
    blocker.execute("LOCK TABLE chat_messages IN ACCESS SHARE MODE")  # a long report query
    try:
        started = time.monotonic()
        rec = run_job("create-partitions", make_settings(pg_lock_timeout_sec=0.3))
        elapsed = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()

    assert rec.outcome is Outcome.FAILED
    assert "table lock not granted within 0.3 s" in rec.error
    assert elapsed < 10
    assert partitions(pg, "chat_messages") == {}
    assert len(partitions(pg, "chat_inbox")) == 4
