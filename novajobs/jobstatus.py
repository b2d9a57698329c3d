"""What ``novajobs status`` and the console show for each job: its last real run, with a
``state`` that can be trusted, and who holds its lock.

``state`` is one of:

- ``never_run``: no real run recorded (the job may have been skipped or dry-run);
- ``running``: the run's heartbeat (``seen_at``) is recent;
- ``stale``: recorded as running, but not seen for ``STALE_BEATS`` heartbeats: the
  process died without a word (``kill -9``, a lost node); ``lock`` says whether its
  lock is still there (it expires by itself, or ``novajobs locks release``);
- ``ended``: the run ended; ``outcome`` says how.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from novajobs.errors import Outcome
from novajobs.lock import read_holder
from novajobs.records import read_status, read_statuses, status_entry
from novajobs.registry import JOBS

if TYPE_CHECKING:
    import redis

STALE_BEATS = 3


def job_statuses(r: redis.Redis, prefix: str, heartbeat_sec: float) -> list[dict[str, Any]]:
    """Every job of the registry (never run ones too) and every unit with a record."""
    found = {s["unit"]: s for s in read_statuses(r, prefix)}
    jobs_seen = {s["job"] for s in found.values()}
    for spec in JOBS:
        if spec.name not in jobs_seen:
            found[spec.name] = status_entry({}, spec.name)
    order = {spec.name: i for i, spec in enumerate(JOBS)}
    rows = sorted(found.values(), key=lambda s: (order.get(s["job"], len(order)), s["unit"]))
    now = time.time()
    return [with_state(r, s, heartbeat_sec, now) for s in rows]


def unit_status(r: redis.Redis, prefix: str, unit: str,
                heartbeat_sec: float) -> dict[str, Any]:
    status = read_status(r, prefix, unit) or status_entry({}, unit)
    return with_state(r, status, heartbeat_sec, time.time())


def with_state(r: redis.Redis, status: dict[str, Any], heartbeat_sec: float,
               now: float) -> dict[str, Any]:
    status["lock"] = _lock(r, status["lock_key"], now)
    status["seen_age_sec"] = _age(status["seen_at"], now)
    if status["outcome"] is None:
        status["state"] = "never_run"
    elif status["outcome"] != str(Outcome.RUNNING):
        status["state"] = "ended"
    else:
        seen = status["seen_age_sec"]
        alive = seen is not None and seen <= STALE_BEATS * heartbeat_sec
        status["state"] = "running" if alive else "stale"
    return status


def _lock(r: redis.Redis, key: str | None, now: float) -> dict[str, Any] | None:
    holder = read_holder(r, key) if key else None
    if holder is None:
        return None
    return {"key": holder.key, **holder.summary(now)}


def _age(iso: str | None, now: float) -> float | None:
    if not iso:
        return None
    try:
        return round(now - datetime.fromisoformat(iso).timestamp(), 1)
    except ValueError:
        return None
