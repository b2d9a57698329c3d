"""Where drain-stream's entries come from, in this order:

1. this consumer's own pending entries (``XREADGROUP ... 0``), once, at the start of a
   run: what an earlier run under the same name left (stopped by an outage, a missing
   table, a signal, or killed). The lock is per consumer, so nothing else handles them.
   No other read happens until they are all read, so the scan's cursor is exact;
2. entries other consumers left pending longer than ``stream_claim_idle_sec``
   (``XAUTOCLAIM``; an entry given back after an outage is claimable at once);
3. new entries (``>``), by stream priority.

A full read of new entries may send the next ones at once (``read_ahead``, up to
READS_AHEAD in flight) and read their replies when the entries are wanted: Redis
prepares them while the caller parses, hands out and settles the last batch, instead
of after. (A thread reading ahead cost more than it saved: parsing in a second thread
fights the drain for the GIL.) What a stopping run had read ahead and not taken is
handed back (``take_back``) and given back to the group like any untried entry; a
read ahead that fails is done again the usual way, and whatever it may have delivered
stays pending with this consumer, where the next run reads its own pending entries
first. No blocking wait for new entries starts while a read ahead is unanswered.

Entries are read as text (``ctx.redis_text``: decoded by the reply parser, in C); a
read that met bytes that are not UTF-8 is split into text and poison (``Batch``).

Redelivered entries (1 and 2) carry a delivery count: one delivered too often without
any outcome (its consumers died with it, e.g. killed by it) is handed back as
``exhausted`` for the DLQ instead of going round forever. Their counts before this
delivery are kept so a run that must leave them pending can give the delivery back.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.conversions import text
from novajobs.redisconn import is_cluster, surrogates_seen
from novajobs.retry import describe_error
from novajobs.streams.entries import Entry, Poison, as_bytes, split_invalid
from novajobs.streams.handlers import StreamPlan
from novajobs.streams.keys import slot

if TYPE_CHECKING:
    from novajobs.context import JobContext

READS_AHEAD = 2  # reads in flight before their entries are wanted (1 left Redis idle)


@dataclass
class Batch:
    entries: list[Entry] = field(default_factory=list)  # to handle
    poison: list[Poison] = field(default_factory=list)  # not UTF-8: for the DLQ
    last_id: str | None = None  # of the last entry read (a cursor), None: none was read


@dataclass
class Taken(Batch):
    exhausted: list[tuple[tuple[str, dict[bytes, bytes]], int]] = field(
        default_factory=list)  # ((id, fields as stored), deliveries)
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
        self.ahead = {p.name: Ahead(ctx, p.keys.stream) for p in plans}

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

    def new(self, plan: StreamPlan, count: int) -> Batch:
        """Up to ``count`` new entries; those read ahead instead, when a read was sent
        (then up to its own count: what the caller cannot start now waits in its backlog)."""
        ahead = self.ahead[plan.name]
        if ahead:
            try:
                return ahead.reply()
            except Exception as exc:  # done again below, with the usual retries
                self.ctx.log.info("reading ahead failed", stream=plan.name,
                                  error=describe_error(exc))
        return self._new(plan, count)

    def read_ahead(self, plan: StreamPlan, count: int, left: int) -> None:
        """Send reads of up to ``count`` new entries each, until READS_AHEAD are in flight
        or they ask for ``left`` in all, for ``new`` to take the replies."""
        ahead = self.ahead[plan.name]
        held = sum(1 for a in self.ahead.values() if a.conn is not None)
        if not ahead and held + 1 >= self.ctx.settings.redis_pool_size:
            return  # a connection stays free for the other reads
        left -= sum(ahead.counts)
        with contextlib.suppress(Exception):  # then ``new`` reads the usual way
            while len(ahead) < READS_AHEAD and left > 0:
                ahead.send(self.group, self.consumer, min(count, left))
                left -= ahead.counts[-1]

    @property
    def reading_ahead(self) -> bool:
        """A read sent ahead is not taken yet (``new`` takes it)."""
        return any(self.ahead.values())

    def take_back(self, wait: float) -> list[tuple[StreamPlan, Batch]]:
        """The batches read ahead and not taken, each waited for up to ``wait`` seconds.
        A reply that does not come (or fails) is dropped: what its read delivered, if
        anything, stays pending with this consumer for the next run."""
        out = []
        for plan in self.plans:
            ahead = self.ahead[plan.name]
            with contextlib.suppress(Exception):
                while ahead:
                    out.append((plan, ahead.reply(wait)))
            ahead.drop()
        return out

    def _new(self, plan: StreamPlan, count: int) -> Batch:
        key = plan.keys.stream
        return self._read(
            lambda: self.ctx.redis_text.xreadgroup(self.group, self.consumer, {key: ">"},
                                                   count=count),
            f"read {plan.name}",
        ).get(key, Batch())

    def wait(self, count: int) -> list[tuple[StreamPlan, Batch]]:
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
            read = self._read(
                lambda k=by_key: self.ctx.redis_text.xreadgroup(  # type: ignore[misc]
                    self.group, self.consumer, dict.fromkeys(k, ">"), count=count, block=block
                ),
                "wait for stream entries",
            )
            if read:
                return [(by_key[key], batch) for key, batch in read.items()]
        return []

    def _read(self, read: Callable[[], Any], what: str) -> dict[str, Batch]:
        """An XREADGROUP's entries by stream key (the keys with any)."""
        return _batches(*self._text(read, what))

    def _text(self, read: Callable[[], Any], what: str) -> tuple[Any, bool]:
        """The reply of ``read`` (on the text client) and whether it held bytes that
        are not UTF-8: only then is any entry looked at (``_batch``)."""
        seen = surrogates_seen()
        reply = self.ctx.retry(read, what)
        return reply, surrogates_seen() != seen

    # -- redeliveries ------------------------------------------------------------------------
    def _resume(self, plan: StreamPlan, count: int) -> Taken:
        key, cursor = plan.keys.stream, self.resume_cursor[plan.name] or "0"
        batch = self._read(
            lambda: self.ctx.redis_text.xreadgroup(self.group, self.consumer, {key: cursor},
                                                   count=count),
            f"read own pending entries of {plan.name}",
        ).get(key, Batch())
        self.resume_cursor[plan.name] = batch.last_id
        if batch.last_id:
            self.ctx.log.info("resuming own pending entries", stream=plan.name,
                              entries=len(batch.entries) + len(batch.poison))
        return self._redelivered(plan, batch)

    def _reclaim(self, plan: StreamPlan, count: int) -> Taken:
        key = plan.keys.stream
        idle_ms = int(self.ctx.settings.stream_claim_idle_sec * 1000)
        start = self.claim_cursor[plan.name]
        reply, suspect = self._text(
            lambda: self.ctx.redis_text.xautoclaim(key, self.group, self.consumer, idle_ms,
                                                   start, count),
            f"reclaim {plan.name}",
        )
        self.claim_cursor[plan.name] = text(reply[0])
        batch = _batch(reply[1], suspect)
        if batch.last_id:
            self.ctx.log.info("reclaimed pending entries", stream=plan.name,
                              entries=len(batch.entries) + len(batch.poison))
        return self._redelivered(plan, batch)

    def _redelivered(self, plan: StreamPlan, batch: Batch) -> Taken:
        """Entries delivered before: their delivery counts; those delivered too often go
        to ``exhausted``, those deleted from the stream meanwhile to ``vanished``."""
        taken = Taken(poison=batch.poison)
        live = [row for row in batch.entries if row[1] is not None]
        taken.vanished = [i for i, f in batch.entries if f is None]
        counts = self._deliveries(plan, [i for i, _ in live])
        limit = self.ctx.settings.stream_max_retries + 2
        for (entry_id, fields), delivered in zip(live, counts, strict=True):
            self.redelivered[(plan.name, entry_id)] = max(delivered - 1, 0)
            if delivered > limit:
                taken.exhausted.append(((entry_id, as_bytes(fields)), delivered))
            else:
                taken.entries.append((entry_id, fields))
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


def _batches(reply: Any, suspect: bool) -> dict[str, Batch]:
    """An XREADGROUP reply's entries by stream key (the keys with any)."""
    return {key: _batch(entries, suspect) for key, entries in reply or () if entries}


def _batch(entries: Any, suspect: bool) -> Batch:
    """Entries as read (``(id, fields)``, fields None for one deleted meanwhile); split
    into text and poison when the read met invalid UTF-8."""
    rows: list[Entry] = list(entries)
    last = rows[-1][0] if rows else None
    if not suspect:
        return Batch(rows, last_id=last)
    good, poison = split_invalid(rows)
    return Batch(good, poison, last)


class Ahead:
    """Reads of one stream sent ahead on a connection of its own (on a Redis Cluster, to
    the node that holds the stream), their replies taken in the order sent: one
    connection, so Redis answers them in that order too."""

    def __init__(self, ctx: JobContext, key: str) -> None:
        self.ctx, self.key = ctx, key
        self.conn: Any = None  # held while any reply is outstanding
        self.counts: deque[int] = deque()  # entries asked for, per read not yet answered

    def __len__(self) -> int:
        return len(self.counts)

    def send(self, group: str, consumer: str, count: int) -> None:
        client: Any = self.ctx.redis_text
        if is_cluster(client):
            client = client.get_redis_connection(client.get_node_from_key(self.key))
        if self.conn is None:
            self.node, self.conn = client, client.connection_pool.get_connection()
        try:
            self.conn.send_command("XREADGROUP", "GROUP", group, consumer, "COUNT", count,
                                   "STREAMS", self.key, ">")
        except BaseException:
            self.drop()
            raise
        self.counts.append(count)

    def reply(self, wait: float | None = None) -> Batch:
        """The entries of the oldest read; with ``wait``, TimeoutError when its reply has
        not begun by then. Any error drops every read still outstanding."""
        seen = surrogates_seen()
        try:
            if wait is not None and not self.conn.can_read(wait):
                raise TimeoutError(f"no reply within {wait:g} s")
            reply = self.node.parse_response(self.conn, "XREADGROUP")
        except BaseException:
            self.drop()
            raise
        self.counts.popleft()
        if not self.counts:
            self.node.connection_pool.release(self.conn)
            self.conn = None
        return _batches(reply, surrogates_seen() != seen).get(self.key, Batch())

    def drop(self) -> None:
        """Forget the reads outstanding: their replies may still come, so the connection
        is closed, never reused."""
        if self.conn is not None:
            self.conn.disconnect()
            self.node.connection_pool.release(self.conn)
        self.conn = None
        self.counts.clear()
