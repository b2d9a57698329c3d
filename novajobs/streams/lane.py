"""drain-stream's writes to Redis, in order, off the drain's own thread.

Acking a round (with its retries and dead letters, settle.py) is mostly waiting: for
the reply to cross the socket, and for Redis, busy preparing the next batch the drain
read ahead (reader.py). Done in the drain's own thread, that wait is time nobody hands
out or settles entries. So each round is handed to a lane: a thread that runs what
it is given one after the other, in order. The drain waits for the writes only at
the end, before anything that reads the group's state (giving entries back,
trimming); a write that fails (the fence refused it, Redis is down) is raised in the
drain's thread at its next look (``Drainer._written``), as if it had failed there.
(Not a one-thread ThreadPoolExecutor: its thread is joined at interpreter exit, so a
write stuck on a black-holed Redis would hold up the exit the run already decided.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` after everything submitted before; its result (or exception) in
        the future."""
        future: Future[T] = Future()
        if self._thread is None:
            # a daemon: a call that hangs (a black-holed Redis) cannot hold the process
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
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
