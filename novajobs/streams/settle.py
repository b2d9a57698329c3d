"""Every write drain-stream makes to a stream's keys, in two functions, each one fenced
script (novajobs/fencing.py: refused, writing nothing, once another run took the lock):

- ``write_round``: the outcomes of a settle round in one MULTI/EXEC: retries into
  ``retry:{stream}`` (ZADD), dead letters into ``dlq:{stream}`` (XADD) and the XACKs of
  all of them and of the successes. All of a round or none, so an entry is never both
  acked and lost, nor retried twice.
- ``give_back``: entries a stopping run leaves pending without having tried them (or
  whose store was down) get back the delivery count they had and an idle time that
  lets any consumer claim them at once (``XCLAIM ... IDLE ... RETRYCOUNT ... JUSTID``):
  an outage is not held against the entry.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.fencing import FencedTransaction
from novajobs.streams.queues import dlq_key, retry_key

if TYPE_CHECKING:
    import redis

    from novajobs.fencing import Fence


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


def write_round(
    r: redis.Redis, prefix: str, group: str, writes: Round, fence: Fence | None = None
) -> None:
    """Raises fencing.Refused (nothing written) when another run took the lock."""
    pipe = FencedTransaction(r, fence)
    for stream, member, due in writes.retries:
        pipe.command("zadd", retry_key(prefix, stream), repr(due), member)
    for stream, fields in writes.dead:
        pipe.command("xadd", dlq_key(prefix, stream), "*", *(x for kv in fields.items()
                                                            for x in kv))
    for stream, ids in writes.acks.items():
        pipe.command("xack", prefix + stream, group, *ids)
    pipe.execute()


def give_back(
    r: redis.Redis, key: str, group: str, consumer: str, before: dict[str, int], idle_ms: int,
    fence: Fence | None = None,
) -> None:
    """``before``: entry id -> its delivery count before this run delivered it."""
    by_count: dict[int, list[Any]] = defaultdict(list)
    for entry_id, count in before.items():
        by_count[count].append(entry_id)
    pipe = FencedTransaction(r, fence)
    for count, ids in by_count.items():
        for i in range(0, len(ids), 1000):
            pipe.command("xclaim", key, group, consumer, 0, *ids[i : i + 1000],
                         "IDLE", idle_ms, "RETRYCOUNT", count, "JUSTID")
    pipe.execute()
