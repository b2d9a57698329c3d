"""What the console can do: run a job now, stop a running run, release a stale lock,
replay or purge dead letters. Each is the CLI's own function, with the CLI's checks.

A run started here is a real `novajobs JOB` process on this host (the full run contract:
lock, record, signals, timeout, exit code); its stderr (the JSON log lines) is kept here
so the page can show it as it comes, redacted like the run logs in Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.jobstatus import unit_status
from novajobs.lock import force_release, read_holder
from novajobs.registry import get_job
from novajobs.runlog import redactor
from novajobs.stops import request_stop, running_runs, who_am_i

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings

KEEP_TRIGGERS = 50
KEEP_LINES = 2000


class ActionError(Exception):
    """An action refused for a reason the operator can act on (HTTP 409/404/400)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Trigger:
    id: str
    job: str
    dry_run: bool
    by: str
    started_at: float
    proc: subprocess.Popen[str]
    lines: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEEP_LINES))
    seq: int = 0
    run_id: str | None = None
    exit_code: int | None = None

    def to_json(self, after: int = 0) -> dict[str, Any]:
        return {
            "id": self.id, "job": self.job, "dry_run": self.dry_run, "by": self.by,
            "started_at": self.started_at, "run_id": self.run_id, "pid": self.proc.pid,
            "running": self.exit_code is None, "exit_code": self.exit_code,
            "lines": [line for line in list(self.lines) if line["seq"] > after],
        }


class Triggers:
    """Runs started from the console, newest last; their log lines as they come."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redact = redactor(settings)
        self._lock = threading.Lock()
        self._runs: dict[str, Trigger] = {}

    def start(self, job: str, dry_run: bool = False) -> Trigger:
        spec = get_job(job)
        if dry_run and not spec.destructive:
            raise ActionError(f"{spec.name} has no dry run", 400)
        argv = [sys.executable, "-m", "novajobs", spec.name, "--log-format", "json",
                "--set", "log_file="]
        if dry_run:
            argv.append("--dry-run")
        proc = subprocess.Popen(argv, env=child_env(self.settings), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # the console's Ctrl-C is not its
        trigger = Trigger(os.urandom(6).hex(), spec.name, dry_run, who_am_i(), time.time(), proc)
        with self._lock:
            self._runs[trigger.id] = trigger
            while len(self._runs) > KEEP_TRIGGERS:
                self._runs.pop(next(iter(self._runs)))
        threading.Thread(target=self._read, args=(trigger,), daemon=True,
                         name=f"trigger {trigger.id}").start()
        return trigger

    def get(self, trigger_id: str) -> Trigger | None:
        with self._lock:
            return self._runs.get(trigger_id)

    def all(self) -> list[Trigger]:
        with self._lock:
            return list(self._runs.values())

    def _read(self, trigger: Trigger) -> None:
        assert trigger.proc.stderr is not None
        for raw in trigger.proc.stderr:
            text = self.redact(raw.rstrip("\n"))
            try:
                line = json.loads(text)
                line = line if isinstance(line, dict) else {"message": text}
            except ValueError:  # a traceback or a one-line error of the CLI
                line = {"level": "error", "message": text}
            trigger.seq += 1
            line["seq"] = trigger.seq
            trigger.run_id = trigger.run_id or line.get("run_id")
            trigger.lines.append(line)
        trigger.proc.stderr.close()
        trigger.exit_code = trigger.proc.wait()


def child_env(settings: Settings) -> dict[str, str]:
    """The console's environment, plus every setting it did not take from the defaults
    (its environment, config file or flags), so the run sees the same Redis, prefix and
    stores as the console shows."""
    env = dict(os.environ)
    for name, source in settings.sources.items():
        if source == "default":
            continue
        value = getattr(settings, name)
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        env[f"NOVAJOBS_{name.upper()}"] = text.lower() if isinstance(value, bool) else text
    return env


def stop_job(r: redis.Redis, settings: Settings, job: str,
             unit: str | None = None) -> list[dict[str, Any]]:
    name = get_job(job).name
    targets, _stale = running_runs(r, settings, name, unit)
    if not targets:
        raise ActionError(f"no run of {unit or name} is running")
    request_stop(r, settings.redis_prefix, targets, who_am_i())
    return [{"unit": t.unit, "run_id": t.run_id, "host": t.host, "pid": t.pid}
            for t in targets]


def release_stale_lock(r: redis.Redis, settings: Settings, key: str,
                       run_id: str) -> dict[str, Any]:
    """Release ``key`` if it is still held by ``run_id`` (what the operator confirmed) and
    that run is stale: recorded as running, but its heartbeat stopped."""
    if not key.startswith(f"{settings.redis_prefix}job:lock:"):
        raise ActionError(f"{key} is not a job lock", 400)
    holder = read_holder(r, key)
    if holder is None:
        raise ActionError(f"{key} is not held any more")
    if holder.info.get("run_id") != run_id:
        raise ActionError(f"{key} changed hands: now held by {holder.describe()}")
    status = unit_status(r, settings.redis_prefix, str(holder.info.get("job") or ""),
                         settings.run_heartbeat_sec)
    if status["run_id"] != run_id or status["state"] != "stale":
        raise ActionError(f"the run holding {key} is not stale ({status['state']}): "
                          "stop it instead")
    if not force_release(r, holder):
        raise ActionError(f"{key} changed hands meanwhile; nothing released")
    return {"released": key, "was_held_by": holder.describe()}


FILTERS = ("error", "error_regex", "since", "until", "min_attempts", "max_attempts")


def dlq_selection(verb: str, form: dict[str, Any]) -> Any:
    """The CLI's selection (`dlq replay|purge`: ids, all, filters) from a form or JSON."""
    from novajobs.streams.dlq import parse_selection

    raw = form.get("ids") or []
    ids = [i for part in ([raw] if isinstance(raw, str) else raw)
           for i in str(part).replace(",", " ").split()]
    given: dict[str, Any] = {k: form.get(k) if form.get(k) not in ("", None) else None
                             for k in FILTERS}
    for name in ("min_attempts", "max_attempts"):
        if given[name] is not None:
            try:
                given[name] = int(given[name])
            except ValueError:
                raise ActionError(f"dlq {verb}: {name} must be a whole number", 400) from None
    every = str(form.get("all", "")).lower() in ("1", "true", "yes")
    return parse_selection(verb, ids, every, **given)


def dlq_action(r: redis.Redis, settings: Settings, verb: str, stream: str, selection: Any,
               dry_run: bool = False) -> dict[str, Any]:
    """``dlq replay`` / ``dlq purge`` of a selection (``dry_run``: what it would take)."""
    from novajobs.streams import dlq
    from novajobs.streams.keys import stream_keys

    keys = stream_keys(settings.redis_prefix, stream)
    if verb == "replay":
        oldest = dlq.oldest_replayable_ms(settings, time.time())
        done = dlq.replay_selected(r, keys, selection, oldest_ms=oldest, dry_run=dry_run)
    else:
        done = dlq.purge_selected(r, keys, selection, dry_run=dry_run)
    if dry_run:
        return {"matched": done.matched, "would_move": len(done.letters)}
    if verb == "replay":
        return {"replayed": done.moved, "missing": done.missing,
                "unreplayable": done.unreplayable, "too_old": done.too_old}
    return {"deleted": done.moved, "missing": done.missing}
