"""A bounded pool of worker threads with a per-call timeout.

A *task* is a short run of handler calls of one stream: its messages, one per call (or
``size`` per call for a batch handler). Handing a worker many calls at a time keeps
thread hand-offs off the per-message path; the timeout still applies to each call,
and a worker checks between calls whether it should stop (``halt``, on SIGTERM).

A clean call leaves nothing behind but its duration (and the count of calls done):
no per-call object, so thousands of cheap calls a second cost little more than the
calls themselves. A failed call is reported whole (``CallResult``), never lost.

Python cannot kill a thread, so a call that overruns its timeout is *abandoned*: the
caller learns at once which calls of the task completed, which one timed out and
which never started (it hands those to other workers); the late result is ignored,
and the thread keeps its slot until the call returns, so never more than ``size``
handler calls run at the same time. Threads are daemons: a call stuck for good cannot
keep the process alive after the run has ended.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from novajobs.streams.handlers import Handler, Message, one_at_a_time


@dataclass(slots=True)
class CallResult:
    """A call that failed, whole (``error``) or for some of its messages (``failures``)."""

    index: int  # the call's number in its task
    messages: list[Message]
    duration: float
    failures: Mapping[str, BaseException] = field(default_factory=dict)  # by entry_id
    error: BaseException | None = None  # the whole call failed (or could not start)


@dataclass(eq=False)
class Task:
    stream: str
    handler: str
    messages: list[Message]
    size: int = 1  # messages per call
    started: float | None = None  # monotonic start of the call running now (None between)
    durations: list[float] = field(default_factory=list)  # seconds, one per completed call
    failed: list[CallResult] = field(default_factory=list)  # completed calls that failed
    finished: bool = False  # the worker is done with it (its result may not be collected)
    abandoned: bool = False  # given up on by the caller after a timeout
    halt: bool = False  # stop before the next call: the rest stays pending

    @property
    def calls(self) -> int:
        return -(-len(self.messages) // self.size)

    @property
    def done(self) -> int:
        """Calls completed."""
        return len(self.durations)

    def call(self, index: int) -> list[Message]:
        return self.messages[index * self.size : (index + 1) * self.size]


@dataclass
class TaskResult:
    """What a task did, read once the worker can no longer change it: it finished, or
    it was abandoned (then the worker records nothing more)."""

    task: Task
    overran: bool = False  # call number ``task.done`` overran its timeout: abandoned

    @property
    def completed(self) -> list[Message]:
        return self.task.messages[: self.task.done * self.task.size]

    @property
    def timed_out(self) -> list[Message]:
        """The messages of the call that overran."""
        return self.task.call(self.task.done) if self.overran else []

    @property
    def unstarted(self) -> list[Message]:
        """The messages of the calls never begun."""
        return self.task.messages[(self.task.done + self.overran) * self.task.size :]


_STOP = object()


class WorkerPool:
    def __init__(self, size: int, make_handler: Callable[[str], Handler],
                 stops: Callable[[CallResult], bool] = lambda call: False) -> None:
        self.size = size
        self._stops = stops  # a call after which no task starts another (an outage)
        self._halted = False
        self.capacity = 2 * size  # tasks running or queued: one queued per worker at most
        self._make_handler = make_handler
        self._tasks: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[TaskResult] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = 0  # submitted and not finished by a worker (abandoned ones included)
        self._waiting: set[Task] = set()  # submitted, result not yet collected or abandoned
        self._running: dict[int, Task] = {}  # thread ident -> its task
        self._threads = [
            threading.Thread(target=self._work, name=f"drain-worker-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    # -- the caller's side ----------------------------------------------------------------
    @property
    def free(self) -> int:
        """Tasks that may be submitted now."""
        with self._lock:
            return self.capacity - self._busy

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def stuck(self) -> int:
        """Threads still inside a call that was abandoned."""
        with self._lock:
            return sum(1 for task in self._running.values() if task.abandoned)

    def submit(self, task: Task) -> None:
        with self._lock:
            task.halt = task.halt or self._halted
            self._busy += 1
            self._waiting.add(task)
        self._tasks.put(task)

    def collect(self, timeout: float) -> list[TaskResult]:
        """Results ready now, waiting up to ``timeout`` for the first one."""
        out: list[TaskResult] = []
        with contextlib.suppress(queue.Empty):
            out.append(self._results.get(timeout=timeout) if timeout > 0 else
                       self._results.get_nowait())
            while True:
                out.append(self._results.get_nowait())
        with self._lock:  # a task leaves `waiting` only once its result is in hand
            for result in out:
                self._waiting.discard(result.task)
        return out

    def expire(self, limit: float) -> list[TaskResult]:
        """Abandon the tasks whose current call has run longer than ``limit`` seconds."""
        now = time.monotonic()
        out = []
        with self._lock:
            for task in list(self._waiting):
                if task.started is None or task.finished or now - task.started <= limit:
                    continue
                task.abandoned = True
                self._waiting.discard(task)
                out.append(TaskResult(task, overran=True))
        return out

    def next_expiry(self, limit: float) -> float | None:
        """Seconds until the oldest running call overruns ``limit`` (None: none runs)."""
        with self._lock:
            starts = [t.started for t in self._waiting if t.started is not None]
        return None if not starts else max(0.0, min(starts) + limit - time.monotonic())

    def drop_queued(self) -> list[Task]:
        """Give up on the tasks no worker has begun (e.g. every worker is stuck)."""
        with self._lock:
            dropped = [t for t in self._waiting if t.started is None and not t.done
                       and t not in self._running.values()]
            for task in dropped:
                task.abandoned = True
                self._waiting.discard(task)
        return dropped

    def halt(self) -> None:
        """Every task stops before its next call; queued ones return without a call."""
        with self._lock:
            self._halt_all()

    def _halt_all(self) -> None:
        self._halted = True
        for task in self._waiting:
            task.halt = True

    def shutdown(self) -> None:
        """Let idle workers close their handlers and exit; stuck ones are left behind."""
        for _ in self._threads:
            self._tasks.put(_STOP)
        deadline = time.monotonic() + 5
        for thread in self._threads:
            with self._lock:
                task = self._running.get(thread.ident or 0)
            if task is None or not task.abandoned:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- the worker's side ----------------------------------------------------------------
    def _work(self) -> None:
        handlers: dict[str, Handler] = {}
        me = threading.get_ident()
        try:
            while (task := self._tasks.get()) is not _STOP:
                assert isinstance(task, Task)
                with self._lock:
                    self._running[me] = task
                self._run(task, handlers)
                with self._lock:
                    del self._running[me]
                    self._busy -= 1
                    task.finished = True
                    if not task.abandoned:  # else the caller has dealt with it already
                        self._results.put(TaskResult(task))
        finally:
            for handler in handlers.values():
                with contextlib.suppress(Exception):  # closing must not hide the outcome
                    handler.close()

    def _run(self, task: Task, handlers: dict[str, Handler]) -> None:
        """The task's calls in order. Per call: the call, a clock reading and one short
        lock round that ends it and starts the next; a handler of one message at a time
        is called directly, without a list or a failures dict per call."""
        with self._lock:
            if task.abandoned or task.halt:
                return
            task.started = began = time.monotonic()
        single: Callable[[Message], Any] | None = None
        handle: Callable[[Sequence[Message]], Mapping[str, BaseException]]
        try:
            handler = self._handler(task.handler, handlers)
            handle = handler.handle_batch
            single = one_at_a_time(handler) if task.size == 1 else None
        except BaseException as exc:  # could not even be built: every call fails with it
            handle = _raiser(exc)
        messages, size, last = task.messages, task.size, task.calls - 1
        durations, clock = task.durations, time.monotonic
        acquire, release = self._lock.acquire, self._lock.release  # (cheaper than `with`)
        for i in range(last + 1):
            failed: CallResult | None = None
            if single is not None:
                try:
                    single(messages[i])
                except BaseException as exc:  # reported to the caller, never lost
                    failed = CallResult(i, [messages[i]], 0.0, error=exc)
            else:
                call = messages[i * size : (i + 1) * size]
                try:
                    failures = handle(call)
                    if failures:
                        failed = CallResult(i, call, 0.0, failures)
                except BaseException as exc:
                    failed = CallResult(i, call, 0.0, error=exc)
            ended = clock()
            acquire()
            try:
                if task.abandoned:
                    return
                durations.append(ended - began)  # the call is done: task.done grows
                if failed is not None:
                    failed.duration = ended - began
                    task.failed.append(failed)
                    if self._should_stop(failed):
                        self._halt_all()
                if task.halt or i == last:
                    task.started = None
                    return
                task.started = began = ended
            finally:
                release()

    def _should_stop(self, result: CallResult) -> bool:
        """``stops``, never raising into the worker (a dead worker strands its task): when
        the call cannot be told apart from an outage, stop; the rest stays pending."""
        try:
            return self._stops(result)
        except Exception:
            return True

    def _handler(self, name: str, handlers: dict[str, Handler]) -> Handler:
        handler = handlers.get(name)
        if handler is None:
            handler = handlers[name] = self._make_handler(name)
        return handler


def _raiser(exc: BaseException) -> Callable[[Sequence[Message]], Mapping[str, BaseException]]:
    def handle(messages: Sequence[Message]) -> Mapping[str, BaseException]:
        raise exc

    return handle
