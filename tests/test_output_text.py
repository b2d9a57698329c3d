"""Stored and user-supplied text is printed literally on a terminal (never read as rich
markup or emoji codes), and the JSON log stays one object per line when a driver logs
on its own."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

from novajobs.lock import JobLock
from novajobs_dev.netfaults import refused_port

MARKUP = "x[/]y[bold]:lock:"  # rich would raise on "[/]" and draw an emoji for ":lock:"


def on_a_terminal(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run `novajobs ARGS` with stdout and stderr on a pseudo-terminal, as a person would."""
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "novajobs", *args], stdin=subprocess.DEVNULL,
                            stdout=child, stderr=child,
                            env={**os.environ, **env, "COLUMNS": "200", "TERM": "xterm"})
    os.close(child)
    chunks: list[bytes] = []
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    code = proc.wait(timeout=30)
    return code, b"".join(chunks).decode(errors="replace")


def test_stored_markup_is_printed_as_it_is(pg_server, env, pg, redis_client, names):
    table = f"no_such_{MARKUP}"
    code, log = on_a_terminal(env, "create-partitions", "--table", table)
    assert code == 78, log
    assert "Traceback" not in log and MARKUP in log  # the run's own summary line

    for command in (("history", "create-partitions"), ("status",)):
        code, shown = on_a_terminal(env, *command)
        assert code == 0, shown
        assert "Traceback" not in shown and "🔒" not in shown
    code, shown = on_a_terminal(env, "history", "create-partitions")
    assert MARKUP in shown.replace("\r\n", "").replace("\n", "") or "no_such_x[/]y" in shown


def test_lock_keys_are_not_emoji_codes(redis_client, env, names):
    key = f"{names['prefix']}job:lock:refresh-trending"
    holder = JobLock(redis_client, key, 30, {"job": "refresh-trending", "host": f"h{MARKUP}",
                                             "pid": 7, "run_id": "r"})
    assert holder.acquire()
    try:
        code, shown = on_a_terminal(env, "locks")
        skipped, said = on_a_terminal(env, "refresh-trending")
    finally:
        holder.release()
    assert code == 0, shown
    assert "🔒" not in shown and "refresh-trending" in shown and MARKUP in shown
    assert skipped == 75, said
    assert "🔒" not in said and f"{key} is held" in said.replace("\r\n", ""), said


def test_a_drivers_own_log_lines_are_json_too(cli):
    done = cli("refresh-trending", extra_env={
        "CLICKHOUSE_URL": f"http://127.0.0.1:{refused_port()}/db",
        "NOVAJOBS_RETRY_ATTEMPTS": "2"})

    assert done.returncode == 69, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # each one JSON object
    assert any(line.get("logger", "").startswith("clickhouse_connect") for line in lines), lines
