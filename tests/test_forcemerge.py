"""forcemerge-indices against the noida-db Elasticsearch emulator (official client), with
``ShardProxy`` (tests/es_indices.py) in front of it for segment counts and long merges."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest
from es_indices import ShardProxy, make_index
from support import spawn, wait_for

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job


@pytest.fixture
def proxy(es: Any, stack: Any) -> Iterator[ShardProxy]:
    server = ShardProxy(stack.env()["ELASTICSEARCH_URL"])
    yield server
    server.close()


@pytest.fixture
def fm_settings(make_settings: Any, redis_server: None, proxy: ShardProxy, p: str) -> Any:
    def make(**overrides: Any) -> Any:
        values = {"elasticsearch_url": proxy.url, "forcemerge_pattern": f"{p}logs-*",
                  "forcemerge_poll_sec": 0.05, **overrides}
        return make_settings(**values)

    return make


def forcemerges(proxy: ShardProxy) -> list[str]:
    return [index for index, _, _ in proxy.merges]


# -- choosing candidates ------------------------------------------------------------------


def test_dry_run_lists_old_indices_with_many_segments_and_changes_nothing(es, proxy, p,
                                                                         fm_settings):
    for name, age in (("logs-old", 10), ("logs-older", 30), ("logs-new", 2), ("other-old", 10)):
        make_index(es, p + name, age)
        proxy.segments[p + name] = 5

    rec = run_job("forcemerge-indices", fm_settings(), RunOptions(dry_run=True))

    assert rec.outcome is Outcome.DRY_RUN and rec.exit_code == 0, rec.error
    candidates = rec.details["candidates"]
    assert [c["index"] for c in candidates] == [p + "logs-old", p + "logs-older"]
    assert [round(c["age_days"]) for c in candidates] == [10, 30]
    assert [c["segments"] for c in candidates] == [5, 5]
    assert rec.details["skipped"] == {p + "logs-new": "too_young"}  # other-old: not matched
    assert rec.counters == {"indices": 3, "candidates": 2, "skipped_too_young": 1}
    assert rec.message.startswith(f"would force-merge 2 of 3 indices matching {p}logs-*: "
                                  f"{p}logs-old, {p}logs-older; skipped: 1 too young")
    assert forcemerges(proxy) == [] and proxy.merged_at == {}

    younger = run_job("forcemerge-indices", fm_settings(forcemerge_min_age_days=1),
                      RunOptions(dry_run=True))
    assert len(younger.details["candidates"]) == 3


def test_age_can_come_from_the_date_in_the_name(es, proxy, p, fm_settings):
    today = datetime.now(UTC).strftime("%Y.%m.%d")
    for name in ("logs-2020.01.31", f"logs-{today}", "logs-latest", "logs-2020.13.01"):
        make_index(es, p + name, age_days=0)  # all created just now
        proxy.segments[p + name] = 4

    by_name = run_job("forcemerge-indices", fm_settings(forcemerge_name_date_format="%Y.%m.%d"),
                      RunOptions(dry_run=True))
    by_creation = run_job("forcemerge-indices", fm_settings(), RunOptions(dry_run=True))

    assert [c["index"] for c in by_name.details["candidates"]] == [p + "logs-2020.01.31"]
    assert by_name.details["skipped"] == {p + f"logs-{today}": "too_young",
                                          p + "logs-latest": "no_date",
                                          p + "logs-2020.13.01": "no_date"}
    assert by_creation.details["candidates"] == []
    assert set(by_creation.details["skipped"].values()) == {"too_young"}


def test_write_indices_and_closed_indices_are_skipped(es, proxy, p, fm_settings):
    make_index(es, p + "app-000001", aliases={p + "app": {"is_write_index": False}})
    make_index(es, p + "app-000002", aliases={p + "app": {"is_write_index": True}})
    make_index(es, p + "solo-000001", aliases={p + "solo": {}})  # only index: takes writes
    make_index(es, p + "read-a", aliases={p + "reads": {}})
    make_index(es, p + "read-b", aliases={p + "reads": {}})
    make_index(es, p + "shut")
    es.indices.close(index=p + "shut")
    for name in ("app-000001", "app-000002", "solo-000001", "read-a", "read-b", "shut"):
        proxy.segments[p + name] = 5

    rec = run_job("forcemerge-indices", fm_settings(forcemerge_pattern=p + "*"),
                  RunOptions(dry_run=True))

    assert [c["index"] for c in rec.details["candidates"]] == [
        p + "app-000001", p + "read-a", p + "read-b"]
    assert rec.details["skipped"] == {p + "app-000002": "write_index",
                                      p + "solo-000001": "write_index", p + "shut": "closed"}
    assert rec.counters["skipped_write_index"] == 2 and rec.counters["skipped_closed"] == 1


def test_already_merged_indices_are_left_alone(es, proxy, p, fm_settings):
    make_index(es, p + "logs-a", docs=50)  # the emulator: one segment per shard
    make_index(es, p + "logs-b", docs=0)  # empty: no segment at all

    rec = run_job("forcemerge-indices", fm_settings())

    assert rec.outcome is Outcome.NOTHING_TO_DO and rec.exit_code == 0, rec.error
    assert rec.details["skipped"] == {p + "logs-a": "already_merged",
                                      p + "logs-b": "already_merged"}
    assert rec.counters == {"indices": 2, "candidates": 0, "skipped_already_merged": 2}
    assert forcemerges(proxy) == []


# -- merging ------------------------------------------------------------------------------


def test_merges_one_index_at_a_time_waiting_for_each_task(es, proxy, p, fm_settings):
    for name, segments in (("logs-a", 6), ("logs-b", 4)):
        make_index(es, p + name, docs=5)
        proxy.segments[p + name] = segments
    proxy.merge_polls = 3  # each task runs until polled three times: however slowly it polls

    rec = run_job("forcemerge-indices", fm_settings())

    assert rec.outcome is Outcome.SUCCESS and rec.exit_code == 0, rec.error
    assert rec.details["merged"] == [p + "logs-a", p + "logs-b"]
    assert rec.counters == {"indices": 2, "candidates": 2, "merged": 2}
    (first, _, query), (second, second_at, _) = proxy.merges
    assert (first, second) == (p + "logs-a", p + "logs-b")
    assert query["max_num_segments"] == ["1"] and query["wait_for_completion"] == ["false"]
    # The second merge started only once the first task had completed.
    assert second_at >= proxy.merged_at[p + "logs-a"]
    polls = [path for _, path in proxy.requests if unquote(path).startswith("/_tasks/proxy:1")]
    assert len(polls) == 4  # polled while it ran (three times), not one long request
    assert es.count(index=p + "logs-a")["count"] == 5  # the data is still there

    again = run_job("forcemerge-indices", fm_settings())
    assert again.outcome is Outcome.NOTHING_TO_DO
    assert again.counters["skipped_already_merged"] == 2 and len(proxy.merges) == 2


def test_a_task_unknown_to_the_tasks_api_is_judged_by_segment_count(es, proxy, p, fm_settings):
    make_index(es, p + "logs-a")
    proxy.segments[p + "logs-a"] = 3
    proxy.emulator_tasks = True  # the emulator's own task id, which _tasks answers 404

    rec = run_job("forcemerge-indices", fm_settings())

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.details["merged"] == [p + "logs-a"]


def test_a_failed_merge_is_counted_and_the_others_still_merge(es, proxy, p, fm_settings):
    for name in ("logs-a", "logs-b"):
        make_index(es, p + name)
        proxy.segments[p + name] = 5
    proxy.fail.add(p + "logs-a")

    rec = run_job("forcemerge-indices", fm_settings())

    assert rec.outcome is Outcome.FAILED and rec.exit_code == 1
    assert rec.error == f"force-merge failed for 1 of 2 indices ({p}logs-a); merged 1"
    assert rec.counters == {"indices": 2, "candidates": 2, "failed": 1, "merged": 1}
    assert proxy.is_merged(p + "logs-b")


def test_the_timeout_stops_waiting_for_a_long_merge(es, proxy, p, fm_settings, redis_client,
                                                    names, caplog):
    for name in ("logs-a", "logs-b"):
        make_index(es, p + name)
        proxy.segments[p + name] = 5
    proxy.merge_sec = 60

    started = time.monotonic()
    rec = run_job("forcemerge-indices", fm_settings(), RunOptions(timeout_sec=1.5))
    elapsed = time.monotonic() - started

    assert rec.outcome is Outcome.TIMEOUT and rec.exit_code == 124
    # Stopped by the poll loop's safe point, not by the SIGALRM backstop (timeout + 2 s).
    assert rec.error == "the run reached its timeout" and elapsed < 5
    assert forcemerges(proxy) == [p + "logs-a"]  # the next one was never started
    assert "merged" not in rec.counters
    assert any(r.getMessage().startswith("stopped waiting") and r.fields["task"] == "proxy:1"
               for r in caplog.records)
    assert not redis_client.exists(f"{names['prefix']}job:lock:forcemerge-indices")


def test_the_delay_between_merges_counts_against_the_timeout(es, proxy, p, fm_settings):
    for name in ("logs-a", "logs-b"):
        make_index(es, p + name)
        proxy.segments[p + name] = 5

    rec = run_job("forcemerge-indices", fm_settings(forcemerge_delay_sec=60),
                  RunOptions(timeout_sec=1.5))

    assert rec.outcome is Outcome.TIMEOUT
    assert rec.counters["merged"] == 1 and forcemerges(proxy) == [p + "logs-a"]


# -- the command ------------------------------------------------------------------------


def test_sigterm_while_a_merge_runs_exits_130(es, proxy, p, env):
    make_index(es, p + "logs-a")
    proxy.segments[p + "logs-a"] = 5
    proxy.merge_sec = 60
    command_env = {**env, "ELASTICSEARCH_URL": proxy.url,
                   "NOVAJOBS_FORCEMERGE_PATTERN": f"{p}logs-*", "NOVAJOBS_FORCEMERGE_POLL_SEC": "5"}
    with spawn(command_env, "forcemerge-indices", "--json") as job:
        wait_for(lambda: proxy.merges, 20, "the force-merge")
        sent = time.monotonic()
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=20)

    assert job.returncode == 130, err
    assert time.monotonic() - sent < 3  # not the 5 s poll interval, not the 60 s merge
    assert json.loads(out)["outcome"] == "interrupted"


def test_cli_dry_run_against_the_emulator(es, p, cli):
    make_index(es, p + "logs-2020.01.01")
    make_index(es, p + "logs-fresh", age_days=1)

    done = cli("forcemerge-indices", "--dry-run", "--json", "--pattern", f"{p}logs-*",
               "--min-age-days", "5")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "dry_run"
    assert result["details"]["skipped"] == {p + "logs-2020.01.01": "already_merged",
                                            p + "logs-fresh": "too_young"}


def test_an_unusable_date_format_is_refused(cli):
    flag = cli("forcemerge-indices", "--date-format", "%b-%d", "--dry-run")
    env = cli("forcemerge-indices", "--dry-run",
              extra_env={"NOVAJOBS_FORCEMERGE_NAME_DATE_FORMAT": "%m.%d"})

    assert flag.returncode == 2 and "uses %b; only %Y %y %m %d %H %j %% can be read" in flag.stderr
    assert env.returncode == 78 and "has no year (%Y or %y)" in env.stderr
