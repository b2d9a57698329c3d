"""Every write drain-stream makes to a stream's keys, in three functions. The first two
are fenced (novajobs/fencing.py: one script that writes nothing once another run took
the lock); trimming needs no fence: it is computed from the groups' state in the same
script, so a stale run can only trim what every group is done with anyway.

- ``write_round``: the outcomes of a settle round, per stream in one atomic step: retries
  into ``retry:{stream}`` (ZADD), dead letters into ``dlq:{stream}`` (XADD) and the
  XACKs of all of them and of the successes. All of a stream's round or none, so an
  entry is never both acked and lost, nor retried twice. (Per stream: a stream and its
  companions share a Redis Cluster slot, two streams need not.)
- ``give_back``: entries a stopping run leaves pending without having tried them (or
  whose store was down) get back the delivery count they had and an idle time that
  lets any consumer claim them at once (``XCLAIM ... IDLE ... RETRYCOUNT ... JUSTID``):
  an outage is not held against the entry.
- ``trim_acked``: after a drain, ``XTRIM MINID`` up to the oldest entry any consumer
  group of the stream still needs (its oldest pending entry, or the first after its
  last delivered one), computed and applied in one script: acked entries do not pile
  up, and nothing another group has not read (or acked) is ever trimmed. A stream
  without groups is left alone. (Redis 8.2's XACKDEL would ack and delete at once, but
  only for one group's view; MINID over every group works on Redis 6.2+.)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.fencing import FencedTransaction

if TYPE_CHECKING:
    from collections.abc import Mapping

    import redis

    from novajobs.fencing import Fence
    from novajobs.streams.keys import StreamKeys


ACK_CHUNK = 1000  # ids per XACK command of a round


@dataclass
class Round:
    """Writes of one settle round."""

    acks: dict[str, list[str]] = field(default_factory=dict)  # stream -> entry ids
    retries: list[tuple[str, str, float]] = field(default_factory=list)  # stream, member, due
    dead: list[tuple[str, dict[Any, Any]]] = field(default_factory=list)  # stream, fields

    def __bool__(self) -> bool:
        return bool(self.acks or self.retries or self.dead)

    def ack(self, stream: str, entry_id: str) -> None:
        self.acks.setdefault(stream, []).append(entry_id)


def write_round(r: redis.Redis, keys: Mapping[str, StreamKeys], group: str, writes: Round,
                fence: Fence | None = None) -> None:
    """Raises fencing.Refused (nothing of that stream written) once another run took
    the lock."""
    steps = {stream: FencedTransaction(r, fence) for stream in writes.acks}
    for stream, member, due in writes.retries:
        steps[stream].command("zadd", keys[stream].retry, repr(due), member)
    for stream, fields in writes.dead:
        steps[stream].command("xadd", keys[stream].dlq, "*",
                              *(x for kv in fields.items() for x in kv))
    for stream, ids in writes.acks.items():
        for i in range(0, len(ids), ACK_CHUNK):  # (Lua's unpack takes some 8000 at most)
            steps[stream].command("xack", keys[stream].stream, group, *ids[i : i + ACK_CHUNK])
    for step in steps.values():
        step.execute()


# KEYS[1] stream. Returns the number of entries trimmed.
_TRIM_ACKED = """
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok or #groups == 0 then return 0 end
local function num_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return num_less(am, bm) end
  return num_less(as, bs)
end
local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local need
  if info['pending'] > 0 then
    need = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local ms, seq = string.match(info['last-delivered-id'], '^(%d+)-(%d+)$')
    if #seq > 12 then return 0 end  -- a hand-made huge sequence: Lua numbers would round
    need = ms .. '-' .. (tonumber(seq) + 1)
  end
  if floor == nil or less(need, floor) then floor = need end
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
"""


def trim_acked(r: redis.Redis, keys: StreamKeys) -> int:
    """Trim the entries every consumer group is done with; returns how many."""
    return int(r.eval(_TRIM_ACKED, 1, keys.stream))


def give_back(
    r: redis.Redis, key: str, group: str, consumer: str, before: dict[str, int], idle_ms: int,
    fence: Fence | None = None,
) -> None:
    """``before``: entry id -> its delivery count before this run delivered it."""
    by_count: dict[int, list[Any]] = defaultdict(list)
    for entry_id, count in before.items():
        by_count[count].append(entry_id)
    step = FencedTransaction(r, fence)
    for count, ids in by_count.items():
        for i in range(0, len(ids), ACK_CHUNK):
            step.command("xclaim", key, group, consumer, 0, *ids[i : i + ACK_CHUNK],
                         "IDLE", idle_ms, "RETRYCOUNT", count, "JUSTID")
    step.execute()
