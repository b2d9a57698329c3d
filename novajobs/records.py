"""Run records in Redis, and the one schema they are read back in.

Per unit (a job, or ``job:shard``):

- ``job:status:{unit}``, a hash: the fields of the last *real* run (the one running now,
  or the last one that ended), plus ``last_success_at``, ``last_skipped_at``,
  ``skipped_by``, ``skips`` (runs skipped since that run started), ``seen_at`` (the
  run's heartbeat) and ``attempt`` (JSON: a later dry run or usage error, kept beside
  the real run instead of replacing it).
- ``job:history:{unit}``, a capped list of JSON entries, newest first. Consecutive
  skipped runs share one entry whose ``skips`` counts them.

The braces are literal: a Redis Cluster hash tag, so a unit's keys share one slot and
one MULTI (or script) can update both. ``migrate_legacy_keys`` renames the keys of
novajobs versions before the tags (``job:status:<unit>``).

``entry()`` turns either form into the documented schema (docs: "Run records"): the
same keys for ``status --json``, ``history --json`` and the console's API; numbers as
numbers, ``null`` for nothing, and always ``job``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from novajobs.conversions import text
from novajobs.errors import LockLost, Outcome

if TYPE_CHECKING:
    import redis

    from novajobs.fencing import Fence


@dataclass
class RunRecord:
    job: str
    run_id: str
    host: str
    pid: int
    shard: str | None = None  # "2-of-3"
    fence: int | None = None  # the lock's fencing token (novajobs/fencing.py); None: no lock
    started_at: str = ""
    ended_at: str = ""
    duration_ms: int = 0
    outcome: Outcome = Outcome.RUNNING
    exit_code: int = 1
    message: str = ""
    error: str = ""
    counters: dict[str, int | float] = field(default_factory=dict)
    dry_run: bool = False
    lock_key: str | None = None  # the lock this run holds (None: --no-lock)
    warning: str | None = None  # a problem that did not stop the run (its log file)
    details: dict[str, Any] = field(default_factory=dict)  # for --json; not stored

    @property
    def unit(self) -> str:
        """The job, or job:shard, a record is about (lock and status keys use it)."""
        return f"{self.job}:{self.shard}" if self.shard else self.job

    @property
    def is_attempt(self) -> bool:
        """A dry run or a run refused for its arguments: not the job's scheduled work,
        so it never hides the last real run."""
        return self.dry_run or self.outcome is Outcome.USAGE_ERROR

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


# Every key of a unit is built here.
def status_key(prefix: str, unit: str) -> str:
    return f"{prefix}job:status:{{{unit}}}"


def history_key(prefix: str, unit: str) -> str:
    return f"{prefix}job:history:{{{unit}}}"


def unit_of_key(prefix: str, key: bytes | str) -> str:
    """``<prefix>job:status:{gc-files:2-of-3}`` -> ``gc-files:2-of-3``."""
    return text(key)[len(status_key(prefix, "")) - 1 : -1]


def log_key(prefix: str, unit: str, run_id: str) -> str:
    return f"{prefix}job:log:{unit}:{run_id}"


def details_key(prefix: str, unit: str, run_id: str) -> str:
    return f"{prefix}job:details:{unit}:{run_id}"


def stop_key(prefix: str, unit: str) -> str:
    return f"{prefix}job:stop:{unit}"


# Keys typed Any: redis-py's stubs want a Mapping keyed by its own (invariant) key union.
Fields = dict[Any, str]
_RUN_FIELDS = [f.name for f in fields(RunRecord) if f.name != "details"]


def record_start(r: redis.Redis, prefix: str, rec: RunRecord, fence: Fence | None = None) -> None:
    """Write the status of a run that starts; refused (LockLost) behind a newer fence."""
    from novajobs.fencing import FencedTransaction, Refused

    key = status_key(prefix, rec.unit)
    if rec.is_attempt:
        r.hset(key, "attempt", json.dumps(rec.to_json(with_details=False)))
        return
    # Kept in case this run turns out to be an attempt (a usage error found mid-run).
    previous = r.hmget(key, _RUN_FIELDS)
    stash = {name: text(v) for name, v in zip(_RUN_FIELDS, previous, strict=True) if v is not None}
    pipe = FencedTransaction(r, fence)
    pipe.hset(key, mapping={**_flat(rec), "previous": json.dumps(stash), "skips": "0",
                            "seen_at": rec.started_at})
    pipe.hdel(key, "attempt")
    try:
        pipe.execute()
    except Refused as exc:
        raise LockLost(f"another run took the lock {rec.lock_key} before this one started "
                       f"(fence {exc.seen} is newer than this run's {rec.fence})") from None


def record_end(
    r: redis.Redis, prefix: str, rec: RunRecord, history_size: int, fence: Fence | None = None
) -> bool:
    """Record the run. False when a newer fence owns the status: a run that lost its lock
    only goes into the history, and the status stays the newer run's."""
    from novajobs.fencing import FencedTransaction, Refused

    key, hkey = status_key(prefix, rec.unit), history_key(prefix, rec.unit)
    pipe = FencedTransaction(r, fence)
    if rec.is_attempt:
        pipe.hset(key, "attempt", json.dumps(rec.to_json(with_details=False)))
        if not rec.dry_run:  # started as a real run: put the real one back
            _restore_previous(r, pipe, key)
    else:
        fields = _flat(rec)
        if rec.outcome in (Outcome.SUCCESS, Outcome.NOTHING_TO_DO):
            fields["last_success_at"] = rec.ended_at
        pipe.hset(key, mapping=fields)
    entry = json.dumps(rec.to_json(with_details=False))
    pipe.lpush(hkey, entry)
    pipe.ltrim(hkey, 0, history_size - 1)
    try:
        pipe.execute()
    except Refused:
        history = FencedTransaction(r, None)
        history.lpush(hkey, entry)
        history.ltrim(hkey, 0, history_size - 1)
        history.execute()
        return False
    return True


def _restore_previous(r: redis.Redis, pipe: Any, key: str) -> None:
    raw = r.hget(key, "previous")
    previous = json.loads(raw) if raw else {}
    if previous:
        pipe.hset(key, mapping=previous)
    else:  # no real run before this one: the job has still never run
        pipe.hdel(key, *_RUN_FIELDS)


# KEYS: history, status. ARGV: the skip's entry (JSON), history size, ended_at, run_id.
# A skip right after a skip updates that entry (count, last time) instead of adding one:
# a stuck lock on a job that runs every minute must not push the real runs out.
_SKIP = """
local head = redis.call('lindex', KEYS[1], 0)
local merged = false
if head then
  local ok, old = pcall(cjson.decode, head)
  if ok and type(old) == 'table' and old['outcome'] == 'skipped' then
    local new = cjson.decode(ARGV[1])
    new['skips'] = (tonumber(old['skips']) or 1) + 1
    new['started_at'] = old['started_at']
    redis.call('lset', KEYS[1], 0, cjson.encode(new))
    merged = true
  end
end
if not merged then
  redis.call('lpush', KEYS[1], ARGV[1])
  redis.call('ltrim', KEYS[1], 0, tonumber(ARGV[2]) - 1)
end
redis.call('hset', KEYS[2], 'last_skipped_at', ARGV[3], 'skipped_by', ARGV[4])
return redis.call('hincrby', KEYS[2], 'skips', 1)
"""


def record_skip(r: redis.Redis, prefix: str, rec: RunRecord, history_size: int) -> int:
    """Count a skipped run; returns the skips since the last real run started."""
    data = {**rec.to_json(with_details=False), "skips": 1}
    keys = (history_key(prefix, rec.unit), status_key(prefix, rec.unit))
    return int(r.eval(_SKIP, 2, *keys, json.dumps(data), history_size, rec.ended_at,
                      rec.run_id))


def touch(r: redis.Redis, prefix: str, unit: str, seen_at: str,
          fence: Fence | None = None) -> None:
    """The run's heartbeat: it is alive now (``status`` tells a dead run by this). A run
    whose lock another run took leaves that run's status alone (its fence is older)."""
    from novajobs.fencing import FencedTransaction, Refused

    pipe = FencedTransaction(r, fence)
    pipe.hset(status_key(prefix, unit), "seen_at", seen_at)
    with contextlib.suppress(Refused):  # its next write is refused too: exit 4
        pipe.execute()


def _flat(rec: RunRecord) -> Fields:
    data = rec.to_json(with_details=False)
    data["counters"] = json.dumps(rec.counters)
    return {k: "" if v is None else str(v) for k, v in data.items()}


# --- reading, in one schema -------------------------------------------------------------

INTS = ("pid", "duration_ms", "exit_code", "skips", "fence")
TEXTS = ("shard", "run_id", "host", "started_at", "ended_at", "outcome", "message", "error",
         "warning", "lock_key")
STATUS_TEXTS = ("seen_at", "last_success_at", "last_skipped_at", "skipped_by")


def entry(data: dict[str, Any], unit: str | None = None) -> dict[str, Any]:
    """A record in the documented schema, from a history item or a status hash."""
    unit = unit or str(data.get("unit") or _unit_of(data))
    job, _, shard = unit.partition(":")
    out: dict[str, Any] = {"job": data.get("job") or job, "unit": unit}
    for name in TEXTS:
        out[name] = _text(data.get(name))
    out["shard"] = out["shard"] or (shard or None)
    for name in INTS:
        out[name] = _int(data.get(name))
    out["skips"] = out["skips"] or 0
    if out["outcome"] == str(Outcome.RUNNING):  # not ended: its exit code is not known yet
        out["exit_code"] = out["duration_ms"] = None
    out["dry_run"] = str(data.get("dry_run")).lower() == "true"
    counters = data.get("counters") or {}
    out["counters"] = json.loads(counters) if isinstance(counters, str) else dict(counters)
    return out


def read_status(r: redis.Redis, prefix: str, unit: str) -> dict[str, Any] | None:
    raw = r.hgetall(status_key(prefix, unit))
    return status_entry({text(k): text(v) for k, v in raw.items()}, unit) if raw else None


def status_entry(data: dict[str, str], unit: str) -> dict[str, Any]:
    """The last real run (its fields may all be null: a job that was only skipped or only
    dry-run), plus what the status hash adds to it."""
    out = entry(data, unit)
    for name in STATUS_TEXTS:
        out[name] = _text(data.get(name))
    out["seen_at"] = out["seen_at"] or out["ended_at"] or out["started_at"]
    attempt = data.get("attempt")
    out["attempt"] = entry(json.loads(attempt), unit) if attempt else None
    return out


def read_statuses(r: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every job:status:{*} hash (shards included; every primary of a cluster), by unit."""
    out = []
    for key in r.scan_iter(match=status_key(prefix, "*"), count=500):
        unit = unit_of_key(prefix, key)
        if (status := read_status(r, prefix, unit)) is not None:
            out.append(status)
    return sorted(out, key=lambda d: str(d["unit"]))


def read_history(r: redis.Redis, prefix: str, unit: str, limit: int) -> list[dict[str, Any]]:
    items = r.lrange(history_key(prefix, unit), 0, limit - 1)
    return [entry(json.loads(item), unit) for item in items]


def find_run(r: redis.Redis, prefix: str, unit: str, run_id: str,
             limit: int = 1000) -> dict[str, Any] | None:
    """One run by id (or a unique prefix of it): the running one or one in the history."""
    current = read_status(r, prefix, unit)
    candidates = [current] if current else []
    candidates += read_history(r, prefix, unit, limit)
    for run in candidates:
        if run["run_id"] and str(run["run_id"]).startswith(run_id):
            return run
    return None


def _unit_of(data: dict[str, Any]) -> str:
    job, shard = str(data.get("job") or "?"), data.get("shard")
    return f"{job}:{shard}" if shard else job


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def migrate_legacy_keys(r: redis.Redis, prefix: str, history_size: int) -> list[str]:
    """Give the run records of novajobs before hash tags (``job:status:<unit>``,
    ``job:history:<unit>``) their tagged names; returns the units moved.

    A unit that already has tagged keys (it ran since the upgrade) keeps its status;
    its history gains the older entries after its own. For a single Redis: records
    written before the tags never lived on a cluster. Safe to run again.
    """
    legacy = f"{prefix}job:status:"
    units = sorted(
        text(k)[len(legacy) :] for k in r.scan_iter(match=legacy + "*", count=500)
        if not text(k)[len(legacy) :].startswith("{")
    )
    for unit in units:
        old_status, old_history = legacy + unit, f"{prefix}job:history:{unit}"
        new_history = history_key(prefix, unit)
        older = r.lrange(old_history, 0, history_size - 1)
        pipe = r.pipeline(transaction=True)
        if r.exists(status_key(prefix, unit)):
            pipe.delete(old_status)
        else:
            pipe.rename(old_status, status_key(prefix, unit))
        if older:
            pipe.rpush(new_history, *older)
            pipe.ltrim(new_history, 0, history_size - 1)
        pipe.delete(old_history)
        pipe.execute()
    return units


