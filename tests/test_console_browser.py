"""The console in a real browser: headless Chromium (Debian's), driven by Playwright's
Python package, against `novajobs console` running as its own process.

It logs in, sees the jobs and a run's log, runs a job and sees it finish, stops a
running one, replays a dead letter, and checks that a form posted from another site is
refused. The main page's screenshot is saved as console-main.png in the test's tmp dir.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ring_of_users, spawn

from novajobs.records import history_key
from novajobs.runner import run_job
from novajobs.streams.handlers import Message
from novajobs.streams.keys import stream_keys
from novajobs_dev.netfaults import refused_port

TOKEN = "browser-test-token-9876543210"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
                 "--disable-breakpad", "--disable-domain-reliability"]


@pytest.fixture
def console_url(env: dict[str, str], redis_server: None) -> Iterator[str]:
    port = refused_port()
    console_env = {**env, "NOVAJOBS_CONSOLE_TOKEN": TOKEN,
                   "NOVAJOBS_RUN_HEARTBEAT_SEC": "0.2",
                   "NOVAJOBS_STREAM_HANDLERS": "jobs=fails",
                   "NOVAJOBS_SUGGESTION_BATCH_SIZE": "0", "NOVAJOBS_SUGGESTION_CHUNK_SIZE": "1"}
    proc = spawn(console_env, "console", "--bind", f"127.0.0.1:{port}", stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    assert "novajobs console on http://127.0.0.1" in proc.stderr.readline()
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    assert proc.wait(timeout=15) == 0
    proc.stderr.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def evil_site(console_url: str) -> Iterator[str]:
    """Another origin whose page posts a form to the console on load."""
    page = (f'<form id="f" method="post" action="{console_url}/jobs/clean-token-blacklist/'
            'trigger"><input name="confirm" value="yes"></form>'
            '<script>document.getElementById("f").submit()</script>').encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_console_in_a_real_browser(console_url, browser, evil_site, ch, cli, fast,
                                       handlers, redis_client, names, tmp_path: Path):
    ring_of_users(ch, 3000)
    ch.release()
    assert cli("clean-token-blacklist").returncode == 0

    def fails(message: Message) -> None:
        raise ValueError(f"cannot handle {message.fields['n']}")

    handlers("fails", fails)
    for n in range(3):
        redis_client.xadd(names["prefix"] + "jobs", {"n": str(n)})
    drained = run_job("drain-stream", fast(stream_handlers=("jobs=fails",), stream_max_retries=0))
    assert drained.counters["dead_lettered"] == 3

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(console_url + "/")
    rows = page.locator("table.jobs tr[data-unit]")
    assert rows.count() >= 12
    assert "nothing to do" in page.locator('tr[data-unit="clean-token-blacklist"]').inner_text()

    # a run's log, from the job's history
    page.click('tr[data-unit="clean-token-blacklist"] a')
    page.screenshot(path=str(tmp_path / "console-job.png"), full_page=True)
    page.click("table.history a")
    assert "run started" in page.locator("#log").inner_text()
    page.screenshot(path=str(tmp_path / "console-run.png"), full_page=True)

    # log in, run a job now, see it finish
    page.goto(console_url + "/login")
    page.fill('input[name="token"]', TOKEN)
    page.click('button[type="submit"]')
    page.click('tr[data-unit="clean-token-blacklist"] button:has-text("Run now")')
    page.click('button:has-text("Yes, do it")')
    page.wait_for_selector("#exit:has-text('exit 0')")
    assert "nothing_to_do" in page.locator("#log").inner_text()
    page.screenshot(path=str(tmp_path / "console-trigger.png"), full_page=True)

    # run a long one, stop it from the jobs page, see it end interrupted
    page.goto(console_url + "/")
    page.click('tr[data-unit="refresh-suggestions"] button:has-text("Run now")')
    page.click('button:has-text("Yes, do it")')
    page.wait_for_selector("#log:has-text('run started')")
    trigger_url = page.url
    page.goto(console_url + "/")
    page.click('tr[data-unit="refresh-suggestions"] button:has-text("Stop")')
    page.click('button:has-text("Yes, do it")')
    assert "to stop at its next safe point" in page.locator("ul.result").inner_text()
    page.goto(trigger_url)
    page.wait_for_selector("#exit:has-text('exit 130')")
    assert "stop requested by" in page.locator("#log").inner_text()

    # replay a dead letter
    page.goto(console_url + "/streams")
    page.click('tr[data-stream="jobs"] a')
    first = page.locator("table.dlq tr[data-id]").first.get_attribute("data-id")
    page.screenshot(path=str(tmp_path / "console-dlq.png"), full_page=True)
    page.click(f'tr[data-id="{first}"] button:has-text("Replay")')
    page.click('a:has-text("Cancel")')  # back to the dead letters, nothing replayed
    assert page.url.endswith("/streams/jobs/dlq") and redis_client.xlen(
        stream_keys(names["prefix"], "jobs").dlq) == 3
    page.click(f'tr[data-id="{first}"] button:has-text("Replay")')
    page.click('button:has-text("Yes, do it")')
    assert "replayed 1" in page.locator("ul.result").inner_text()
    assert redis_client.xlen(stream_keys(names["prefix"], "jobs").dlq) == 2

    # a form posted from another site, while logged in here: refused, nothing runs
    before = redis_client.llen(history_key(names["prefix"], "clean-token-blacklist"))
    evil = context.new_page()
    response_codes: list[int] = []
    evil.on("response", lambda r: response_codes.append(r.status) if "/trigger" in r.url
            else None)
    evil.goto(evil_site)
    evil.wait_for_load_state("networkidle")
    time.sleep(1)
    assert response_codes and response_codes[-1] in (401, 403)
    assert redis_client.llen(history_key(names["prefix"], "clean-token-blacklist")) == before

    page.goto(console_url + "/")
    shot = tmp_path / "console-main.png"
    page.screenshot(path=str(shot), full_page=True)
    jobs = len(page.locator("table.jobs tr[data-unit]").all())
    summary = page.locator("p.summary").inner_text()
    assert summary.startswith(f"{jobs} jobs: interrupted 1 success 1 nothing to do 1 never run"
                              ), summary  # what went wrong first
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
