"""Stopping a running run from anywhere (``novajobs stop``, the console).

The request is a field in ``job:stop:{unit}`` (a hash: run id -> who asked and when),
one key per unit, so it works on a Redis Cluster. The run's heartbeat (beacon.py) sees
it within ``run_heartbeat_sec`` and stops at its next safe point as if it got SIGTERM:
exit 130, recorded as "interrupted: stop requested by USER@HOST". Only runs running
when the request was made are named, so the next scheduled run is not stopped too.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novajobs.jobstatus import job_statuses
from novajobs.lock import lock_key, read_holder
from novajobs.records import find_run, read_status, stop_key

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings

REQUEST_TTL_SEC = 86400  # a request outlives any run it names


@dataclass(frozen=True)
class Target:
    unit: str
    run_id: str
    host: str | None
    pid: int | None


def who_am_i() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def running_runs(r: redis.Redis, settings: Settings, job: str,
                 unit: str | None = None) -> tuple[list[Target], list[dict[str, Any]]]:
    """The runs of ``job`` (or of one unit) running now, from their lock holders and
    their status, and the stale ones (recorded as running, no heartbeat: nothing to stop)."""
    prefix = settings.redis_prefix
    found: dict[str, Target] = {}
    stale = []
    for status in job_statuses(r, prefix, settings.run_heartbeat_sec):
        if status["job"] != job or (unit and status["unit"] != unit):
            continue
        if status["state"] == "running":
            found[status["run_id"]] = Target(status["unit"], status["run_id"], status["host"],
                                             status["pid"])
        elif status["state"] == "stale":
            stale.append(status)
    # Units locked per consumer (drain-stream) run several at once under one status.
    for key in [lock_key(prefix, job), *r.scan_iter(match=lock_key(prefix, job, "*"))]:
        holder = read_holder(r, key)
        info = holder.info if holder else {}
        run_id, holder_unit = info.get("run_id"), str(info.get("job") or job)
        if run_id and run_id not in found and (unit is None or holder_unit == unit):
            found[run_id] = Target(holder_unit, run_id, info.get("host"), info.get("pid"))
    return sorted(found.values(), key=lambda t: t.unit), stale


def request_stop(r: redis.Redis, prefix: str, targets: list[Target], by: str) -> None:
    request = json.dumps({"by": by, "at": time.time()})
    for target in targets:
        key = stop_key(prefix, target.unit)
        pipe = r.pipeline(transaction=True)
        pipe.hset(key, target.run_id, request)
        pipe.expire(key, REQUEST_TTL_SEC)
        pipe.execute()


def still_running(r: redis.Redis, prefix: str, job: str, target: Target) -> bool:
    status = read_status(r, prefix, target.unit)
    if status and status["run_id"] == target.run_id:
        return bool(status["outcome"] == "running")
    keys = [lock_key(prefix, job), *r.scan_iter(match=lock_key(prefix, job, "*"))]
    holders = (read_holder(r, k) for k in keys)
    return any(h is not None and h.info.get("run_id") == target.run_id for h in holders)


def wait_ended(r: redis.Redis, prefix: str, job: str, targets: list[Target],
               timeout_sec: float) -> dict[str, dict[str, Any] | None]:
    """Wait for the runs to end; their final records (None: still running at the timeout)."""
    give_up = time.monotonic() + timeout_sec
    ended: dict[str, dict[str, Any] | None] = {}
    while True:
        for t in targets:
            if t.run_id not in ended and not still_running(r, prefix, job, t):
                ended[t.run_id] = find_run(r, prefix, t.unit, t.run_id)
        if len(ended) == len(targets) or time.monotonic() >= give_up:
            break
        time.sleep(0.2)
    return {t.run_id: ended.get(t.run_id) for t in targets}
