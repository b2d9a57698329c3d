"""Run records in Redis: ``job:status:{job}`` (a hash, the latest run) and
``job:history:{job}`` (a capped list of JSON records, newest first).

A skipped run does not overwrite the status of the run that holds the lock; it only
sets ``last_skipped_at`` / ``skipped_by`` and goes into the history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from novajobs.errors import Outcome

if TYPE_CHECKING:
    import redis


@dataclass
class RunRecord:
    job: str
    run_id: str
    host: str
    pid: int
    shard: str | None = None  # "2-of-3"
    started_at: str = ""
    ended_at: str = ""
    duration_ms: int = 0
    outcome: Outcome = Outcome.RUNNING
    exit_code: int = 1
    message: str = ""
    error: str = ""
    counters: dict[str, int | float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # for --json; not stored

    @property
    def unit(self) -> str:
        """The job, or job:shard, a record is about (lock and status keys use it)."""
        return f"{self.job}:{self.shard}" if self.shard else self.job

    def to_json(self, *, with_details: bool = True) -> dict[str, Any]:
        # Shallow on purpose: asdict() would deep-copy the details (maybe large) for nothing.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["outcome"] = str(self.outcome)
        data["counters"] = dict(self.counters)
        if not with_details:
            data.pop("details")
        return data


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def status_key(prefix: str, unit: str) -> str:
    return f"{prefix}job:status:{unit}"


def history_key(prefix: str, unit: str) -> str:
    return f"{prefix}job:history:{unit}"


def record_start(r: redis.Redis, prefix: str, rec: RunRecord) -> None:
    r.hset(status_key(prefix, rec.unit), mapping=_flat(rec))


def record_end(r: redis.Redis, prefix: str, rec: RunRecord, history_size: int) -> None:
    fields = _flat(rec)
    if rec.outcome in (Outcome.SUCCESS, Outcome.NOTHING_TO_DO):  # a dry run is no success
        fields["last_success_at"] = rec.ended_at
    _push(r, prefix, rec, history_size, fields)


def record_skip(r: redis.Redis, prefix: str, rec: RunRecord, history_size: int) -> None:
    fields: Fields = {"last_skipped_at": rec.ended_at, "skipped_by": rec.run_id}
    _push(r, prefix, rec, history_size, fields)


# Keys typed Any: redis-py's stubs want a Mapping keyed by its own (invariant) key union.
Fields = dict[Any, str]


def _push(r: redis.Redis, prefix: str, rec: RunRecord, keep: int, fields: Fields) -> None:
    hkey = history_key(prefix, rec.unit)
    pipe = r.pipeline(transaction=True)
    pipe.hset(status_key(prefix, rec.unit), mapping=fields)
    pipe.lpush(hkey, json.dumps(rec.to_json(with_details=False)))
    pipe.ltrim(hkey, 0, keep - 1)
    pipe.execute()


def _flat(rec: RunRecord) -> Fields:
    data = rec.to_json(with_details=False)
    data["counters"] = json.dumps(rec.counters)
    return {k: "" if v is None else str(v) for k, v in data.items()}


def read_statuses(r: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every job:status:* hash (shards included), sorted by unit."""
    out = []
    for key in r.scan_iter(match=status_key(prefix, "*"), count=500):
        raw = r.hgetall(key)
        if not raw:
            continue
        data = {_s(k): _s(v) for k, v in raw.items()}
        data["counters"] = json.loads(data.get("counters") or "{}")
        data["unit"] = _s(key)[len(status_key(prefix, "")) :]
        out.append(data)
    return sorted(out, key=lambda d: d["unit"])


def read_history(r: redis.Redis, prefix: str, unit: str, limit: int) -> list[dict[str, Any]]:
    return [json.loads(item) for item in r.lrange(history_key(prefix, unit), 0, limit - 1)]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
