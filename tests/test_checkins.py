"""Health-check pings, received in order by a local HTTP server."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support import probe_job

from novajobs.checkins import run_uuid
from novajobs.context import JobContext, Result, Shard
from novajobs.errors import ConfigError, JobFailed, Outcome
from novajobs.lock import lock_key
from novajobs.registry import JobSpec
from novajobs.runner import RunOptions, run_job
from novajobs_dev.netfaults import refused_port

BEHAVIOUR: dict[str, Any] = {}


def run(ctx: JobContext) -> Result:
    """A sample job that ends as the test asks."""
    ctx.count("items", 7)
    if "raise" in BEHAVIOUR:
        raise BEHAVIOUR["raise"]
    default = Outcome.DRY_RUN if ctx.dry_run else Outcome.SUCCESS
    return Result(BEHAVIOUR.get("outcome", default), "done")


@dataclass
class Ping:
    path: str
    rid: str
    body: dict[str, Any]
    auth: str | None


@dataclass
class PingServer:
    url: str
    pings: list[Ping] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0

    def paths(self) -> list[str]:
        return [p.path for p in self.pings]


@pytest.fixture
def ping_server() -> Iterator[PingServer]:
    server_state = PingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            parts = urlsplit(self.path)
            rid = parse_qs(parts.query).get("rid", [""])[0]
            server_state.pings.append(Ping(parts.path, rid, body, self.headers["Authorization"]))
            time.sleep(server_state.delay)
            try:
                self.send_response(server_state.status)
                self.end_headers()
                self.wfile.write(b"OK")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the "slow" test's client gave up waiting, as it should

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server_state
    server.shutdown()
    server.server_close()


@pytest.fixture
def job(redis_server: None) -> JobSpec:
    BEHAVIOUR.clear()
    return probe_job(f"t-ping-{uuid.uuid4().hex[:8]}", run, schedule="*/5 * * * *",
                     shardable=True)


def test_a_success_pings_start_then_success_with_the_run_id(job, ping_server, make_settings):
    settings = make_settings(healthcheck_url=ping_server.url + "/ping/{job}")

    rec = run_job(job, settings)

    assert rec.outcome is Outcome.SUCCESS
    assert ping_server.paths() == [f"/ping/{job.name}/start", f"/ping/{job.name}"]
    assert {p.rid for p in ping_server.pings} == {run_uuid(rec.run_id)}
    assert run_uuid(rec.run_id).replace("-", "").endswith(rec.run_id)  # readable in the UUID
    start, end = (p.body for p in ping_server.pings)
    assert start["run_id"] == end["run_id"] == rec.run_id
    assert end["outcome"] == "success" and end["exit_code"] == 0
    assert end["counters"] == {"items": 7}


@pytest.mark.parametrize(("ending", "code"), [
    ({"raise": JobFailed("3 of 5 items failed")}, 1),
    ({"raise": ConfigError("table file_metadata does not exist")}, 78),
    ({"outcome": Outcome.PROBLEM_FOUND}, 3),
])
def test_a_failure_pings_fail_with_its_exit_code(job, ping_server, make_settings, ending, code):
    BEHAVIOUR.update(ending)
    settings = make_settings(healthcheck_url=ping_server.url + "/ping/{job}")

    rec = run_job(job, settings)

    assert rec.exit_code == code
    assert ping_server.paths() == [f"/ping/{job.name}/start", f"/ping/{job.name}/{code}"]
    assert ping_server.pings[1].body["exit_code"] == code
    if "raise" in ending:
        assert ping_server.pings[1].body["error"] == str(ending["raise"])


def test_a_skipped_run_only_logs(job, ping_server, make_settings, redis_client, names):
    redis_client.set(lock_key(names["prefix"], job.name), "held", px=60_000)
    settings = make_settings(healthcheck_url=ping_server.url + "/ping/{job}")

    rec = run_job(job, settings)

    assert rec.outcome is Outcome.SKIPPED
    assert ping_server.paths() == [f"/ping/{job.name}/log"]  # no start, no success, no fail
    assert ping_server.pings[0].body["outcome"] == "skipped"


@pytest.mark.parametrize("ending", [{}, {"raise": JobFailed("a dry run failed")}])
def test_a_dry_run_only_logs_however_it_ends(job, ping_server, make_settings, ending):
    BEHAVIOUR.update(ending)
    settings = make_settings(healthcheck_url=ping_server.url + "/ping/{job}")

    rec = run_job(job, settings, RunOptions(dry_run=True))

    assert rec.outcome is (Outcome.FAILED if ending else Outcome.DRY_RUN)
    assert ping_server.paths() == [f"/ping/{job.name}/log"]


def test_unit_placeholder_query_and_credentials(job, ping_server, make_settings):
    base = ping_server.url.replace("http://", "http://hc:s%40cret@")
    settings = make_settings(healthcheck_url=base + "/ping/key/{unit}?create=1")

    rec = run_job(job, settings, RunOptions(shard=Shard(2, 3)))

    unit = f"{job.name}-2-of-3"
    assert ping_server.paths() == [f"/ping/key/{unit}/start", f"/ping/key/{unit}"]
    assert ping_server.pings[0].rid == run_uuid(rec.run_id)
    assert {p.auth for p in ping_server.pings} == {
        "Basic " + base64.b64encode(b"hc:s@cret").decode()}


@pytest.mark.parametrize("trouble", ["status 500", "slow", "nothing listening"])
def test_a_failing_ping_never_fails_the_run(job, ping_server, make_settings, trouble):
    url = ping_server.url + "/ping/{job}"
    if trouble == "status 500":
        ping_server.status = 500
    elif trouble == "slow":
        ping_server.delay = 3
    settings = make_settings(healthcheck_url=url, report_timeout_sec=0.5)
    started = time.monotonic()

    if trouble == "nothing listening":
        settings = make_settings(healthcheck_url=f"http://127.0.0.1:{refused_port()}/ping/{{job}}",
                                 report_timeout_sec=0.5)
    rec = run_job(job, settings)

    assert rec.outcome is Outcome.SUCCESS
    assert time.monotonic() - started < 2.5  # two pings, each cut at the timeout


def test_cli_run_pings_in_order_and_never_logs_the_url(ch, cli, ping_server):
    ch.release()  # the CLI process opens the chdb path itself
    ping_server.status = 404  # a check that does not exist: logged, not fatal
    secret = "/ping/0f5c0c8e-secret-key/{job}"

    done = cli("refresh-trending", "--log-format", "json",
               extra_env={"NOVAJOBS_HEALTHCHECK_URL": ping_server.url + secret})

    assert done.returncode == 0, done.stderr
    assert ping_server.paths() == ["/ping/0f5c0c8e-secret-key/refresh-trending/start",
                                   "/ping/0f5c0c8e-secret-key/refresh-trending"]
    warnings = [json.loads(line) for line in done.stderr.splitlines()
                if '"health-check ping' in line]
    assert [w["message"] for w in warnings] == ["health-check ping (start) failed",
                                                "health-check ping (success) failed"]
    assert "HTTP 404" in warnings[0]["error"]
    assert "secret-key" not in done.stderr
