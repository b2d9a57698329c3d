"""The drain loop: read (reclaim first, then new entries by stream priority), hand entries
to the worker pool, and settle results (XACK, retry, DLQ) in one MULTI per round.

At-least-once: an entry is acked only after its handler returned (or after it was put
in the retry set or the DLQ in the same MULTI), so a crash at any point leaves it
pending, and XAUTOCLAIM gives it to a later run once it has been idle for
``stream_claim_idle_sec`` (which must exceed the per-message timeout, or a live but
slow call would be handed to a second consumer).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.errors import Interrupted, JobFailed, JobTimeout, LockLost, NovajobsError
from novajobs.retry import describe_error
from novajobs.streams.handlers import Message, PermanentError, StreamPlan
from novajobs.streams.pool import CallResult, Task, TaskResult, WorkerPool
from novajobs.streams.queues import (
    PoisonEntry,
    decode_entry,
    dlq_fields,
    dlq_key,
    retry_delay,
    retry_key,
    retry_member,
)
from novajobs.streams.stats import DrainStats

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.streams.handlers import HandlerFactory

_STOPS = (Interrupted, LockLost, JobTimeout)
CALLS_PER_TASK = 32  # one-message calls a worker takes at a time (fewer thread hand-offs)


@dataclass
class Budget:
    max_messages: int
    read_until: float  # monotonic: no reads after this


@dataclass
class _Pending:
    """Writes of one settle round, applied in one MULTI/EXEC."""

    acks: dict[str, list[str]] = field(default_factory=dict)  # stream -> entry ids
    retries: list[tuple[str, str, float]] = field(default_factory=list)  # stream, member, due
    dead: list[tuple[str, dict[Any, Any]]] = field(default_factory=list)  # stream, fields

    def __bool__(self) -> bool:
        return bool(self.acks or self.retries or self.dead)


class Drainer:
    def __init__(
        self,
        ctx: JobContext,
        plans: Sequence[StreamPlan],
        factories: dict[str, HandlerFactory],
        budget: Budget,
    ) -> None:
        s = ctx.settings
        self.ctx, self.plans, self.budget = ctx, list(plans), budget
        self.by_name = {p.name: p for p in plans}
        self.batch = {p.name: max(1, getattr(factories[p.handler], "batch_size", 1)) for p in plans}
        self.calls = {name: max(1, CALLS_PER_TASK // size) for name, size in self.batch.items()}
        self.group, self.consumer = s.stream_group, s.stream_consumer
        self.timeout = s.drain_message_timeout_sec
        self.pool = WorkerPool(s.drain_concurrency, lambda name: factories[name](s))
        self.stats = DrainStats()
        self.pending = _Pending()
        self.backlog: deque[Task] = deque()  # read, not yet started (waiting for a slot)
        self.claim_cursor = dict.fromkeys(self.by_name, "0-0")
        self.next_claim = 0.0
        self.failures_in_row = 0
        self.fatal: NovajobsError | None = None
        self.halting = False  # stopping: what has not finished stays pending

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        stopped: NovajobsError | None = None
        try:
            self._loop()
        except _STOPS as exc:  # SIGTERM, lost lock, deadline: finish in-flight, then report
            stopped = exc
        finally:
            self._finish(leave_pending=stopped is not None or self.fatal is not None)
        if self.fatal is not None:
            raise self.fatal
        if stopped is not None:
            raise stopped
        if self.failures_in_row >= self.ctx.settings.drain_failure_limit:
            raise JobFailed(
                f"{self.failures_in_row} messages failed in a row; stopped early "
                f"({self.stats.summary()})"
            )

    def _loop(self) -> None:
        while not self._budget_spent():
            self.ctx.checkpoint()  # before taking new work: signal, lease, deadline
            started = self._fill()
            if not started and self.pool.waiting == 0 and not self.backlog:
                if not self._wait_for_entries():
                    return  # every stream is empty: drained
                continue
            self._settle(self.pool.collect(self._wait_time(started)))
            self._expire()

    def _budget_spent(self) -> bool:
        return (
            self.stats.counts["received"] >= self.budget.max_messages
            or time.monotonic() >= self.budget.read_until
            or self.fatal is not None
            or self.failures_in_row >= self.ctx.settings.drain_failure_limit
            or self._all_workers_stuck()
        )

    def _all_workers_stuck(self) -> bool:
        """Every worker is inside a call that overran its timeout and never returned: no
        progress is possible in this process; end the run (the threads are daemons)."""
        if self.pool.stuck < self.pool.size:
            return False
        self.ctx.log.warning("every worker is stuck in a handler call past its timeout; "
                             "ending the run", concurrency=self.pool.size)
        return True

    def _wait_time(self, started: int) -> float:
        if started and self.pool.free > 0:
            return 0.0  # keep reading while there are free workers
        expiry = self.pool.next_expiry(self.timeout)
        return 0.2 if expiry is None else min(0.2, expiry + 0.001)

    # -- reading ----------------------------------------------------------------------------
    def _fill(self) -> int:
        """Start calls on free workers: backlog, reclaimed entries, then new ones by priority."""
        started = self._start_backlog()
        due = time.monotonic() >= self.next_claim
        if due:
            every = max(1.0, self.ctx.settings.stream_claim_idle_sec / 2)
            self.next_claim = time.monotonic() + every
        for plan in self.plans:
            # a scan of the pending list that stopped at our capacity goes on at once
            if due or self.claim_cursor[plan.name] != "0-0":
                started += self._take(plan, self._reclaim(plan, self._room(plan)))
        for plan in self.plans:
            room = self._room(plan)
            if room:
                started += self._take(plan, self._read(plan, room))
        return started

    def _room(self, plan: StreamPlan) -> int:
        """Entries to read now: enough for the free task slots, within the budget."""
        if self.backlog:
            return 0
        left = self.budget.max_messages - self.stats.counts["received"]
        per_task = self.calls[plan.name] * self.batch[plan.name]
        return max(0, min(self.pool.free * per_task, left))

    def _read(self, plan: StreamPlan, count: int) -> list[tuple[Any, Any]]:
        key = self.ctx.key(plan.name)
        reply: Any = self.ctx.retry(
            lambda: self.ctx.redis.xreadgroup(self.group, self.consumer, {key: ">"}, count=count),
            f"read {plan.name}",
        )
        return list(reply[0][1]) if reply else []

    def _wait_for_entries(self) -> bool:
        """Block (drain_block_ms) on every stream at once; False when nothing arrived."""
        keys: Any = {self.ctx.key(p.name): ">" for p in self.plans}
        block = self.ctx.settings.drain_block_ms
        reply: Any = self.ctx.retry(
            lambda: self.ctx.redis.xreadgroup(
                self.group, self.consumer, keys, count=self.pool.free or 1, block=block
            ),
            "wait for stream entries",
        )
        names = {self.ctx.key(p.name): p for p in self.plans}
        for key, entries in reply or []:
            self._take(names[_text(key)], list(entries))
        return bool(reply)

    def _reclaim(self, plan: StreamPlan, count: int) -> list[tuple[Any, Any]]:
        if count <= 0:
            return []
        key, s = self.ctx.key(plan.name), self.ctx.settings
        idle_ms = int(s.stream_claim_idle_sec * 1000)
        reply: Any = self.ctx.retry(
            lambda: self.ctx.redis.xautoclaim(
                key, self.group, self.consumer, idle_ms, self.claim_cursor[plan.name], count
            ),
            f"reclaim {plan.name}",
        )
        cursor, claimed = reply[0], reply[1]
        self.claim_cursor[plan.name] = _text(cursor)
        entries = [(i, f) for i, f in claimed if f is not None]
        if entries:
            self.stats.add(plan.name, "reclaimed", len(entries))
            self.ctx.log.info("reclaimed pending entries", stream=plan.name, entries=len(entries))
        return self._too_often_delivered(plan, entries)

    def _too_often_delivered(self, plan: StreamPlan, entries: list[Any]) -> list[Any]:
        """An entry that keeps coming back without an outcome (its consumer died each
        time, e.g. killed by it) goes to the DLQ rather than around forever."""
        if not entries:
            return entries
        key, limit = self.ctx.key(plan.name), self.ctx.settings.stream_max_retries + 2
        info: Any = self.ctx.redis.xpending_range(
            key, self.group, entries[0][0], entries[-1][0], len(entries) * 2, self.consumer
        )
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in info}
        keep = []
        for entry_id, raw in entries:
            delivered = counts.get(_text(entry_id), 0)
            if delivered > limit:
                self.stats.add(plan.name, "received")
                error = f"delivered {delivered} times without an outcome (its consumers died?)"
                self._dead(plan.name, _text(entry_id), raw, error, failures=delivered - 1)
            else:
                keep.append((entry_id, raw))
        return keep

    def _take(self, plan: StreamPlan, entries: Iterable[tuple[Any, Any]]) -> int:
        """Decode entries into tasks; poison goes to the DLQ. Returns calls started."""
        messages: list[Message] = []
        for raw_id, raw in entries:
            entry_id = _text(raw_id)
            self.stats.add(plan.name, "received")
            try:
                messages.append(decode_entry(plan.name, entry_id, raw))
            except PoisonEntry as exc:
                self._dead(plan.name, entry_id, raw, f"cannot be decoded: {exc}", failures=0)
        size = self.batch[plan.name]
        calls = [messages[i : i + size] for i in range(0, len(messages), size)]
        self._queue_calls(plan.name, plan.handler, calls)
        return self._start_backlog()

    def _queue_calls(self, stream: str, handler: str, calls: list[list[Message]]) -> None:
        """Spread calls over tasks: as many as there are free slots, at most
        CALLS_PER_TASK each, so slow handlers still use every worker."""
        if not calls:
            return
        slots = max(1, self.pool.free)
        per_task = min(self.calls[stream], -(-len(calls) // slots))
        for i in range(0, len(calls), per_task):
            self.backlog.append(Task(stream, handler, calls[i : i + per_task]))

    def _start_backlog(self) -> int:
        started = 0
        while self.backlog and self.pool.free > 0:
            self.pool.submit(self.backlog.popleft())
            started += 1
        return started

    # -- settling ---------------------------------------------------------------------------
    def _settle(self, results: Iterable[TaskResult]) -> None:
        for result in results:
            for call in result.completed:
                self._settle_call(call)
            self._not_started(result.task, result.unstarted)
        self._flush()

    def _settle_call(self, call: CallResult) -> None:
        if isinstance(call.error, NovajobsError):
            self.fatal = self.fatal or call.error  # e.g. a missing table: stop, ack nothing
            return
        self.stats.timed(call.duration, len(call.messages))
        for message in call.messages:
            error = call.error or call.failures.get(message.entry_id)
            if error is None:
                self._ack(message)
            else:
                self._failed(message, error)

    def _not_started(self, task: Task, calls: list[list[Message]]) -> None:
        """Calls a task never began: other workers take them, unless the run is stopping
        (then they stay pending in the group for a later run)."""
        if not calls:
            return
        if self.halting or self.fatal is not None:
            self.stats.add(task.stream, "left_pending", sum(len(c) for c in calls))
        else:
            self._queue_calls(task.stream, task.handler, calls)

    def _expire(self) -> None:
        for result in self.pool.expire(self.timeout):
            for call in result.completed:
                self._settle_call(call)
            late = result.timed_out
            if self.halting:
                self.stats.add(result.task.stream, "left_pending", len(late))
            else:
                error = TimeoutError(f"handler {result.task.handler} overran {self.timeout:g} s")
                self.stats.timed(self.timeout, len(late))
                for message in late:
                    self.stats.add(message.stream, "timed_out")
                    self._failed(message, error)
            self._not_started(result.task, result.unstarted)
        self._flush()

    def _ack(self, message: Message) -> None:
        self.failures_in_row = 0
        self.stats.add(message.stream, "succeeded")
        self.pending.acks.setdefault(message.stream, []).append(message.entry_id)

    def _failed(self, message: Message, error: BaseException) -> None:
        self.failures_in_row += 1
        failures = message.attempts + 1
        text = describe_error(error)
        if isinstance(error, PermanentError) or failures > self.ctx.settings.stream_max_retries:
            self._dead(message.stream, message.id, message.fields, text, failures, message.entry_id)
            return
        due = time.time() + retry_delay(failures, self.ctx.settings)
        self.pending.retries.append((message.stream, retry_member(message, failures, text), due))
        self.pending.acks.setdefault(message.stream, []).append(message.entry_id)
        self.stats.add(message.stream, "retried")

    def _dead(
        self, stream: str, first_id: str, fields: Any, error: str, failures: int,
        entry_id: str | None = None,
    ) -> None:
        dead = dlq_fields(first_id, fields, failures, error, time.time())
        self.pending.dead.append((stream, dead))
        self.pending.acks.setdefault(stream, []).append(entry_id or first_id)
        self.stats.add(stream, "dead_lettered")
        self.ctx.log.warning("entry dead-lettered", stream=stream, entry_id=first_id, error=error)

    def _flush(self) -> None:
        """Retries, DLQ entries and their XACKs in one MULTI: all of a round or none.
        No checkpoint here: acking finished work is right even after a stop signal."""
        if not self.pending:
            return
        pending, self.pending = self.pending, _Pending()
        prefix = self.ctx.settings.redis_prefix

        def write() -> None:
            pipe = self.ctx.redis.pipeline(transaction=True)
            for stream, member, due in pending.retries:
                pipe.zadd(retry_key(prefix, stream), {member: due})
            for stream, fields in pending.dead:
                pipe.xadd(dlq_key(prefix, stream), fields)
            for stream, ids in pending.acks.items():
                pipe.xack(self.ctx.key(stream), self.group, *ids)
            pipe.execute()

        self.ctx.retry(write, "ack and reschedule")

    # -- the end ----------------------------------------------------------------------------
    def _finish(self, leave_pending: bool) -> None:
        """Let started work finish within the per-message timeout and settle it. After a
        stop, what has not finished stays pending (a later run reclaims it) instead of
        being retried; so does whatever is still unfinished at the deadline."""
        if leave_pending:
            self._halt()
        deadline = time.monotonic() + self.timeout + 1
        try:
            while self.pool.waiting or self.backlog:
                if self.pool.stuck >= self.pool.size:  # nothing queued can start any more
                    self._halt()
                    for task in self.pool.drop_queued():
                        self.stats.add(task.stream, "left_pending",
                                       sum(len(c) for c in task.calls))
                if time.monotonic() >= deadline:
                    if self.halting:
                        break
                    self._halt()
                    deadline = time.monotonic() + self.timeout + 1
                self._start_backlog()
                expiry = self.pool.next_expiry(self.timeout)
                wait = 0.05 if expiry is None else min(0.2, expiry + 0.001)
                self._settle(self.pool.collect(wait))
                self._expire()
            self._flush()
        finally:
            self.pool.shutdown()

    def _halt(self) -> None:
        self.halting = True
        self.pool.halt()
        for task in self.backlog:  # read but never started: still pending in the group
            self.stats.add(task.stream, "left_pending", sum(len(c) for c in task.calls))
        self.backlog.clear()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
