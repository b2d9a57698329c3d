"""Catch-up of missed report periods (daily-stats, group-activity-rank) and the logical
"now" a CronJob passes in, against a real PostgreSQL 15."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import yaml

from novajobs import deploy
from novajobs.dates import IsoWeek, check_scheduled_time, scheduled_instant
from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job
from novajobs.settings import load_settings

# Runs take their lock in Redis; the tables live in PostgreSQL.
pytestmark = pytest.mark.usefixtures("redis_server", "pg_server")


def pushed(gateway: str, job: str) -> dict[str, float]:
    """The unlabelled gauges the Pushgateway holds for ``job``: {metric: value}."""
    with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=5) as response:
        groups = [g for g in json.load(response)["data"] if g["labels"] == {"job": job}]
    return {name: float(family["metrics"][0]["value"]) for name, family in groups[0].items()
            if isinstance(family, dict) and len(family.get("metrics", ())) == 1}


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def job_name(job: str, when: datetime) -> str:
    """The name a CronJob gives the Job it starts at ``when`` (what the pod's label says)."""
    return f"novajobs-{job}-{int(when.timestamp()) // 60}"


# --- daily-stats ------------------------------------------------------------------------

APRIL = [date(2025, 4, d) for d in range(1, 11)]  # 04-01 .. 04-10


def load_days(pg: Any) -> None:
    """Day k of April: k users, k messages, one audit row per user, a file of k*100 bytes."""
    uid = msg = 0
    for day in APRIL:
        for _ in range(day.day):
            uid += 1
            msg += 1
            pg.execute("INSERT INTO users VALUES (%s, %s)", [uid, at(day, 9)])
            pg.execute("INSERT INTO chat_messages VALUES (%s, 1, %s, %s, %s)",
                       [msg, uid, msg, at(day, 10)])
            pg.execute("INSERT INTO audit_logs (user_id, action, created_at) "
                       "VALUES (%s, 'login', %s)", [uid, at(day, 11)])
        pg.execute("INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, "
                   "status, created_at, updated_at) VALUES (%s, 'b', %s, %s, 1, 0, %s, %s)",
                   [f"h{day}", f"p{day}", day.day * 100, at(day, 12), at(day, 12)])


def expected_day(day: date) -> tuple[Any, ...]:
    k = day.day
    return (day, k * (k + 1) // 2, k, k, k * 100, k)  # the audit rows share one second


def stored_days(pg: Any) -> dict[date, tuple[Any, ...]]:
    rows = pg.execute("SELECT stat_date, total_users, active_users, total_msgs, "
                      "storage_usage, api_qps_peak FROM daily_stats ORDER BY 1").fetchall()
    return {row[0]: row for row in rows}


def test_daily_stats_fills_holes_in_the_middle_and_at_the_end_oldest_first(report_db,
                                                                          make_settings):
    load_days(report_db)
    # Runs happened on 04-01, 04-02 and 04-05; 04-02's row has numbers of its own (as if
    # computed before late data arrived): a catch-up must not recompute it.
    for day in (APRIL[0], APRIL[4]):
        report_db.execute("INSERT INTO daily_stats (stat_date, total_users, active_users, "
                          "total_msgs, storage_usage, api_qps_peak) VALUES (%s, %s, %s, %s, %s, "
                          "%s)", list(expected_day(day)))
    report_db.execute("INSERT INTO daily_stats (stat_date, total_users) VALUES ('2025-04-02', 7)")
    # The run scheduled for 04-11 01:00 (started whenever): its own day is 04-10.
    settings = make_settings(scheduled_time="2025-04-11T01:00:00Z", catchup_max_periods=4)

    first = run_job("daily-stats", settings)

    assert first.outcome is Outcome.SUCCESS, first.error
    assert first.details["catchup"] == {
        "missed": ["2025-04-03", "2025-04-04", "2025-04-06", "2025-04-07", "2025-04-08",
                   "2025-04-09"],
        "filled": ["2025-04-03", "2025-04-04", "2025-04-06", "2025-04-07"],
        "left": ["2025-04-08", "2025-04-09"],
    }
    assert first.counters == {"days": 5, "days_inserted": 5, "days_updated": 0,
                              "days_unchanged": 0, "periods_missed": 6, "periods_filled": 4,
                              "periods_left": 2}
    assert sorted(stored_days(report_db)) == [APRIL[i] for i in (0, 1, 2, 3, 4, 5, 6, 9)]
    assert "filled 4 of 6 missed days (2 left for the next run)" in first.message

    second = run_job("daily-stats", settings)

    assert second.details["catchup"]["filled"] == ["2025-04-08", "2025-04-09"]
    assert second.counters["periods_left"] == 0
    third = run_job("daily-stats", settings)
    assert third.details["catchup"] == {"missed": [], "filled": [], "left": []}
    stored = stored_days(report_db)
    assert list(stored.values()) == [
        expected_day(APRIL[0]), (APRIL[1], 7, 0, 0, 0, 0), *map(expected_day, APRIL[2:])]


def test_no_catchup_reports_the_missed_days_and_fills_none(report_db, make_settings, cli):
    load_days(report_db)
    report_db.execute("INSERT INTO daily_stats (stat_date) VALUES ('2025-04-06')")

    done = cli("daily-stats", "--no-catchup", "--json",
               extra_env={"NOVAJOBS_SCHEDULED_TIME": "2025-04-11T01:00:00+00:00"})

    assert done.returncode == 0, done.stderr
    rec = json.loads(done.stdout)
    assert rec["details"]["catchup"]["left"] == ["2025-04-07", "2025-04-08", "2025-04-09"]
    assert rec["counters"]["periods_filled"] == 0
    assert sorted(stored_days(report_db)) == [APRIL[5], APRIL[9]]


def test_an_explicit_date_recomputes_a_present_day_and_looks_for_no_holes(report_db,
                                                                          make_settings):
    load_days(report_db)
    report_db.execute("INSERT INTO daily_stats (stat_date, total_users) VALUES "
                      "('2025-04-01', 7), ('2025-04-05', 7)")

    rec = run_job("daily-stats", make_settings(), on="2025-04-05")

    assert rec.details["updated"] == ["2025-04-05"] and "catchup" not in rec.details
    assert "periods_missed" not in rec.counters
    assert sorted(stored_days(report_db)) == [APRIL[0], APRIL[4]]
    assert stored_days(report_db)[APRIL[4]] == expected_day(APRIL[4])


def test_a_spent_budget_ends_the_catch_up_and_leaves_the_rest(report_db, make_settings):
    load_days(report_db)
    report_db.execute("INSERT INTO daily_stats (stat_date) VALUES ('2025-04-01')")
    settings = make_settings(scheduled_time="2025-04-11T01:00:00Z")

    # 4.9 s of budget is less than the reserve a catch-up keeps for the end of the run.
    rec = run_job("daily-stats", settings, RunOptions(timeout_sec=4.9))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["periods_missed"] == 8 and rec.counters["periods_filled"] == 0
    assert sorted(stored_days(report_db)) == [APRIL[0], APRIL[9]]


def test_an_empty_table_has_no_missed_days(report_db, make_settings, pushgateway):
    load_days(report_db)
    settings = make_settings(scheduled_time="2025-04-11T01:00:00Z", pushgateway_url=pushgateway)

    rec = run_job("daily-stats", settings)

    assert rec.counters["periods_missed"] == 0
    assert list(stored_days(report_db)) == [APRIL[9]]
    assert pushed(pushgateway, "daily-stats")["novajobs_missed_periods"] == 0


def test_missed_periods_are_pushed_as_metrics(report_db, make_settings, pushgateway):
    load_days(report_db)
    report_db.execute("INSERT INTO daily_stats (stat_date) VALUES ('2025-04-01')")
    settings = make_settings(scheduled_time="2025-04-11T01:00:00Z", catchup_max_periods=5,
                             pushgateway_url=pushgateway)

    run_job("daily-stats", settings)

    metrics = pushed(pushgateway, "daily-stats")
    assert metrics["novajobs_missed_periods"] == 8
    assert metrics["novajobs_missed_periods_left"] == 3


# --- group-activity-rank ------------------------------------------------------------------

W = {n: IsoWeek(2025, n) for n in range(8, 20)}


def load_weeks(pg: Any, empty: tuple[int, ...]) -> None:
    """Weeks 10..18 of 2025: week n has n messages in channel n, from two senders."""
    msg = 0
    for n in range(10, 19):
        if n in empty:
            continue
        for i in range(n):
            msg += 1
            pg.execute("INSERT INTO chat_messages VALUES (%s, %s, %s, %s, %s)",
                       [msg, n, i % 2, msg, at(W[n].monday, 12)])


def weeks(pg: Any) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for week, channel, count, members in pg.execute(
        "SELECT stat_week, channel_id, msg_count, active_members FROM group_activity_rank "
        "ORDER BY stat_week, rank"
    ).fetchall():
        out.setdefault(week, []).append((channel, count, members))
    return out


def test_group_activity_rank_fills_missed_weeks_and_skips_weeks_without_messages(
    report_db, make_settings
):
    load_weeks(report_db, empty=(16,))
    for n, channel in ((10, 10), (11, 999), (14, 14)):  # week 11 holds an older ranking
        report_db.execute("INSERT INTO group_activity_rank (stat_week, channel_id, msg_count, "
                          "active_members, score, rank) VALUES (%s, %s, %s, 2, 1, 1)",
                          [W[n].label, channel, n])
    # The Job the CronJob started for Monday of week 19, 02:00, as its pod label names it.
    scheduled = at(W[19].monday, 2)
    settings = make_settings(scheduled_time=job_name("group-activity-rank", scheduled),
                             catchup_max_periods=3)

    first = run_job("group-activity-rank", settings)

    assert first.outcome is Outcome.SUCCESS, first.error
    assert first.details["stat_week"] == "2025-18"  # last week of the scheduled time
    assert first.details["catchup"] == {"missed": ["2025-12", "2025-13", "2025-15", "2025-17"],
                                        "filled": ["2025-12", "2025-13", "2025-15"],
                                        "left": ["2025-17"]}
    second = run_job("group-activity-rank", settings)
    assert second.details["catchup"]["filled"] == ["2025-17"]
    third = run_job("group-activity-rank", settings)
    assert third.counters["periods_missed"] == 0
    stored = weeks(report_db)
    assert sorted(stored) == ["2025-10", "2025-11", "2025-12", "2025-13", "2025-14", "2025-15",
                              "2025-17", "2025-18"]
    assert stored["2025-11"] == [(999, 11, 2)]  # present: not recomputed
    assert all(stored[W[n].label] == [(n, n, 2)] for n in (12, 13, 15, 17, 18))


# --- the logical now --------------------------------------------------------------------


def test_the_scheduled_time_is_the_job_name_of_this_jobs_cronjob_or_an_iso_time():
    when = datetime(2025, 4, 11, 1, 0, tzinfo=UTC)
    assert scheduled_instant(job_name("daily-stats", when), "novajobs-daily-stats") == when
    assert scheduled_instant("2025-04-11T03:00:00+02:00", "novajobs-daily-stats") == when
    # A Job made by hand (kubectl create job --from=cronjob/...), or another CronJob's: the clock.
    assert scheduled_instant("daily-stats-rerun-20250411", "novajobs-daily-stats") is None
    assert scheduled_instant(job_name("gc-files", when), "novajobs-daily-stats") is None
    assert scheduled_instant("", "novajobs-daily-stats") is None
    assert check_scheduled_time(job_name("daily-stats", when)) is None
    assert check_scheduled_time("daily-stats-rerun") is None
    later = datetime.now(UTC) + timedelta(days=1)
    assert "is in the future" in (check_scheduled_time(job_name("daily-stats", later)) or "")


@pytest.mark.parametrize(("value", "complaint"), [
    ("2025-04-11T01:00:00", "needs an offset"),
    ("yesterday at one", "must be an ISO time with an offset"),
    ("2999-01-01T00:00:00Z", "is in the future"),
])
def test_a_bad_scheduled_time_is_one_line_and_exit_78_before_the_lock(cli, value, complaint):
    done = cli("daily-stats", extra_env={"NOVAJOBS_SCHEDULED_TIME": value})

    assert done.returncode == 78
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"novajobs: setting scheduled_time (env NOVAJOBS_SCHEDULED_TIME) {complaint}")


def test_the_rendered_cronjob_passes_its_job_name_and_a_late_start_computes_its_day(
    report_db, cli
):
    load_days(report_db)
    doc = yaml.safe_load(deploy.render_all(load_settings(environ={}))[
        "k8s-cronjobs/daily-stats.yaml"])
    container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    ref = {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}
    assert {"name": "NOVAJOBS_SCHEDULED_TIME", "valueFrom": ref} in container["env"]
    # What the downward API gives the pod of the Job scheduled 2025-04-11 01:00 UTC,
    # however late it starts:
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["NOVAJOBS_SCHEDULED_TIME"] = job_name("daily-stats", at(date(2025, 4, 11), 1))

    done = cli(*container["args"], "--json", extra_env=env)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["details"]["inserted"] == ["2025-04-10"]
    assert list(stored_days(report_db).values()) == [expected_day(APRIL[9])]
    no_report = yaml.safe_load((deploy.render_all(load_settings(environ={})))[
        "k8s-cronjobs/gc-files.yaml"])
    gc_env = no_report["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert all(e["name"] != "NOVAJOBS_SCHEDULED_TIME" for e in gc_env)
