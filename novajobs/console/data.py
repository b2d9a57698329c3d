"""What the console shows, as JSON-ready data: the same records `status`, `history`,
`logs`, `locks` and `dlq` read, gathered per page. The HTML pages render exactly these
(the API under /api/ returns them), so nothing is shown that the API does not have.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from novajobs.conversions import text
from novajobs.jobstatus import job_statuses, unit_status
from novajobs.lock import read_holder
from novajobs.records import find_run, read_history
from novajobs.registry import JOBS, get_job
from novajobs.runlog import read_details, read_lines

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings

CHART_RUNS = 30  # runs per job in the overview's chart


def jobs_overview(r: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every job and unit: its status, schedule and next run, and its recent runs."""
    prefix = settings.redis_prefix
    rows = job_statuses(r, prefix, settings.run_heartbeat_sec)
    for row in rows:
        row.update(schedule_of(row["job"], settings))
        row["recent"] = [_chart_point(e) for e in read_history(r, prefix, row["unit"],
                                                               CHART_RUNS)]
    return rows


def schedule_of(job: str, settings: Settings) -> dict[str, Any]:
    try:
        spec = get_job(job)
    except Exception:  # a unit recorded by a job this version does not have
        return {"schedule": None, "next_run_at": None, "summary": None}
    from cronsim import CronSim

    now = datetime.now(ZoneInfo(settings.timezone))
    upcoming = next(CronSim(spec.schedule, now))
    return {"schedule": spec.schedule, "next_run_at": upcoming.isoformat(timespec="minutes"),
            "summary": spec.summary, "destructive": spec.destructive}


def _chart_point(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("run_id", "started_at", "outcome", "duration_ms", "skips",
                                  "dry_run")}


def job_detail(r: redis.Redis, settings: Settings, job: str, limit: int = 50) -> dict[str, Any]:
    """One job: each of its units' status and history (a sharded job has several)."""
    name = get_job(job).name
    prefix = settings.redis_prefix
    units = [s for s in job_statuses(r, prefix, settings.run_heartbeat_sec)
             if s["job"] == name]
    return {
        "job": name,
        **schedule_of(name, settings),
        "units": [{"status": s, "history": read_history(r, prefix, s["unit"], limit)}
                  for s in units],
    }


def run_detail(r: redis.Redis, settings: Settings, unit: str,
               run_id: str) -> dict[str, Any] | None:
    """One run: its record (counters, message, error) and its kept log lines."""
    prefix = settings.redis_prefix
    run = find_run(r, prefix, unit, run_id, settings.history_size)
    if run is None:
        return None
    status = unit_status(r, prefix, unit, settings.run_heartbeat_sec)
    state = status["state"] if status["run_id"] == run["run_id"] else "ended"
    rid = str(run["run_id"])
    return {"run": run, "state": state, "details": read_details(r, prefix, unit, rid),
            "log": read_lines(r, prefix, unit, rid)}


def locks(r: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    prefix = f"{settings.redis_prefix}job:lock:"
    now = time.time()
    out = []
    for key in r.scan_iter(match=prefix + "*", count=500):
        holder = read_holder(r, key)
        if holder is None:
            continue
        out.append({
            "key": holder.key if isinstance(holder.key, str) else holder.key.decode(),
            "unit": holder.info.get("job"),
            **holder.summary(now),
        })
    return sorted(out, key=lambda x: x["key"])


def stale_run_ids(r: redis.Redis, settings: Settings) -> set[str]:
    """Runs recorded as running whose heartbeat stopped: their locks may be released."""
    rows = job_statuses(r, settings.redis_prefix, settings.run_heartbeat_sec)
    return {str(s["run_id"]) for s in rows if s["state"] == "stale"}


def streams(r: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Each configured stream: length, consumer group lag and pending, DLQ and retries."""
    from novajobs.streams import dlq
    from novajobs.streams.handlers import plan_streams
    from novajobs.streams.queues import pending_retries

    now = time.time()
    out = []
    for plan in plan_streams(settings):
        key = plan.keys.stream
        due, later = pending_retries(r, plan.keys, now)
        out.append({
            "stream": plan.name,
            "handler": plan.handler,
            "length": int(r.xlen(key)),
            "group": _group(r, key, settings.stream_group),
            "dead_letters": dlq.length(r, plan.keys),
            "retries_due": due,
            "retries_later": later,
        })
    return out


def _group(r: redis.Redis, key: str, group: str) -> dict[str, Any] | None:
    try:
        groups: Any = r.xinfo_groups(key)
    except Exception:  # no such stream yet
        return None
    for info in groups:
        name = info.get("name")
        if text(name) == group:
            return {"name": group, "pending": info.get("pending"), "lag": info.get("lag"),
                    "consumers": info.get("consumers"),
                    "last_delivered_id": text(info["last-delivered-id"])}
    return None


def dead_letters(r: redis.Redis, settings: Settings, stream: str, limit: int = 50,
                 start: str = "-") -> dict[str, Any]:
    from novajobs.streams import dlq
    from novajobs.streams.keys import stream_keys

    keys = stream_keys(settings.redis_prefix, stream)
    letters = dlq.read(r, keys, start, "+", limit)
    after_last = f"({letters[-1].id}" if len(letters) == limit else None
    more = after_last is not None and bool(dlq.read(r, keys, after_last, "+", 1))
    return {"stream": stream, "total": dlq.length(r, keys), "from": start,
            "entries": [letter.summary() for letter in letters],
            "next_from": after_last if more else None}


def known_stream(settings: Settings, stream: str) -> bool:
    from novajobs.streams.handlers import plan_streams

    return any(p.name == stream for p in plan_streams(settings))


def job_names() -> list[str]:
    return [spec.name for spec in JOBS]
