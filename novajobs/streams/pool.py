"""A bounded pool of worker threads with a per-call timeout (seed 004's worker pool).

Python cannot kill a thread, so a call that overruns its timeout is *abandoned*: the
caller is told at once (the entry is retried), its late result is ignored, and its
thread keeps its slot until the call returns, so never more than ``size`` handler
calls run at the same time. Threads are daemons: a call stuck for good cannot keep the
process alive after the run has ended.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from novajobs.streams.handlers import Handler, Message


@dataclass(eq=False)
class Task:
    """One handler call: up to ``batch_size`` messages of one stream."""

    stream: str
    handler: str
    messages: list[Message]
    started: float | None = None  # monotonic time the call began (set by the worker)
    finished: bool = False  # the call returned (its result may not be collected yet)
    abandoned: bool = False  # given up on by the caller after a timeout


@dataclass
class TaskResult:
    task: Task
    duration: float
    failures: dict[str, BaseException] = field(default_factory=dict)  # by entry_id
    error: BaseException | None = None  # the whole call failed (or could not start)


_STOP = object()


class WorkerPool:
    def __init__(self, size: int, make_handler: Callable[[str], Handler]) -> None:
        self.size = size
        self._make_handler = make_handler
        self._tasks: queue.Queue[object] = queue.Queue()
        self._results: queue.Queue[TaskResult] = queue.Queue()
        self._lock = threading.Lock()
        self._busy = 0  # submitted and not returned by a worker (abandoned ones included)
        self._waiting: set[Task] = set()  # submitted, result not yet collected or abandoned
        self._running: dict[int, Task] = {}  # thread ident -> the task it is running
        self._threads = [
            threading.Thread(target=self._work, name=f"drain-worker-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    # -- the caller's side ----------------------------------------------------------------
    @property
    def free(self) -> int:
        with self._lock:
            return self.size - self._busy

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def submit(self, task: Task) -> None:
        with self._lock:
            self._busy += 1
            self._waiting.add(task)
        self._tasks.put(task)

    def collect(self, timeout: float) -> list[TaskResult]:
        """Results ready now, waiting up to ``timeout`` for the first one."""
        out: list[TaskResult] = []
        try:
            out.append(self._results.get(timeout=timeout) if timeout > 0 else
                       self._results.get_nowait())
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        with self._lock:  # a task leaves `waiting` only once its result is in hand
            for result in out:
                self._waiting.discard(result.task)
        return out

    def expire(self, limit: float) -> list[Task]:
        """Abandon the calls running longer than ``limit`` seconds; returns their tasks."""
        now = time.monotonic()
        with self._lock:
            late = [
                t
                for t in self._waiting
                if t.started is not None and not t.finished and now - t.started > limit
            ]
            for task in late:
                task.abandoned = True
                self._waiting.discard(task)
        return late

    def next_expiry(self, limit: float) -> float | None:
        """Seconds until the oldest running call overruns ``limit`` (None: nothing runs)."""
        with self._lock:
            starts = [t.started for t in self._waiting if t.started is not None and not t.finished]
        return None if not starts else max(0.0, min(starts) + limit - time.monotonic())

    def shutdown(self) -> None:
        """Let idle workers close their handlers and exit; stuck ones are left behind."""
        for _ in self._threads:
            self._tasks.put(_STOP)
        deadline = time.monotonic() + 5
        for thread in self._threads:
            with self._lock:
                stuck = self._running.get(thread.ident or 0)
            if stuck is None or not stuck.abandoned:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- the worker's side ----------------------------------------------------------------
    def _work(self) -> None:
        handlers: dict[str, Handler] = {}
        try:
            while (task := self._tasks.get()) is not _STOP:
                assert isinstance(task, Task)
                with self._lock:
                    self._running[threading.get_ident()] = task
                result = self._call(task, handlers)
                with self._lock:
                    del self._running[threading.get_ident()]
                    self._busy -= 1
                    task.finished = True
                    if task.abandoned:
                        continue  # the caller already retried it
                    self._results.put(result)
        finally:
            for handler in handlers.values():
                with contextlib.suppress(Exception):  # closing must not hide the outcome
                    handler.close()

    def _call(self, task: Task, handlers: dict[str, Handler]) -> TaskResult:
        task.started = time.monotonic()
        try:
            handler = handlers.get(task.handler)
            if handler is None:
                handler = handlers[task.handler] = self._make_handler(task.handler)
            failures = dict(handler.handle_batch(task.messages))
            return TaskResult(task, time.monotonic() - task.started, failures)
        except BaseException as exc:  # reported to the caller, never lost
            return TaskResult(task, time.monotonic() - task.started, error=exc)
