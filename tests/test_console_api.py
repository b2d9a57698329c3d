"""`novajobs console`: its JSON API and its security, against a real Redis holding the
records of real job runs."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from support import LOG_PROBE, PASSWORD, SCHEMA_VERSIONS, SECRET, slow_run, wait_for

from novajobs.console.server import REQUEST_TIMEOUT_SEC, build
from novajobs.errors import ConfigError
from novajobs.lock import JobLock
from novajobs.output import setup_logging
from novajobs.records import history_key
from novajobs.runner import RunOptions, run_job
from novajobs.settings import Settings
from novajobs.streams.handlers import Message
from novajobs.streams.keys import stream_keys

TOKEN = "console-test-token-0123456789"


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.host = f"127.0.0.1:{port}"

    def call(self, method: str, path: str, *, body: dict[str, Any] | None = None,
             form: dict[str, str] | None = None, headers: dict[str, str] | None = None,
             token: str | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        head = {"Host": self.host, **(headers or {})}
        payload = None
        if body is not None:
            payload, head["Content-Type"] = json.dumps(body), "application/json"
        elif form is not None:
            payload = urlencode(form)
            head["Content-Type"] = "application/x-www-form-urlencoded"
        if token:
            head["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=payload, headers=head)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        return response.status, dict(response.getheaders()), text

    def get(self, path: str, **kw: Any) -> Any:
        status, _, text = self.call("GET", path, **kw)
        assert status == 200, (path, status, text)
        return json.loads(text) if path.startswith("/api/") else text

    def act(self, path: str, **body: Any) -> tuple[int, Any]:
        status, _, text = self.call("POST", path, body={**body, "confirm": True}, token=TOKEN)
        return status, json.loads(text)


@pytest.fixture
def start_console(redis_server: None) -> Iterator[Callable[..., Client]]:
    servers = []

    def start(settings: Settings, *, bind: str = "127.0.0.1:0", read_only: bool = False,
              token: str = TOKEN) -> Client:
        server, console = build(settings, bind, read_only, token)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Client(console.guard.port)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.cluster
def test_the_api_shows_every_job_from_real_runs(start_console, settings, redis_client, names):
    setup_logging("json", "info")  # as the CLI does: the run keeps what it logs
    done = run_job("clean-token-blacklist", settings)
    run_job("clean-token-blacklist", settings, RunOptions(dry_run=True))
    holder = JobLock(redis_client, f"{names['prefix']}job:lock:refresh-trending", 30,
                     {"job": "refresh-trending", "host": "far", "pid": 7, "run_id": "held"})
    assert holder.acquire()
    client = start_console(settings)

    jobs = {j["unit"]: j for j in client.get("/api/jobs")}
    detail = client.get("/api/jobs/clean-token-blacklist")
    run = client.get(f"/api/runs/clean-token-blacklist/{done.run_id[:8]}")
    page = client.get("/")
    holder.release()

    blacklist = jobs["clean-token-blacklist"]
    assert (blacklist["state"], blacklist["outcome"], blacklist["schedule"]) == (
        "ended", "nothing_to_do", "17 * * * *")
    assert blacklist["next_run_at"][14:16] == "17" and blacklist["last_success_at"]
    assert [p["dry_run"] for p in blacklist["recent"]] == [True, False]
    assert blacklist["attempt"]["dry_run"] is True
    assert jobs["gc-files"]["state"] == "never_run" and jobs["gc-files"]["recent"] == []
    assert jobs["refresh-trending"]["lock"] is None  # held, but by no run of its record
    assert [h["run_id"] for h in detail["units"][0]["history"]][1] == done.run_id
    assert run["run"]["run_id"] == done.run_id and run["run"]["counters"] == done.counters
    assert next(line["message"] for line in run["log"]) == "run started"
    assert run["log"][-1]["outcome"] == "nothing_to_do"
    assert 'data-unit="clean-token-blacklist"' in page and "<svg class=\"chart\"" in page
    assert page.count("<tr data-unit=") == len(jobs)


def test_actions_need_the_token_and_a_confirmation(start_console, settings, redis_client, names):
    client = start_console(settings)
    path = "/api/jobs/clean-token-blacklist/trigger"

    assert client.call("POST", path, body={"confirm": True})[0] == 401
    assert client.call("POST", path, body={"confirm": True}, token="wrong")[0] == 401
    status, _, text = client.call("POST", path, body={}, token=TOKEN)
    assert status == 400 and "on the console's host" in json.loads(text)["question"]
    assert redis_client.llen(history_key(names["prefix"], "clean-token-blacklist")) == 0

    status, started = client.act(path)
    assert status == 202 and started["running"] is True
    wait_for(lambda: not client.get(f"/api/triggers/{started['id']}")["running"], 60,
             "the triggered run's end", interval=0.2)
    t = client.get(f"/api/triggers/{started['id']}")
    assert t["exit_code"] == 0 and t["lines"][-1]["outcome"] == "nothing_to_do"
    history = client.get("/api/jobs/clean-token-blacklist")["units"][0]["history"]
    assert history[0]["run_id"] == t["run_id"] and history[0]["host"]


def test_a_cross_site_post_is_refused(start_console, settings):
    client = start_console(settings)
    login = client.call("POST", "/login", form={"token": TOKEN})
    assert login[0] == 303
    cookie = login[1]["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in login[1]["Set-Cookie"] and "SameSite=Strict" in login[1]["Set-Cookie"]
    page = client.call("GET", "/", headers={"Cookie": cookie})[2]
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    path, form = "/jobs/clean-token-blacklist/trigger", {"csrf": csrf}
    own = f"http://{client.host}"

    evil = client.call("POST", path, form=form,
                       headers={"Cookie": cookie, "Origin": "http://evil.example"})
    fetch_says = client.call("POST", path, form=form,
                             headers={"Cookie": cookie, "Sec-Fetch-Site": "cross-site"})
    no_csrf = client.call("POST", path, form={}, headers={"Cookie": cookie, "Origin": own})
    ok = client.call("POST", path, form=form, headers={"Cookie": cookie, "Origin": own})
    evil_login = client.call("POST", "/login", form={"token": TOKEN},
                             headers={"Origin": "http://evil.example"})

    assert (evil[0], fetch_says[0], no_csrf[0]) == (403, 403, 403)
    assert "cross-site request refused" in evil[2] and "CSRF" in no_csrf[2]
    assert ok[0] == 200 and "Yes, do it" in ok[2]  # the confirmation step, nothing ran yet
    assert evil_login[0] == 403 and "Set-Cookie" not in evil_login[1]
    assert client.call("GET", "/", headers={"Host": "evil.example"})[0] == 421  # rebinding


def test_read_only_refuses_every_action_and_shows_none(start_console, settings):
    client = start_console(settings, read_only=True)
    status, body = client.act("/api/jobs/clean-token-blacklist/trigger")
    assert status == 403 and body["error"] == "the console is read-only"
    assert "Run now" not in client.get("/") and "read-only" in client.get("/")


def test_a_non_loopback_bind_needs_a_token_for_everything(start_console, settings):
    with pytest.raises(ConfigError, match="console_token must be set"):
        build(settings, "0.0.0.0:0", False, "")
    client = start_console(settings, bind="0.0.0.0:0")
    assert client.call("GET", "/api/jobs")[0] == 401
    assert client.call("GET", "/")[1]["Location"] == "/login"
    assert client.call("GET", "/api/jobs", token=TOKEN)[0] == 200
    assert client.call("GET", "/healthz")[0] == 200 and client.call("GET", "/readyz")[0] == 200


@pytest.mark.cluster
def test_stop_a_running_run_and_release_a_stale_lock(start_console, ch, make_settings, env,
                                                    redis_client, names):
    settings = make_settings(run_heartbeat_sec=0.2)
    client = start_console(settings)
    beat = ("-s", "run_heartbeat_sec=0.2")
    proc = slow_run(ch, env, 3000, *beat)
    status, asked = client.act("/api/jobs/refresh-suggestions/stop")
    assert status == 200 and asked["asked"][0]["unit"] == "refresh-suggestions"
    assert proc.wait(timeout=30) == 130
    proc.communicate()
    stopped = client.get("/api/jobs/refresh-suggestions")["units"][0]["status"]
    assert stopped["outcome"] == "interrupted" and "stop requested by" in stopped["error"]
    assert client.act("/api/jobs/refresh-suggestions/stop")[0] == 409  # nothing running

    proc = slow_run(ch, env, 3000, *beat, "-s", "lock_ttl_sec=60")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.communicate()
    key = f"{names['prefix']}job:lock:refresh-suggestions"
    time.sleep(1)
    [lock] = client.get("/api/locks")
    assert lock["key"] == key and lock["stale"] is True
    assert client.act("/api/locks/release", key=key, run_id="someone-else")[0] == 409
    status, done = client.act("/api/locks/release", key=key, run_id=lock["run_id"])
    assert status == 200 and done["released"] == key and not redis_client.exists(key)


@pytest.mark.cluster
def test_dead_letters_browse_replay_and_purge(start_console, fast, handlers, redis_client,
                                              names):
    def fails(message: Message) -> None:
        raise ValueError(f"cannot handle {message.fields['n']}")

    handlers("fails", fails)
    settings = fast(stream_handlers=("jobs=fails",), stream_max_retries=0, stream_trim=False)
    for n in range(3):
        redis_client.xadd(names["prefix"] + "jobs", {"n": str(n)})
    assert run_job("drain-stream", settings).counters["dead_lettered"] == 3
    client = start_console(settings)

    [stream] = client.get("/api/streams")
    letters = client.get("/api/streams/jobs/dlq")
    first = letters["entries"][0]
    page_one = client.get("/api/streams/jobs/dlq?limit=2")
    page_two = client.get(f"/api/streams/jobs/dlq?limit=2&from={quote(page_one['next_from'])}")
    html = client.get("/streams/jobs/dlq?limit=2")
    replayed = client.act("/api/streams/jobs/dlq/replay", ids=[first["id"]])
    path, by_error = "/api/streams/jobs/dlq/replay", {"error": "cannot handle 2"}
    asked = client.call("POST", path, body=by_error, token=TOKEN)
    filtered = client.act(path, **by_error)
    bad = client.act(path, error_regex="(")
    purged = client.act("/api/streams/jobs/dlq/purge", all=True)

    assert (stream["stream"], stream["dead_letters"], stream["length"]) == ("jobs", 3, 3)
    assert stream["group"]["pending"] == 0 and stream["group"]["lag"] == 0
    assert first["error"] == "ValueError: cannot handle 0" and first["fields"] == {"n": "0"}
    assert letters["next_from"] is None and page_two["next_from"] is None
    assert [d["fields"]["n"] for d in page_one["entries"] + page_two["entries"]] == [
        "0", "1", "2"]
    assert f'?from={quote(page_one["next_from"], safe="")}">next 2' in html
    assert replayed == (200, {"replayed": 1, "missing": 0, "unreplayable": 0, "too_old": 0})
    assert json.loads(asked[2])["question"] == (
        "Replay 1 dead letter(s) of jobs into jobs? (selected by error=cannot handle 2)")
    assert filtered == (200, {"replayed": 1, "missing": 0, "unreplayable": 0, "too_old": 0})
    assert bad[0] == 400 and "--error-regex '('" in bad[1]["error"]
    assert purged == (200, {"deleted": 1, "missing": 0})
    assert redis_client.xlen(stream_keys(names["prefix"], "jobs").dlq) == 0
    assert [f[b"n"] for _, f in redis_client.xrange(names["prefix"] + "jobs")][-2:] == [
        b"0", b"2"]
    assert client.call("GET", "/api/streams/nope/dlq")[0] == 404


def test_no_secret_is_ever_rendered(start_console, make_settings, redis_client):
    setup_logging("json", "info")
    settings = make_settings(minio_secret_key=SECRET, neo4j_password=PASSWORD,
                             alert_webhook_url="https://hooks.example/T0/SECRETHOOK")
    rec = run_job(LOG_PROBE, settings, lines=1)
    client = start_console(settings)
    seen = "".join(
        client.call("GET", path)[2]
        for path in ("/", "/api/jobs", "/streams", "/api/streams", "/locks", "/api/locks",
                     f"/api/runs/log-probe/{rec.run_id}", f"/runs/log-probe/{rec.run_id}"))
    assert "connecting with secret ****" in seen
    details = client.get(f"/api/runs/log-probe/{rec.run_id}")["details"]
    assert details == {"checked": ["a", "b"], "secret": "****"}  # kept, and redacted
    for secret in (SECRET, PASSWORD, "SECRETHOOK", TOKEN, json.dumps(SECRET)[1:-1]):
        assert secret not in seen


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_render_deploy_adds_the_console_only_when_asked(tmp_path, version):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from novajobs import deploy
    from novajobs.settings import load_settings

    assert deploy.CONSOLE not in deploy.render_all(load_settings(environ={}))
    files = deploy.render_all(load_settings(environ={}, overrides={"k8s_console": "true"}))
    deploy.write_files(tmp_path, files)
    tool = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run([str(tool), "--strict", "--quiet", "-k", version,
                           str(tmp_path / deploy.CONSOLE)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    deployment, service = yaml.safe_load_all(files[deploy.CONSOLE])
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    assert container["args"] == ["console", "--bind", "0.0.0.0:8787"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"secretRef": {"name": "novajobs"}} in container["envFrom"]
    assert service["spec"]["ports"][0]["port"] == 8787 and service["kind"] == "Service"


def test_help_and_job_runs_never_import_the_console():
    import subprocess
    import sys

    code = ("import sys\n"
            "from novajobs.cli import run_cli\n"
            "for args in (['--help'], ['console', '--help'], ['status', '--help']):\n"
            "    assert run_cli(args) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith('novajobs.console')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_default_bind_is_loopback_and_a_wide_bind_without_token_is_one_line(cli):
    from novajobs.console.security import is_loopback
    from novajobs.settings import load_settings

    host = load_settings(environ={}).console_bind.rpartition(":")[0]
    assert is_loopback(host)
    refused = cli("console", "--bind", "0.0.0.0:8787", extra_env={"NOVAJOBS_CONSOLE_TOKEN": ""})
    assert refused.returncode == 78, refused.stderr
    assert refused.stderr.count("\n") == 1 and "console_token must be set" in refused.stderr


def test_a_silent_connection_is_closed_and_others_are_still_served(redis_server, settings):
    import socket

    server, console = build(settings, "127.0.0.1:0", False, TOKEN)
    assert server.RequestHandlerClass.timeout == REQUEST_TIMEOUT_SEC == 30
    server.RequestHandlerClass.timeout = 1  # shortened for the test
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = Client(console.guard.port)
    idle = [socket.create_connection(("127.0.0.1", client.port)) for _ in range(20)]
    assert client.call("GET", "/healthz")[0] == 200  # while 20 sockets say nothing
    for sock in idle:
        sock.settimeout(30)
        assert sock.recv(1024) == b""  # closed by the console, not by us
        sock.close()
    server.shutdown()
    server.server_close()
