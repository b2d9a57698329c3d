"""forcemerge-indices against the noida-db Elasticsearch emulator (official client).

The emulator really keeps indices, creation dates, aliases with is_write_index, closed
indices and answers _stats, _forcemerge and _tasks; but every non-empty shard has one
segment and a merge ends at once (its task id is then unknown to _tasks). To test
candidates and long merges, ``ShardProxy`` sits in front of it: it passes every request
through and only (a) reports N segments for chosen indices until they are merged and
(b) answers a force-merge with a task that runs for a chosen time.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from es_indices import make_index

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job


class ShardProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.segments: dict[str, int] = {}  # index -> segments per shard copy until merged
        self.merge_sec = 0.0  # how long a merge task runs
        self.fail: set[str] = set()  # indices whose force-merge is answered 500
        self.emulator_tasks = False  # pass force-merges through (emulator's unknown task ids)
        self.merged_at: dict[str, float] = {}  # index -> when its merge is (was) done
        self.tasks: dict[str, tuple[str, float]] = {}  # task id -> (index, done at)
        self.merges: list[tuple[str, float, dict[str, list[str]]]] = []  # index, at, query
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                status, headers, out = proxy.answer(self.command, self.path, dict(self.headers),
                                                    body)
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def is_merged(self, index: str) -> bool:
        done = self.merged_at.get(index)
        return done is not None and time.time() >= done

    # -- what is played on top of the emulator -----------------------------------------
    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        if method == "POST" and len(parts) == 2 and parts[1] == "_forcemerge":
            return self.force_merge(parts[0], path, headers, body, parse_qs(url.query))
        if method == "GET" and len(parts) == 2 and parts[0] == "_tasks" and parts[1] in self.tasks:
            return self.task(parts[1])
        status, out_headers, out = self.forward(method, path, headers, body)
        if method == "GET" and parts[1:] == ["_stats", "segments"] and status == 200:
            out = self.inflate(parts[0], out)
        return status, out_headers, out

    def inflate(self, index: str, raw: bytes) -> bytes:
        if index not in self.segments or self.is_merged(index):
            return raw
        stats = json.loads(raw)
        for copies in stats["indices"][index]["shards"].values():
            for copy in copies:
                copy["segments"]["count"] = self.segments[index]
        return json.dumps(stats).encode()

    def force_merge(self, index: str, path: str, headers: dict[str, str], body: bytes,
                    query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        self.merges.append((index, time.time(), query))
        if index in self.fail:
            error = {"error": {"root_cause": [], "type": "exception", "reason": "merge blew up"},
                     "status": 500}
            return 500, {"X-Elastic-Product": "Elasticsearch",
                         "Content-Type": "application/json"}, json.dumps(error).encode()
        status, out_headers, out = self.forward("POST", path, headers, body)
        if self.emulator_tasks or status != 200:
            self.merged_at[index] = time.time()
            return status, out_headers, out
        task = f"proxy:{len(self.tasks) + 1}"
        self.tasks[task] = (index, time.time() + self.merge_sec)
        self.merged_at[index] = time.time() + self.merge_sec
        return 200, out_headers, json.dumps({"task": task}).encode()

    def task(self, task: str) -> tuple[int, dict[str, str], bytes]:
        index, done_at = self.tasks[task]
        answer: dict[str, Any] = {"completed": time.time() >= done_at,
                                  "task": {"action": "indices:admin/forcemerge",
                                           "description": f"Force-merge indices [{index}]"}}
        if answer["completed"]:
            answer["response"] = {"_shards": {"total": 2, "successful": 1, "failed": 0}}
        return 200, {"X-Elastic-Product": "Elasticsearch",
                     "Content-Type": "application/json"}, json.dumps(answer).encode()

    def forward(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            send = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, path, body=body or None, headers=send)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


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
    proxy.merge_sec = 0.4

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
    assert len(polls) >= 2  # polled while it ran, not one long request
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
    command_env = {**os.environ, **env, "ELASTICSEARCH_URL": proxy.url,
                   "NOVAJOBS_FORCEMERGE_PATTERN": f"{p}logs-*", "NOVAJOBS_FORCEMERGE_POLL_SEC": "5"}
    with subprocess.Popen([sys.executable, "-m", "novajobs", "forcemerge-indices", "--json"],
                          env=command_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as job:
        give_up = time.monotonic() + 20
        while not proxy.merges and time.monotonic() < give_up:
            time.sleep(0.05)
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
