"""check-message-gaps against a real PostgreSQL 15."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from novajobs.errors import Outcome
from novajobs.runner import run_job
from novajobs_dev import demo_data

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # the window is [T0, T0 + 10 min)
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(minutes=10)).isoformat()}


# Runs take their lock in Redis; the tables live in PostgreSQL.
pytestmark = pytest.mark.usefixtures("redis_server", "pg_server")


@pytest.fixture
def messages(pg: Any, pg_tables: Any) -> Any:
    """chat_messages with monthly partitions around T0 (the rest in a DEFAULT one) and
    the documented indexes."""
    pg_tables("chat_messages")
    demo_data.create_month_partitions(pg, "chat_messages", datetime(2025, 4, 1).date(),
                                      datetime(2025, 7, 1).date())
    pg.execute("CREATE TABLE chat_messages_default PARTITION OF chat_messages DEFAULT")
    pg.execute(demo_data.POSTGRES_INDEXES["chat_messages_channel_seq"])
    pg.execute(demo_data.POSTGRES_INDEXES["chat_messages_created_at"])

    def add(channel: int, seqs: list[int], at: datetime, step: timedelta = timedelta(seconds=1)):
        for k, seq in enumerate(seqs):
            pg.execute("INSERT INTO chat_messages VALUES (%s, %s, 1, %s, %s)",
                       [channel * 1_000_000 + seq, channel, seq, at + k * step])

    return add


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def gap(channel: int, lo: int, hi: int, where: str) -> dict[str, Any]:
    return {"channel_id": channel, "from_seq": lo, "to_seq": hi, "missing": hi - lo + 1,
            "where": where}


def load_edges(add: Any) -> None:
    add(1, [1, 2, 3, 4, 5], T0 - minutes(60))  # continuous across the window start
    add(1, [6, 7, 8, 9, 10], T0 + minutes(1))
    add(2, [1, 2, 3], T0 - minutes(60))  # 4-5 missing at the start, 8 inside
    add(2, [6, 7, 9], T0 + minutes(2))
    add(3, [10, 11], T0 + minutes(3))  # no earlier message at all
    add(4, [1, 2, 3], T0 - timedelta(days=40))  # predecessor in an older partition
    add(4, [5], T0 + minutes(4))
    add(5, [1, 2], T0 + minutes(1))  # seq 3 is stamped before the window: not missing
    add(5, [3], T0 - timedelta(seconds=5))
    add(5, [4], T0 + minutes(5))
    add(6, [1, 2, 3], T0 - minutes(30))  # a duplicate 4 hides nothing: 5 is missing
    add(6, [4, 4, 6], T0 + minutes(6))
    add(7, [1, 2, 3], T0 + minutes(7))  # 4 is missing, but 5 comes after the window
    add(7, [5], T0 + minutes(11))
    big = 10**12
    add(8, [big - 1], T0 - minutes(1))  # large seq numbers, no gap
    add(8, [big, big + 1, big + 2], T0 + minutes(8))
    add(9, [1, 2, 3], T0 - timedelta(seconds=20))  # just before: 4 missing at the start
    add(9, [5], T0 + minutes(9))
    add(10, [1, 2], T0 - timedelta(seconds=10))  # just before, and continuous
    add(10, [3, 4], T0 + minutes(9))


def test_every_gap_in_the_window_and_at_its_start(messages, settings):
    load_edges(messages)

    rec = run_job("check-message-gaps", settings, **WINDOW)

    assert rec.outcome is Outcome.PROBLEM_FOUND and rec.exit_code == 3
    assert rec.details["gaps"] == [
        gap(2, 4, 5, "before the window"),
        gap(2, 8, 8, "inside the window"),
        gap(4, 4, 4, "before the window"),
        gap(6, 5, 5, "inside the window"),
        gap(9, 4, 4, "before the window"),
    ]
    assert rec.counters == {
        "channels_checked": 10,
        "messages_checked": 5 + 3 + 2 + 1 + 3 + 3 + 3 + 3 + 1 + 2,
        "channels_without_history": 1,
        "gaps": 5,
        "missing_messages": 6,
    }
    assert rec.message.startswith("5 seq gaps (6 missing messages) in 4 of 10 channels")


def test_a_gap_at_the_end_of_a_window_is_found_by_the_next_one(messages, settings):
    load_edges(messages)
    later = {"since": (T0 + minutes(10)).isoformat(), "until": (T0 + minutes(20)).isoformat()}

    rec = run_job("check-message-gaps", settings, **later)

    assert rec.details["gaps"] == [gap(7, 4, 4, "before the window")]


def test_the_default_window_overlaps_and_leaves_the_newest_messages(messages, make_settings):
    now = datetime.now(UTC)
    messages(1, [1], now - minutes(20))
    messages(1, [3], now - minutes(12))  # inside window + overlap: the gap 2 is reported
    messages(1, [5], now - timedelta(seconds=10))  # too fresh (settle): 4 is not yet
    messages(2, [1], now - minutes(14))
    messages(2, [3], now - minutes(13))  # before the 12.5-minute window: not checked
    settings = make_settings(gaps_window_sec=600, gaps_overlap_sec=120, gaps_settle_sec=30)

    rec = run_job("check-message-gaps", settings)

    assert rec.details["gaps"] == [gap(1, 2, 2, "before the window")]
    until = datetime.fromisoformat(rec.details["until"])
    since = datetime.fromisoformat(rec.details["since"])
    assert until - since == timedelta(seconds=720)
    assert timedelta(seconds=29) < now - until < timedelta(seconds=40)


def test_cli_exit_3_with_the_gaps_and_0_when_there_are_none(messages, cli):
    load_edges(messages)

    found = cli("check-message-gaps", "--since", WINDOW["since"], "--until", WINDOW["until"],
                "--json")

    assert found.returncode == 3, found.stderr
    result = json.loads(found.stdout)
    assert result["outcome"] == "problem_found"
    assert [(g["channel_id"], g["from_seq"], g["to_seq"]) for g in result["details"]["gaps"]] == [
        (2, 4, 5), (2, 8, 8), (4, 4, 4), (6, 5, 5), (9, 4, 4)
    ]
    warnings = [json.loads(line) for line in found.stderr.splitlines()]
    assert [w["channel_id"] for w in warnings if w["message"] == "seq gap"] == [2, 2, 4, 6, 9]

    # Naive local times are in the configured time zone: this is T0-60 .. T0-50 min UTC.
    clean = cli("check-message-gaps", "--since", "2025-06-01 13:00", "--until",
                "2025-06-01T13:10", extra_env={"NOVAJOBS_TIMEZONE": "Europe/Berlin"})

    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stderr.splitlines()[-1])["channels_checked"] == 2


def test_demo_data_gaps_are_exactly_the_deleted_messages(pg, pg_tables, settings):
    loaded = demo_data.load_postgres(pg, users=200, channels=30, messages=20_000, audit=100,
                                     files=10, days=2, gaps=4)
    assert len(loaded["deleted_messages"]) == 4

    rec = run_job("check-message-gaps", settings)

    assert rec.outcome is Outcome.PROBLEM_FOUND, rec.error
    assert [(g["channel_id"], g["from_seq"], g["to_seq"]) for g in rec.details["gaps"]] == [
        (channel, seq, seq) for channel, seq in loaded["deleted_messages"]
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "--since 'yesterday': expected an ISO time"),
        (("--since", "1h", "--until", "2h"), "--since "),
        (("--until", "2025-13-01T00:00"), "--until '2025-13-01T00:00': expected an ISO time"),
    ],
)
def test_bad_times_are_one_line_and_exit_2(cli, args, message):
    done = cli("check-message-gaps", *args)

    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"novajobs: {message}")


def test_a_missing_table_is_a_config_error(pg, settings):
    rec = run_job("check-message-gaps", settings)

    assert rec.exit_code == 78
    assert rec.error.startswith("table chat_messages does not exist in this database")
