"""The drain loop: read (see reader.py for the order), hand entries to the worker pool,
and settle results (XACK, retry, DLQ) in one MULTI per round (settle.py).

At-least-once: an entry is acked only after its handler returned (or after it was put
in the retry set or the DLQ in the same MULTI), so a crash at any point leaves it
pending, and XAUTOCLAIM gives it to a later run once it has been idle for
``stream_claim_idle_sec`` (which must exceed the per-message timeout, or a live but
slow call would be handed to a second consumer).

An outage is not a poison message: a handler error that says the infrastructure is
down (``Unavailable``, or a driver's connection error: ``is_outage``) stops the run
with exit 69 like a ``NovajobsError`` (e.g. a missing table, 78) does. The entries of
such calls, and all read but not started, stay pending and are given back (settle.py):
neither their attempt count nor their delivery count grows, so no outage, however
long, sends an entry to the retry set or the DLQ.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import operator
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novajobs.errors import (
    ConfigError,
    Interrupted,
    JobFailed,
    JobTimeout,
    LockLost,
    NovajobsError,
    Outcome,
    UnavailableError,
)
from novajobs.fencing import fence_of, refused_as_lock_lost
from novajobs.retry import classify, describe_error
from novajobs.streams.dlq import id_ms, oldest_replayable_ms
from novajobs.streams.entries import (
    Decoded,
    decode_entries,
    meta,
    peek_meta,
    with_meta,
)
from novajobs.streams.handlers import Message, PermanentError, StreamPlan, is_outage
from novajobs.streams.lane import Lane
from novajobs.streams.pool import CallResult, Task, TaskResult, WorkerPool
from novajobs.streams.queues import retry_delay, retry_member
from novajobs.streams.reader import Reader, Taken
from novajobs.streams.settle import Round, give_back, write_round
from novajobs.streams.stats import DrainStats

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.streams.handlers import HandlerFactory

_STOPS = (Interrupted, LockLost, JobTimeout)
_ENTRY_ID = operator.attrgetter("entry_id")
CALLS_PER_TASK = 32  # one-message calls a worker takes at a time (fewer thread hand-offs)
TASK_TARGET_SEC = 0.002  # cheap calls go in tasks of about this long: hand-offs cost more
READ_MOST = 1000  # entries read at once when calls are that cheap
GC_YOUNG_EVERY = 20_000  # see _fewer_collections


@dataclass
class Budget:
    max_messages: int
    read_until: float  # monotonic: no reads after this


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
        self.keys = {p.name: p.keys for p in plans}
        self.batch = {p.name: max(1, getattr(factories[p.handler], "batch_size", 1)) for p in plans}
        self.calls = {name: max(1, CALLS_PER_TASK // size) for name, size in self.batch.items()}
        self.group, self.consumer = s.stream_group, s.stream_consumer
        self.timeout = s.drain_message_timeout_sec
        self.pool = WorkerPool(s.drain_concurrency, lambda name: factories[name](s),
                               stops=_stops_any)
        self.stats = DrainStats()
        self.lane = Lane("drain-write")  # the rounds' writes, off this thread (lane.py)
        self.writes: deque[Future[None]] = deque()  # rounds handed over, not yet known written
        self.reader = Reader(ctx, self.plans)
        self.forgotten_ms = oldest_replayable_ms(s, time.time())  # see _past_retention
        self.pending = Round()
        self.backlog: deque[Task] = deque()  # read, not yet started (waiting for a slot)
        self.untried: dict[str, list[str]] = {}  # stream -> ids left pending, to give back
        self.call_sec: dict[str, float] = {}  # stream -> recent seconds per handler call
        self.failures_in_row = 0  # handler calls (a batch that fails whole: one)
        self.failed_out = 0  # the limit was reached (at this count): stop, exit 1
        self.fatal: NovajobsError | None = None
        self.halting = False  # stopping: what has not finished stays pending

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        stopped: NovajobsError | None = None
        try:
            with _fewer_collections():
                self._loop()
        except _STOPS as exc:  # SIGTERM, lost lock, deadline: finish in-flight, then report
            stopped = exc
        finally:
            self._finish(leave_pending=stopped is not None or self.fatal is not None,
                         give_back=not isinstance(stopped, LockLost))
        if self.fatal is not None:
            fatal = copy.copy(self.fatal)
            left = self.stats.counts["left_pending"]
            fatal.args = (f"{self.fatal}; {left} entries left pending for a later run",)
            raise fatal
        if stopped is not None:
            raise stopped
        if self.failed_out:
            raise JobFailed(
                f"{self.failed_out} handler calls failed in a row; stopped early "
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
            or self.failed_out > 0
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
        """Start calls on free workers: backlog, redelivered entries, then new ones by
        priority (none while this consumer's own pending entries are still being read)."""
        started = self._start_backlog()
        for plan in self.plans:
            started += self._take_redelivered(plan, self.reader.pending(plan, self._room(plan)))
        if self.reader.resuming:
            return started
        for plan in self.plans:
            room = self._room(plan)
            if room:
                batch = self.reader.new(plan, room)
                started += self._take(plan, decode_entries(plan.name, batch.entries,
                                                           batch.poison))
                if len(batch.entries) + len(batch.poison) >= READ_MOST:  # more are likely
                    self.reader.read_ahead(plan, READ_MOST, self._left())
        return started

    def _left(self) -> int:
        """Entries the budget still allows to read."""
        return self.budget.max_messages - self.stats.counts["received"]

    def _room(self, plan: StreamPlan) -> int:
        """Entries to read now: enough for the free task slots (up to READ_MOST at once
        when calls are cheap), within the budget."""
        if self.backlog or not self.pool.free:
            return 0
        left = self._left()
        per_task = self.calls[plan.name] * self.batch[plan.name]
        room = self.pool.free * per_task
        if self._fit(plan.name) >= per_task:
            room = max(room, READ_MOST)
        return max(0, min(room, left))

    def _fit(self, stream: str) -> int:
        """Calls that take about TASK_TARGET_SEC together, lately."""
        return int(TASK_TARGET_SEC / max(self.call_sec.get(stream, 1.0), 1e-6))

    def _wait_for_entries(self) -> bool:
        """Block (drain_block_ms) on every stream at once; False when nothing arrived.
        Not while a read sent ahead is unanswered: the next ``_fill`` takes it first."""
        if self.reader.reading_ahead:
            return True
        arrived = self.reader.wait(self.pool.free or 1)
        for plan, batch in arrived:
            self._take(plan, decode_entries(plan.name, batch.entries, batch.poison))
        return bool(arrived)

    def _take_redelivered(self, plan: StreamPlan, taken: Taken) -> int:
        """Entries handed out before: an entry delivered too often without any outcome
        (its consumer died each time, e.g. killed by it) goes to the DLQ rather than
        around forever; one no longer in the stream is acked (nothing to handle)."""
        if taken.entries or taken.exhausted:
            self.stats.add(plan.name, "reclaimed", len(taken.entries) + len(taken.exhausted))
        for (entry_id, raw), delivered in taken.exhausted:
            self.stats.add(plan.name, "received")
            error = f"delivered {delivered} times without an outcome (its consumers died?)"
            self._dead(plan.name, entry_id, raw, error, delivered - 1)
        for entry_id in taken.vanished:
            self.pending.ack(plan.name, entry_id)
        return self._take(plan, decode_entries(plan.name, taken.entries, taken.poison),
                          redelivered=True)

    def _past_retention(self, stream: str, decoded: Decoded, redelivered: bool) -> None:
        """Entries that may have been handled already (redelivered, or carrying a first
        id: a promoted retry, a replay) whose first id is older than the dedupe
        retention: the audit-log handler may have forgotten it wrote them and write them
        again. Not refused (that would strand them), but never silent: warned, counted."""
        maybe_handled = decoded.messages if redelivered else decoded.carried
        old = [m for m in maybe_handled if id_ms(m.id) < self.forgotten_ms]
        if old:
            self.stats.add(stream, "past_dedupe_retention", len(old))
            self.ctx.log.warning("entries older than the dedupe retention: a handler that "
                                 "dedupes may write them twice", stream=stream,
                                 entries=len(old), first=old[0].id)

    def _take(self, plan: StreamPlan, decoded: Decoded, redelivered: bool = False) -> int:
        """Hand decoded entries to tasks; poison goes to the DLQ. Returns calls started."""
        self.stats.add(plan.name, "received", len(decoded))
        self._past_retention(plan.name, decoded, redelivered)
        for entry_id, raw, why in decoded.poison:
            self._dead(plan.name, entry_id, raw, f"cannot be decoded: {why}", 0)
        self._queue(plan.name, plan.handler, decoded.messages)
        return self._start_backlog()

    def _queue(self, stream: str, handler: str, messages: list[Message]) -> None:
        """Spread the messages' calls over tasks: as many as there are free slots, at
        most CALLS_PER_TASK calls each, so slow handlers still use every worker."""
        if not messages:
            return
        size = self.batch[stream]
        calls = -(-len(messages) // size)
        slots = max(1, self.pool.free)
        per_task = min(self.calls[stream], -(-calls // slots))
        per_task = max(per_task, min(self._fit(stream), calls))  # cheap: fewer, longer
        step = per_task * size
        for i in range(0, len(messages), step):
            self.backlog.append(Task(stream, handler, messages[i : i + step], size))

    def _start_backlog(self) -> int:
        started = 0
        while self.backlog and self.pool.free > 0:
            self.pool.submit(self.backlog.popleft())
            started += 1
        return started

    # -- settling ---------------------------------------------------------------------------
    def _settle(self, results: Iterable[TaskResult]) -> None:
        for result in results:
            self._settle_result(result)
            self._not_started(result.task, result.unstarted)
        self._flush()

    def _settle_result(self, result: TaskResult) -> None:
        """The calls a task completed: failed ones one by one, then the clean ones acked
        together (a task of clean calls: one slice of its messages)."""
        task = result.task
        durations = task.durations
        if not durations:
            return
        self._learn(task.stream, durations)
        self.stats.timed(durations, [len(task.call(i)) for i in range(len(durations))]
                         if task.size > 1 else None)
        failed = task.failed
        if not failed:
            self._ack_all(task.stream, result.completed)
            return
        for call in failed:
            self._settle_call(task.handler, call)
        bad = {call.index for call in failed}
        self._ack_all(task.stream, [m for i in range(task.done) if i not in bad
                                    for m in task.call(i)])

    def _settle_call(self, handler: str, call: CallResult) -> None:
        if _stops_run(call.error):  # e.g. a missing table, a database down: stop, ack nothing
            self._leave(handler, call.messages, call.error)
            return
        if call.error is not None:
            self._count_failure()
        for message in call.messages:
            error = call.error or call.failures.get(message.entry_id)
            if error is None:
                self._ack(message)
            elif _stops_run(error):
                self._leave(handler, [message], error)
            else:
                if call.error is None:
                    self._count_failure()
                self._failed(message, error)

    def _learn(self, stream: str, durations: list[float]) -> None:
        """How long a call of the stream takes lately: a moving average of each task's
        median call. The median, as a call's time includes any wait for the GIL, and a
        thread that loses it every few ms gives a few calls milliseconds each: their
        mean would make calls of a microsecond look costly and their tasks short."""
        sample = durations[:: max(1, len(durations) // 31)]  # a task may hold thousands
        took = sorted(sample)[len(sample) // 2]
        before = self.call_sec.get(stream, took)
        self.call_sec[stream] = 0.7 * before + 0.3 * took

    def _leave(self, handler: str, messages: list[Message], error: BaseException | None) -> None:
        """The run must stop for what ``error`` says; ``messages`` are not at fault: they
        stay pending, given back untouched."""
        if self.fatal is None and error is not None:
            self.fatal = _run_error(handler, error)
            self.ctx.log.error("stopping the drain: not the entries' fault", handler=handler,
                               error=describe_error(error))
        self._untried(messages)

    def _untried(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.stats.add(message.stream, "left_pending")
            self.untried.setdefault(message.stream, []).append(message.entry_id)

    def _not_started(self, task: Task, messages: list[Message]) -> None:
        """Messages of calls a task never began: other workers take them, unless the run
        is stopping (then they stay pending in the group for a later run)."""
        if not messages:
            return
        if self.halting or self.fatal is not None:
            self._untried(messages)
        else:
            self._queue(task.stream, task.handler, messages)

    def _expire(self) -> None:
        for result in self.pool.expire(self.timeout):
            self._settle_result(result)
            late = result.timed_out
            if self.halting:
                self.stats.add(result.task.stream, "left_pending", len(late))
            else:
                error = TimeoutError(f"handler {result.task.handler} overran {self.timeout:g} s")
                self.stats.timed([self.timeout], [len(late)])
                self._count_failure()
                for message in late:
                    self.stats.add(message.stream, "timed_out")
                    self._failed(message, error)
            self._not_started(result.task, result.unstarted)
        self._flush()

    def _ack(self, message: Message) -> None:
        self._ack_all(message.stream, [message])

    def _ack_all(self, stream: str, messages: list[Message]) -> None:
        self.failures_in_row = 0
        self.stats.add(stream, "succeeded", len(messages))
        self.pending.acks.setdefault(stream, []).extend(map(_ENTRY_ID, messages))

    def _count_failure(self) -> None:
        """One more handler call (or message of a call) failed in a row; at
        ``drain_failure_limit`` the run stops reading, and ends with exit 1 however the
        calls still running turn out."""
        self.failures_in_row += 1
        if self.failures_in_row >= self.ctx.settings.drain_failure_limit:
            self.failed_out = max(self.failed_out, self.failures_in_row)

    def _failed(self, message: Message, error: BaseException) -> None:
        failures = message.attempts + 1
        reason = describe_error(error)
        if isinstance(error, PermanentError) or failures > self.ctx.settings.stream_max_retries:
            fields = with_meta(message.fields, meta(message.id, failures, reason, time.time()))
            self._dead_letter(message.stream, message.entry_id, fields, reason)
            return
        due = time.time() + retry_delay(failures, self.ctx.settings)
        self.pending.retries.append((message.stream, retry_member(message, failures, reason), due))
        self.pending.ack(message.stream, message.entry_id)
        self.stats.add(message.stream, "retried")

    def _dead(self, stream: str, entry_id: str, raw: Any, error: str, failures: int) -> None:
        """Dead-letter an entry as read (undecodable, or delivered too often): its own meta
        (first id, attempts so far) is kept, once."""
        first_id, attempts = peek_meta(raw, entry_id)
        fields = with_meta(raw, meta(first_id, attempts + failures, error, time.time()))
        self._dead_letter(stream, entry_id, fields, error)

    def _dead_letter(self, stream: str, entry_id: str, fields: dict[Any, Any], error: str
                     ) -> None:
        self.pending.dead.append((stream, fields))
        self.pending.ack(stream, entry_id)
        self.stats.add(stream, "dead_lettered")
        self.ctx.log.warning("entry dead-lettered", stream=stream, entry_id=entry_id, error=error)

    def _flush(self) -> None:
        """Retries, DLQ entries and their XACKs in one MULTI: all of a round or none.
        Written by the lane, in order; a failed write is raised here at the next look.
        No checkpoint here: acking finished work is right even after a stop signal."""
        if self.pending:
            writes, self.pending = self.pending, Round()
            fence = fence_of(self.ctx)

            def write() -> None:
                with refused_as_lock_lost(self.ctx, "ack and reschedule"):
                    self.ctx.retry(lambda: write_round(self.ctx.redis, self.keys, self.group,
                                                       writes, fence), "ack and reschedule")

            self.writes.append(self.lane.submit(write))
        self._written(wait=False)

    def _written(self, wait: bool) -> None:
        """Raise the error of a round the lane could not write; with ``wait``, once every
        round handed over is written."""
        while self.writes and (wait or self.writes[0].done()):
            self.writes.popleft().result()

    def _give_back(self) -> None:
        idle_ms = int(self.ctx.settings.stream_claim_idle_sec * 1000) + 1
        for stream, ids in self.untried.items():
            before = {i: self.reader.redelivered.get((stream, i), 0) for i in ids}
            with refused_as_lock_lost(self.ctx, "give entries back"):
                self.ctx.retry(functools.partial(give_back, self.ctx.redis,
                                                 self.keys[stream].stream, self.group,
                                                 self.consumer, before, idle_ms,
                                                 fence_of(self.ctx)),
                               "give entries back")
        self.untried.clear()

    # -- the end ----------------------------------------------------------------------------
    def _finish(self, leave_pending: bool, give_back: bool) -> None:
        """Let started work finish within the per-message timeout and settle it. After a
        stop, what has not finished stays pending (a later run reclaims it) instead of
        being retried; so does whatever is still unfinished at the deadline. What was
        never tried (or hit an outage) is given back, unless the lock was lost (another
        process may run under our consumer name now)."""
        for plan, batch in self.reader.take_back(wait=1.0):  # read ahead, never taken
            ids = [i for i, _fields in batch.entries] + [i for i, _raw, _why in batch.poison]
            self.untried.setdefault(plan.name, []).extend(ids)
        if leave_pending:
            self._halt()
        deadline = time.monotonic() + self.timeout + 1
        try:
            while self.pool.waiting or self.backlog:
                if self.pool.stuck >= self.pool.size:  # nothing queued can start any more
                    self._halt()
                    for task in self.pool.drop_queued():
                        self._untried(task.messages)
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
            self._written(wait=True)
            if give_back:
                self._give_back()
        finally:
            self.lane.close()
            self.pool.shutdown()

    def _halt(self) -> None:
        self.halting = True
        self.pool.halt()
        for task in self.backlog:  # read but never started: still pending in the group
            self._untried(task.messages)
        self.backlog.clear()


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """The cyclic GC's youngest generation collected every GC_YOUNG_EVERY allocations
    instead of every 700 (Python's default), while draining. A drain allocates some ten
    container objects per entry (the parser's lists, dicts, Messages), all freed within
    a batch and none in a cycle: at 700, each is scanned once or more before it dies,
    a tenth of the drain's CPU; at GC_YOUNG_EVERY most die first. The setting is
    process-wide, so it is set back when the drain ends."""
    before = gc.get_threshold()
    if before[0]:  # 0: collection is off, leave it so
        gc.set_threshold(max(before[0], GC_YOUNG_EVERY), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _stops_run(error: BaseException | None) -> bool:
    """Not the entry's fault: a NovajobsError, an outage, a misconfigured store."""
    return error is not None and (isinstance(error, NovajobsError) or is_outage(error)
                                  or classify(error) is Outcome.CONFIG_ERROR)


def _run_error(handler: str, error: BaseException) -> NovajobsError:
    if isinstance(error, NovajobsError):
        return error
    if not is_outage(error):  # e.g. a wrong password or database name: 78
        return ConfigError(f"handler {handler}: its store is misconfigured "
                           f"({describe_error(error)})")
    return UnavailableError(f"handler {handler} cannot reach what it depends on "
                            f"({describe_error(error)})")


def _stops_any(call: CallResult) -> bool:
    """For the pool: after such a call no worker starts another (a dead store must not
    be tried once per queued call)."""
    return _stops_run(call.error) or any(_stops_run(e) for e in call.failures.values())
