"""Where drain-stream's entries come from, in this order:

1. this consumer's own pending entries (``XREADGROUP ... 0``), once, at the start of a
   run: what an earlier run under the same name left (stopped by an outage, a missing
   table, a signal, or killed). The lock is per consumer, so nothing else handles them.
   No other read happens until they are all read, so the scan's cursor is exact;
2. entries other consumers left pending longer than ``stream_claim_idle_sec``
   (``XAUTOCLAIM``; an entry given back after an outage is claimable at once);
3. new entries (``>``), by stream priority.

Redelivered entries (1 and 2) carry a delivery count: one delivered too often without
any outcome (its consumers died with it, e.g. killed by it) is handed back as
``exhausted`` for the DLQ instead of going round forever. Their counts before this
delivery are kept so a run that must leave them pending can give the delivery back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.conversions import text
from novajobs.redisconn import is_cluster
from novajobs.streams.handlers import StreamPlan
from novajobs.streams.keys import slot

if TYPE_CHECKING:
    from novajobs.context import JobContext

Entry = tuple[Any, Any]  # (id, fields) as redis-py returns them


@dataclass
class Taken:
    entries: list[Entry] = field(default_factory=list)  # to handle
    exhausted: list[tuple[Entry, int]] = field(default_factory=list)  # (entry, deliveries)
    vanished: list[str] = field(default_factory=list)  # pending ids no longer in the stream


class Reader:
    def __init__(self, ctx: JobContext, plans: list[StreamPlan]) -> None:
        s = ctx.settings
        self.ctx, self.plans = ctx, plans
        self.group, self.consumer = s.stream_group, s.stream_consumer
        self.resume_cursor: dict[str, str | None] = {p.name: "0" for p in plans}
        self.claim_cursor = {p.name: "0-0" for p in plans}
        self.next_claim = dict.fromkeys(self.claim_cursor, 0.0)  # monotonic
        self.redelivered: dict[tuple[str, str], int] = {}  # deliveries before this one

    @property
    def resuming(self) -> bool:
        """Own pending entries are still being read: no other read until they are."""
        return any(cursor is not None for cursor in self.resume_cursor.values())

    def pending(self, plan: StreamPlan, count: int) -> Taken:
        """Own pending entries first, then other consumers' idle ones every half
        ``stream_claim_idle_sec`` (at once when a scan stopped at our capacity)."""
        if count <= 0:
            return Taken()
        if self.resume_cursor[plan.name] is not None:
            taken = self._resume(plan, count)
            if self.resume_cursor[plan.name] is not None:
                return taken
        now = time.monotonic()
        if self.claim_cursor[plan.name] == "0-0":
            if now < self.next_claim[plan.name]:
                return Taken()
            every = max(1.0, self.ctx.settings.stream_claim_idle_sec / 2)
            self.next_claim[plan.name] = now + every
        return self._reclaim(plan, count)

    def new(self, plan: StreamPlan, count: int) -> list[Entry]:
        key = plan.keys.stream
        reply: Any = self.ctx.retry(
            lambda: self.ctx.redis.xreadgroup(self.group, self.consumer, {key: ">"}, count=count),
            f"read {plan.name}",
        )
        return list(reply[0][1]) if reply else []

    def wait(self, count: int) -> list[tuple[StreamPlan, list[Entry]]]:
        """Block (drain_block_ms) for new entries on every stream at once: one read per
        Redis Cluster slot the streams are in (one read can only name one slot's keys),
        the blocking time shared between them."""
        cluster = is_cluster(self.ctx.redis)
        by_slot: dict[int, dict[str, StreamPlan]] = {}
        for plan in self.plans:
            group = slot(plan.keys.stream) if cluster else 0
            by_slot.setdefault(group, {})[plan.keys.stream] = plan
        block = max(1, self.ctx.settings.drain_block_ms // len(by_slot))
        for by_key in by_slot.values():
            reply: Any = self.ctx.retry(
                lambda k=by_key: self.ctx.redis.xreadgroup(  # type: ignore[misc]
                    self.group, self.consumer, dict.fromkeys(k, ">"), count=count, block=block
                ),
                "wait for stream entries",
            )
            if reply:
                return [(by_key[text(key)], list(entries)) for key, entries in reply]
        return []

    # -- redeliveries ------------------------------------------------------------------------
    def _resume(self, plan: StreamPlan, count: int) -> Taken:
        key, cursor = plan.keys.stream, self.resume_cursor[plan.name] or "0"
        reply: Any = self.ctx.retry(
            lambda: self.ctx.redis.xreadgroup(self.group, self.consumer, {key: cursor},
                                              count=count),
            f"read own pending entries of {plan.name}",
        )
        rows = list(reply[0][1]) if reply else []
        self.resume_cursor[plan.name] = text(rows[-1][0]) if rows else None
        taken = self._redelivered(plan, rows)
        if rows:
            self.ctx.log.info("resuming own pending entries", stream=plan.name, entries=len(rows))
        return taken

    def _reclaim(self, plan: StreamPlan, count: int) -> Taken:
        key = plan.keys.stream
        idle_ms = int(self.ctx.settings.stream_claim_idle_sec * 1000)
        start = self.claim_cursor[plan.name]
        reply: Any = self.ctx.retry(
            lambda: self.ctx.redis.xautoclaim(key, self.group, self.consumer, idle_ms, start,
                                              count),
            f"reclaim {plan.name}",
        )
        self.claim_cursor[plan.name] = text(reply[0])
        rows = [(i, f) for i, f in reply[1] if f is not None]  # deleted ones: Redis drops them
        if rows:
            self.ctx.log.info("reclaimed pending entries", stream=plan.name, entries=len(rows))
        return self._redelivered(plan, rows)

    def _redelivered(self, plan: StreamPlan, rows: list[Entry]) -> Taken:
        taken = Taken()
        live = [row for row in rows if row[1] is not None]
        taken.vanished = [text(i) for i, f in rows if f is None]
        counts = self._deliveries(plan, [text(i) for i, _ in live])
        limit = self.ctx.settings.stream_max_retries + 2
        for (raw_id, raw), delivered in zip(live, counts, strict=True):
            self.redelivered[(plan.name, text(raw_id))] = max(delivered - 1, 0)
            if delivered > limit:
                taken.exhausted.append(((raw_id, raw), delivered))
            else:
                taken.entries.append((raw_id, raw))
        return taken

    def _deliveries(self, plan: StreamPlan, ids: list[str]) -> list[int]:
        """Times each entry has been delivered, this delivery included."""
        if not ids:
            return []
        key = plan.keys.stream

        def fetch() -> list[Any]:
            pipe = self.ctx.redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.xpending_range(key, self.group, entry_id, entry_id, 1)
            return list(pipe.execute())

        replies = self.ctx.retry(fetch, f"read delivery counts of {plan.name}")
        return [int(r[0]["times_delivered"]) if r else 1 for r in replies]
