"""`novajobs dlq` operator tools as real processes on a real Redis: replay and purge by
error text or regex, time range and attempts, --dry-run, --rate, `dlq show`, and the
refusal to replay what the dedupe table may have forgotten."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from novajobs.streams.keys import stream_keys

HOUR = 3600


def dead_letters(r: Any, prefix: str) -> dict[str, str]:
    """Five dead letters of stream q, dead-lettered 1..5 hours ago; returns n -> DLQ id."""
    keys = stream_keys(prefix, "q")
    now = time.time()
    rows = [  # n, hours ago, attempts, error
        ("0", 5, 4, "TimeoutError: handler overran 10 s"),
        ("1", 4, 1, "PermanentError: audit entry lacks field user_id"),
        ("2", 3, 4, "OperationalError: connection refused"),
        ("3", 2, 2, "TimeoutError: handler overran 10 s"),
        ("4", 1, 4, "ValueError: ts 'soon' is not a Unix time"),
    ]
    out = {}
    for n, hours, attempts, error in rows:
        entry_id = f"{int((now - hours * HOUR) * 1000)}-0"
        r.xadd(keys.dlq, {"n": n, "novajobs:id": f"{int(now * 1000) - 1000 + int(n)}-0",
                          "novajobs:attempts": str(attempts), "novajobs:error": error,
                          "novajobs:failed_at": "x"}, id=entry_id)
        out[n] = entry_id
    return out


def replayed(r: Any, prefix: str) -> list[str]:
    return [f[b"n"].decode() for _, f in r.xrange(prefix + "q")]


def left(r: Any, prefix: str) -> list[str]:
    return [f[b"n"].decode() for _, f in r.xrange(stream_keys(prefix, "q").dlq)]


@pytest.mark.cluster
def test_replay_by_error_text_attempts_and_time(redis_client, cli, names):
    p = names["prefix"]
    dead_letters(redis_client, p)

    dry = cli("dlq", "replay", "q", "--error", "TimeoutError", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [e["fields"]["n"] for e in json.loads(dry.stdout)["entries"]] == ["0", "3"]
    assert replayed(redis_client, p) == [] and len(left(redis_client, p)) == 5  # nothing moved

    run = cli("dlq", "replay", "q", "--error", "TimeoutError", "--min-attempts", "3")
    assert run.returncode == 0, run.stderr
    assert "replayed 1 entries" in run.stdout
    assert replayed(redis_client, p) == ["0"]

    run = cli("dlq", "replay", "q", "--error-regex", r"^(Operational|Value)Error", "--since",
              "210m", "--rate", "50", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["moved"] == 2
    assert replayed(redis_client, p) == ["0", "2", "4"]

    run = cli("dlq", "replay", "q", "--all", "--until", "150m", "--max-attempts", "1")
    assert run.returncode == 0 and replayed(redis_client, p) == ["0", "2", "4", "1"]
    assert left(redis_client, p) == ["3"]
    fields = redis_client.xrange(p + "q")[-1][1]
    assert b"novajobs:attempts" not in fields and b"novajobs:error" not in fields  # starts over


@pytest.mark.cluster
def test_purge_by_filter_and_dry_run(redis_client, cli, names):
    p = names["prefix"]
    ids = dead_letters(redis_client, p)

    dry = cli("dlq", "purge", "q", "--until", "150m", "--error", "Error", "--dry-run")
    assert dry.returncode == 0 and "would delete 3 entries" in dry.stdout, dry.stdout
    assert ids["0"] in dry.stdout and ids["3"] not in dry.stdout
    assert len(left(redis_client, p)) == 5

    run = cli("dlq", "purge", "q", "--until", "150m", "--error", "Error", "--yes", "--json")
    assert json.loads(run.stdout)["moved"] == 3
    assert left(redis_client, p) == ["3", "4"]


@pytest.mark.cluster
def test_show_prints_one_dead_letter_whole(redis_client, cli, names):
    p = names["prefix"]
    ids = dead_letters(redis_client, p)

    shown = cli("dlq", "show", "q", ids["1"], "--json")

    assert shown.returncode == 0, shown.stderr
    letter = json.loads(shown.stdout)
    assert letter["fields"] == {"n": "1"} and letter["attempts"] == 1
    assert letter["error"] == "PermanentError: audit entry lacks field user_id"
    text = cli("dlq", "show", "q", ids["1"])
    assert "lacks field user_id" in text.stdout and "field n" in text.stdout
    assert cli("dlq", "show", "q", "1-1").returncode == 1


def test_bad_selections_are_usage_errors_before_connecting(cli):
    env = {"REDIS_URL": "redis://127.0.0.1:1/0"}  # nothing listens: must not be reached
    cases = [
        (("replay", "q"), "give entry IDs, --all, or a filter"),
        (("replay", "q", "1-0", "--all"), "not both"),
        (("replay", "q", "--error-regex", "(unclosed"), "--error-regex"),
        (("purge", "q", "--since", "yesterday-ish"), "neither an ISO time"),
        (("replay", "q", "--all", "--rate", "0"), "--rate"),
        (("show", "q", "nope"), "not a stream entry id"),
    ]
    for args, text in cases:
        run = cli("dlq", *args, extra_env=env)
        assert run.returncode == 2, (args, run.stderr)
        assert text in run.stderr + run.stdout, (args, run.stderr)
        assert "Traceback" not in run.stderr


def test_replay_refuses_what_the_dedupe_retention_forgot(redis_client, cli, names):
    """A dead letter whose first id is older than the dedupe retention could be written a
    second time by an idempotent handler: it stays in the DLQ, counted."""
    keys = stream_keys(names["prefix"], "q")
    old_first = f"{int((time.time() - 40 * 86400) * 1000)}-0"
    redis_client.xadd(keys.dlq, {"n": "9", "novajobs:id": old_first, "novajobs:error": "e"})

    run = cli("dlq", "replay", "q", "--all", "-s", "stream_dedupe_retention_days=30")

    assert run.returncode == 1 and "1 too old" in run.stdout, run.stdout
    assert len(left(redis_client, names["prefix"])) == 1 and redis_client.xlen(keys.stream) == 0
