"""The retry sorted set ``retry:{stream}`` and the dead-letter stream ``dlq:{stream}``.

A failed entry is written to ``retry:{stream}`` as JSON scored by its due time (Unix
seconds) and acked, in one MULTI; promote-retries moves due ones back into the stream
with a Lua script, so each is either still in the set or already in the stream, never
both and never neither. Past ``stream_max_retries`` it goes to ``dlq:{stream}`` with
its original fields plus ``novajobs:error``, ``novajobs:attempts``,
``novajobs:failed_at`` and ``novajobs:id`` (the id it first had, kept across retries
and replays so an idempotent handler recognises it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from novajobs.streams.handlers import META_ATTEMPTS, META_ID, META_PREFIX, Message

if TYPE_CHECKING:
    import redis

    from novajobs.fencing import Fence
    from novajobs.settings import Settings

META_ERROR = "novajobs:error"
META_FAILED_AT = "novajobs:failed_at"
META_RAW = "novajobs:raw"  # a retry member that could not be read back, kept verbatim


def retry_key(prefix: str, stream: str) -> str:
    return f"{prefix}retry:{stream}"


def dlq_key(prefix: str, stream: str) -> str:
    return f"{prefix}dlq:{stream}"


class PoisonEntry(Exception):
    """A stream entry that cannot be decoded into a Message: straight to the DLQ."""


def decode_entry(stream: str, entry_id: str, raw: Mapping[bytes, bytes]) -> Message:
    try:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
    except UnicodeDecodeError as exc:
        raise PoisonEntry(f"fields are not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    first_id = fields.pop(META_ID, entry_id)
    attempts_text = fields.pop(META_ATTEMPTS, "0")
    if not attempts_text.isdigit():
        raise PoisonEntry(f"{META_ATTEMPTS} is {attempts_text!r}, not a count")
    for name in [k for k in fields if k.startswith(META_PREFIX)]:
        fields.pop(name)  # e.g. DLQ meta of a replayed entry: not the producer's data
    return Message(stream, first_id, entry_id, fields, int(attempts_text))


def retry_delay(failures: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``failures`` (1 = after the first failure), seed 001:
    initial * multiplier^(failures-1), jittered by +/- jitter, capped."""
    s = settings
    base = s.stream_retry_initial_sec * s.stream_retry_multiplier ** max(failures - 1, 0)
    jitter = (rng or random).uniform(1 - s.stream_retry_jitter, 1 + s.stream_retry_jitter)
    return float(min(s.stream_retry_max_sec, base * jitter))


def retry_member(message: Message, failures: int, error: str) -> str:
    """The sorted-set member: everything needed to put the entry back, as JSON strings only
    (Lua's cjson would turn numbers into doubles)."""
    flat = [item for pair in message.fields.items() for item in pair]
    return json.dumps(
        {"id": message.id, "attempts": str(failures), "fields": flat, "error": error},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def dlq_fields(
    first_id: str, fields: Mapping[Any, Any], failures: int, error: str, now: float
) -> dict[Any, Any]:
    failed_at = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    return {
        **fields,
        META_ID: first_id,
        META_ATTEMPTS: str(failures),
        META_ERROR: error[:2000],
        META_FAILED_AT: failed_at,
    }


# -- promote due retries ----------------------------------------------------------------
# KEYS[1] retry zset, KEYS[2] stream, KEYS[3] dlq; ARGV[1] now, ARGV[2] batch size.
# One script call moves one batch atomically: a member leaves the set only in the same
# step that adds it to the stream, so dying halfway loses and duplicates nothing.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local ok, item = pcall(cjson.decode, member)
  if ok and type(item) == 'table' and type(item.id) == 'string'
     and type(item.fields) == 'table' then
    local args = {KEYS[2], '*'}
    for _, value in ipairs(item.fields) do args[#args + 1] = tostring(value) end
    args[#args + 1] = 'novajobs:id'
    args[#args + 1] = item.id
    args[#args + 1] = 'novajobs:attempts'
    args[#args + 1] = tostring(item.attempts)
    redis.call('XADD', unpack(args))
  else
    redis.call('XADD', KEYS[3], '*', 'novajobs:raw', member,
               'novajobs:error', 'unreadable retry entry', 'novajobs:attempts', '0')
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


def promote_due(
    r: redis.Redis, prefix: str, stream: str, now: float, batch: int, fence: Fence | None = None
) -> int:
    """Move one batch of due retries of ``stream`` back into it; returns how many.
    Behind the lock's fence (novajobs/fencing.py): refused once another run took it."""
    from novajobs.fencing import FencedScript

    keys = [retry_key(prefix, stream), prefix + stream, dlq_key(prefix, stream)]
    return int(FencedScript(r, _PROMOTE)(fence, keys, [repr(now), batch]))


def pending_retries(r: redis.Redis, prefix: str, stream: str, now: float) -> tuple[int, int]:
    """(due now, scheduled later) in ``retry:{stream}``."""
    key = retry_key(prefix, stream)
    pipe = r.pipeline(transaction=False)
    pipe.zcount(key, "-inf", repr(now))
    pipe.zcard(key)
    due, total = pipe.execute()
    return int(due), int(total) - int(due)


# -- the dead-letter queue ----------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetter:
    id: str  # the DLQ entry's own id
    first_id: str
    attempts: int
    failed_at: str
    error: str
    fields: dict[str, str]  # the producer's fields (bytes shown with replacement chars)


def list_dlq(
    r: redis.Redis, prefix: str, stream: str, count: int, start: str = "-"
) -> list[DeadLetter]:
    rows: Any = r.xrange(dlq_key(prefix, stream), min=start, max="+", count=count)
    return [_dead_letter(_text(entry_id), raw) for entry_id, raw in rows]


def dlq_length(r: redis.Redis, prefix: str, stream: str) -> int:
    return int(r.xlen(dlq_key(prefix, stream)))


def _dead_letter(entry_id: str, raw: Mapping[bytes, bytes]) -> DeadLetter:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    attempts = fields.pop(META_ATTEMPTS, "0")
    return DeadLetter(
        id=entry_id,
        first_id=fields.pop(META_ID, ""),
        attempts=int(attempts) if attempts.isdigit() else 0,
        failed_at=fields.pop(META_FAILED_AT, ""),
        error=fields.pop(META_ERROR, ""),
        fields=fields,
    )


# KEYS[1] dlq, KEYS[2] stream; ARGV: DLQ entry ids. Each entry goes back to the stream
# with its original fields and first id (attempts start over) and leaves the DLQ in the
# same atomic step. Returns {replayed, missing, unreplayable}.
_REPLAY = """
local replayed, missing, bad = 0, 0, 0
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then
    missing = missing + 1
  else
    local fields = found[1][2]
    local args = {KEYS[2], '*'}
    local data = 0
    for j = 1, #fields, 2 do
      local name = fields[j]
      if string.sub(name, 1, 9) ~= 'novajobs:' then
        data = data + 1
        args[#args + 1] = name
        args[#args + 1] = fields[j + 1]
      elseif name == 'novajobs:id' then
        args[#args + 1] = name
        args[#args + 1] = fields[j + 1]
      end
    end
    if data == 0 then
      bad = bad + 1
    else
      redis.call('XADD', unpack(args))
      redis.call('XDEL', KEYS[1], id)
      replayed = replayed + 1
    end
  end
end
return {replayed, missing, bad}
"""


@dataclass
class ReplayResult:
    replayed: int = 0
    missing: int = 0  # ids not (or no longer) in the DLQ
    unreplayable: int = 0  # entries without producer fields (an unreadable retry member)


def replay_dlq(
    r: redis.Redis, prefix: str, stream: str, ids: Sequence[str] = (), batch: int = 200
) -> ReplayResult:
    """Put DLQ entries back into the stream: ``ids``, or all there are now."""
    keys = [dlq_key(prefix, stream), prefix + stream]
    result = ReplayResult()
    for chunk in _chunks(list(ids), batch) if ids else _all_ids(r, keys[0], batch):
        replayed, missing, bad = r.eval(_REPLAY, 2, *keys, *chunk)
        result.replayed += int(replayed)
        result.missing += int(missing)
        result.unreplayable += int(bad)
    return result


def purge_dlq(r: redis.Redis, prefix: str, stream: str, ids: Sequence[str] = ()) -> int:
    """Delete DLQ entries: ``ids``, or every entry there is now (not ones added meanwhile)."""
    key = dlq_key(prefix, stream)
    if ids:
        return int(r.xdel(key, *ids))
    last: Any = r.xrevrange(key, count=1)
    if not last:
        return 0
    ms, _, seq = _text(last[0][0]).partition("-")
    return int(r.xtrim(key, minid=f"{ms}-{int(seq) + 1}", approximate=False))


def _all_ids(r: redis.Redis, key: str, batch: int) -> Any:
    """DLQ ids up to the last one present at the start, in batches."""
    last: Any = r.xrevrange(key, count=1)
    if not last:
        return
    end = _text(last[0][0])
    start = "-"
    while True:
        rows: Any = r.xrange(key, min=start, max=end, count=batch)
        if not rows:
            return
        ids = [_text(entry_id) for entry_id, _ in rows]
        yield ids
        if ids[-1] == end:
            return
        start = "(" + ids[-1]


def _chunks(items: list[str], size: int) -> Any:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
