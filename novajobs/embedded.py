"""Embedded ClickHouse (``chdb://PATH``): one process at a time on a data path.

chdb opens its data path for one process only: a second process fails with "Error
initializing EmbeddedServer". The shipped schedule starts refresh-trending and
refresh-suggestions in the same minute, so a run waits for the path instead: it holds
an advisory lock on the directory (``flock``) from opening the client until it closes
it, and waits for another run's within its own time budget (a stop request wakes the
wait). A path still busy when the budget is spent is exit 69: the next run may find it
free. Clients of one process share the hold (chdb allows that).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from novajobs.errors import UnavailableError

if TYPE_CHECKING:
    from novajobs.context import Guard
    from novajobs.output import JobLog

POLL_SEC = 0.2
_held: dict[str, list[int]] = {}  # path -> [directory fd, clients of this process]
_mutex = threading.Lock()


def hold_path(path: str, guard: Guard, log: JobLog, wait_sec: float) -> Callable[[], None]:
    """Wait until no other process uses ``path`` (at most the run's remaining time, or
    ``wait_sec`` without a deadline), hold it, and return the function that lets go."""
    with _mutex:
        if path in _held:
            _held[path][1] += 1
            return lambda: _let_go(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _wait_for(fd, path, guard, log, wait_sec)
    except BaseException:
        os.close(fd)
        raise
    with _mutex:
        _held[path] = [fd, 1]
    return lambda: _let_go(path)


def _wait_for(fd: int, path: str, guard: Guard, log: JobLog, wait_sec: float) -> None:
    started = time.monotonic()
    left = guard.remaining()
    give_up = started + (wait_sec if left is None else left)
    if _try_lock(fd):
        return
    log.info("the embedded ClickHouse path is in use by another run; waiting", path=path)
    while True:
        if time.monotonic() + POLL_SEC > give_up:
            raise UnavailableError(
                f"the embedded ClickHouse path {path} was in use by another process for "
                f"{time.monotonic() - started:.0f} s, the run's budget")
        guard.sleep(POLL_SEC)  # raises Interrupted at once on a stop request
        if _try_lock(fd):
            log.info("the embedded ClickHouse path is free", path=path,
                     waited_ms=round((time.monotonic() - started) * 1000))
            return


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _let_go(path: str) -> None:
    with _mutex:
        entry = _held.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[path]
    os.close(entry[0])  # closing the descriptor releases the flock
