"""The retry sorted set (``retry:{stream}``, see keys.py) and promote-retries' atomic move.

A failed entry is written to the retry set as JSON scored by its due time (Unix
seconds) and acked, in one MULTI (settle.py); promote-retries moves due ones back into
the stream with a Lua script, so each is either still in the set or already in the
stream, never both and never neither. The member holds the complete field set the
promoted entry will have (built by entries.with_meta), so the script copies it as is.

Bounded: every member's due time is at most ``stream_retry_max_sec`` ahead, and
promote-retries (every minute) moves it back or, past ``stream_max_retries``, the
next failure sends it to the DLQ; so the set holds only the failures of the last
``stream_retry_max_sec`` (an hour by default). Its size and next due time are in every
run's lag figures; an alert fires when due members are not moved (promote-retries down).
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

from novajobs.streams.entries import meta, with_meta
from novajobs.streams.handlers import Message

if TYPE_CHECKING:
    import redis

    from novajobs.fencing import Fence
    from novajobs.settings import Settings
    from novajobs.streams.keys import StreamKeys


def retry_delay(failures: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``failures`` (1 = after the first failure):
    initial * multiplier^(failures-1), jittered by +/- jitter, capped."""
    s = settings
    base = s.stream_retry_initial_sec * s.stream_retry_multiplier ** max(failures - 1, 0)
    jitter = (rng or random).uniform(1 - s.stream_retry_jitter, 1 + s.stream_retry_jitter)
    return float(min(s.stream_retry_max_sec, base * jitter))


def retry_member(message: Message, failures: int, error: str) -> str:
    """The sorted-set member: ``entry``, the promoted entry's fields (as JSON strings
    only: Lua's cjson would turn numbers into doubles), and for people ``id``,
    ``attempts`` and ``error``."""
    fields = with_meta(message.fields, meta(message.id, failures))
    return json.dumps(
        {"id": message.id, "attempts": str(failures), "error": error,
         "entry": [item for pair in fields.items() for item in pair]},
        ensure_ascii=False,
        separators=(",", ":"),
    )


# KEYS[1] retry set, KEYS[2] stream, KEYS[3] DLQ; ARGV[1] now, ARGV[2] batch size.
# One script call moves one batch atomically: a member leaves the set only in the same
# step that adds it to the stream, so dying halfway loses and duplicates nothing.
# Members written before `entry` existed carry `fields` (without meta) plus `id` and
# `attempts`; a member that cannot be read goes to the DLQ verbatim.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local ok, item = pcall(cjson.decode, member)
  local args = nil
  if ok and type(item) == 'table' and type(item.entry) == 'table' and #item.entry > 0 then
    args = {KEYS[2], '*'}
    for _, value in ipairs(item.entry) do args[#args + 1] = tostring(value) end
  elseif ok and type(item) == 'table' and type(item.id) == 'string'
     and type(item.fields) == 'table' and #item.fields > 0 then
    args = {KEYS[2], '*'}
    for _, value in ipairs(item.fields) do args[#args + 1] = tostring(value) end
    for _, pair in ipairs({{'novajobs:id', item.id}, {'novajobs:attempts', item.attempts}}) do
      args[#args + 1] = pair[1]
      args[#args + 1] = tostring(pair[2])
    end
  end
  if args then
    redis.call('XADD', unpack(args))
  else
    redis.call('XADD', KEYS[3], '*', 'novajobs:raw', member,
               'novajobs:error', 'unreadable retry entry', 'novajobs:attempts', '0')
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


def promote_due(r: redis.Redis, keys: StreamKeys, now: float, batch: int,
                fence: Fence | None = None) -> int:
    """Move one batch of due retries back into the stream; returns how many. Behind the
    lock's fence (novajobs/fencing.py): refused once another run took it."""
    from novajobs.fencing import FencedScript

    return int(FencedScript.of(r, _PROMOTE)(fence, [keys.retry, keys.stream, keys.dlq],
                                            [repr(now), batch]))


def pending_retries(r: redis.Redis, keys: StreamKeys, now: float) -> tuple[int, int]:
    """(due now, scheduled later) in the retry set."""
    pipe = r.pipeline(transaction=False)
    pipe.zcount(keys.retry, "-inf", repr(now))
    pipe.zcard(keys.retry)
    due, total = pipe.execute()
    return int(due), int(total) - int(due)
