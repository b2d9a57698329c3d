"""Helpers shared by the test modules (tests/ is on sys.path): waiting, ports, running
novajobs and the scripts as a user would, and reading what a run logged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from novajobs import yamltext
from novajobs.context import JobContext, Result
from novajobs.registry import JobSpec


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "the condition",
             ignoring: tuple[type[Exception], ...] = (), interval: float = 0.02) -> None:
    """Until ``condition()`` is true, failing the test after ``timeout`` seconds. Errors of
    the ``ignoring`` kinds count as not yet (a server still starting, a failover)."""
    give_up = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ignoring:
            pass
        assert time.monotonic() < give_up, f"{what} never came within {timeout:g} s"
        time.sleep(interval)


def run_seconds(stderr: str, exited_at: float) -> float:
    """Seconds from the run's own start to ``exited_at`` (a ``time.time()``): the start is
    what its last log line says (``ts`` less ``elapsed_ms``), so the interpreter's start-up
    and imports, slow on a loaded machine, do not count."""
    last = json.loads(stderr.strip().splitlines()[-1])
    ended = datetime.fromisoformat(last["ts"]).timestamp()
    return exited_at - (ended - float(last["elapsed_ms"]) / 1000)


def drain(settings: Any, *streams: str, **options: Any) -> Any:
    """One in-process drain-stream run over ``streams`` (all configured ones if none), with
    the run options given (``concurrency=...``); returns its record."""
    from novajobs.runner import RunOptions, run_job

    return run_job("drain-stream", settings, RunOptions(**options), streams=streams)


def probe_job(name: str, run: Callable[..., Any], **spec: Any) -> JobSpec:
    """A JobSpec whose ``run`` the test writes, run by the real runner under the whole run
    contract (lock, record, alerts...): ``run`` goes in a module of its own, as a job's
    module would; ``spec`` overrides JobSpec fields (every minute, 30 s timeout)."""
    module = types.ModuleType(f"novajobs_probe_{name.replace('-', '_')}")
    module.run = run  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    fields = {"summary": "probe", "description": "probe", "example": "-",
              "schedule": "* * * * *", "timeout_sec": 30, **spec}
    return JobSpec(name=name, module=module.__name__, **fields)


def novajobs_env(env: Mapping[str, str]) -> dict[str, str]:
    """What a ``novajobs`` process of the test gets: this environment, less a config file's
    path, with ``env`` over it."""
    return {**{k: v for k, v in os.environ.items() if k != "NOVAJOBS_CONFIG"}, **env}


def spawn(env: Mapping[str, str], *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``novajobs ARGS...`` started as a real process with ``env``; its output is piped, as
    text, unless ``popen`` says otherwise (``stdout=``, ``stderr=``)."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                               "text": True, **popen}
    return subprocess.Popen([sys.executable, "-m", "novajobs", *args], env=novajobs_env(env),
                            **options)


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``scripts/NAME ARGS...`` run as a user would start it (its own interpreter)."""
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True,
                          text=True, timeout=timeout)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Prometheus' promtool (Debian package prometheus, installed by scripts/setup.sh)."""
    found = shutil.which("promtool")
    assert found, "promtool is not installed (Debian package prometheus; run scripts/setup.sh)"
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=60)


def promtool_test(tmp_path: Path, rules: Path, series: list[tuple[str, str]],
                  **checks: Any) -> None:
    """``promtool test rules``: ``rules`` evaluated every minute over ``series`` (name,
    values: one a minute); ``checks`` are the test's ``alert_rule_test`` and/or
    ``promql_expr_test`` lists. Fails the test with what promtool says."""
    test = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
        **checks}]}
    path = tmp_path / "rules_test.yml"
    path.write_text(yamltext.dump(test))
    done = promtool("test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def expr_samples(exprs: dict[str, str], cases: list[tuple[str, str, list[tuple[str, float]]]]
                 ) -> list[dict[str, Any]]:
    """promql_expr_test entries: (rule name in ``exprs``, eval time, [(labels, value)])."""
    return [{"expr": exprs[name], "eval_time": at,
             "exp_samples": [{"labels": labels, "value": value} for labels, value in want]}
            for name, at, want in cases]


def one_line_error(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    """A failed command as a user should see it: exit ``code``, a line saying ``needle``,
    no traceback."""
    assert result.returncode == code, result.stderr
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def run_novajobs(env: Mapping[str, str], *args: str,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``novajobs ARGS...`` run to its end as a real process with ``env``."""
    return subprocess.run([sys.executable, "-m", "novajobs", *args], env=novajobs_env(env),
                          capture_output=True, text=True, timeout=timeout)


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> list[str]:
    """Reads ``proc``'s stderr until a line holds ``needle``; returns the lines read."""
    assert proc.stderr is not None
    seen: list[str] = []
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        line = proc.stderr.readline()
        seen.append(line)
        if needle in line:
            return seen
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} never logged: {''.join(seen)[-3000:]}")


def ring_of_users(ch: Any, n: int) -> None:
    """n active users in ClickHouse following each other in a ring (each has one
    suggestion): refresh-suggestions' work, one query per user at chunk size 1."""
    now = datetime.now(UTC).replace(tzinfo=None)
    ch.insert("user_relationships", [[u, u % n + 1, now] for u in range(1, n + 1)],
              ["follower_id", "followee_id", "created_at"])
    ch.insert("post_events", [[now, 1, u, "view"] for u in range(1, n + 1)],
              ["event_time", "post_id", "user_id", "event_type"])


def slow_run(ch: Any, env: Mapping[str, str], users: int, *args: str) -> subprocess.Popen[str]:
    """refresh-suggestions over ``users`` users one query each, started: long enough to
    catch while it runs. Returns once it logged "run started"."""
    ring_of_users(ch, users)
    ch.release()
    proc = spawn(env, "refresh-suggestions", "--batch-size", "0",
                 "-s", "suggestion_chunk_size=1", *args)
    wait_for_line(proc, "run started", timeout=60)
    return proc


# A job that logs the settings' secrets and ``lines`` more lines, and returns a secret in
# its details: what a run's kept log, its record and the console show (redacted).
def _log_probe_run(ctx: JobContext, lines: int = 3, big: int = 0) -> Result:
    s = ctx.settings
    ctx.log.info(f"connecting with secret {s.minio_secret_key} to redis://app:{s.neo4j_password}"
                 f"@cache:6379/0", password=s.neo4j_password)
    for i in range(lines):
        ctx.log.info(f"line {i}", n=i, padding="p" * big)
    return Result(message="logged", details={"checked": ["a", "b"], "secret": s.neo4j_password})


LOG_PROBE = probe_job("log-probe", _log_probe_run)
SECRET, PASSWORD = 'S3cr"et-value', "pw-0f-neo4j"


# Kubernetes schema versions the rendered manifests are validated against (test_deploy,
# test_console_api): podFailurePolicy GA .. the newest schema kubernetes-validate has here.
SCHEMA_VERSIONS = ("1.31.0", "1.37.0")
