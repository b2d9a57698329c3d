"""The Redis round trips of drain-stream's hot path, in order, off the drain's thread.

Reading a batch and acking a round are mostly waiting: for Redis to prepare thousands
of entries, for the reply to cross the socket and be parsed. Done in the drain's own
thread, that wait is time nobody hands out or settles entries. So a read started
ahead (reader.py) and each round's writes (settle.py) go through one thread of their
own, one after the other in the order given, and the drain waits only for what it
needs now: the next batch, or, at the end and before anything that reads the
group's state (giving entries back, trimming), every write handed over.

A write that fails (the fence refused it, Redis is down) is raised in the drain's
thread at its next look (``Drainer._written``), as if it had failed there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Lane:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` after everything submitted before; its result (or exception) in
        the future."""
        future: Future[T] = Future()
        if self._thread is None:
            # a daemon: a call that hangs (a black-holed Redis) cannot hold the process
            self._thread = threading.Thread(target=self._run, name="drain-redis", daemon=True)
            self._thread.start()
        self._jobs.put((future, fn))
        return future

    def close(self) -> None:
        """The thread ends once what was submitted is done (nothing waits for it)."""
        if self._thread is not None:
            self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # raised by ``result()`` in the caller's thread
                    future.set_exception(exc)
