"""Network faults on loopback: a black hole (accepts connections, never answers) and a
refused port (nothing listens). What a hung or a stopped store looks like to a client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class BlackHole:
    """A listener that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # kept open: the client waits for an answer

    def wait_for_client(self, timeout: float = 30) -> None:
        """Until a client has connected (and is now waiting on us)."""
        give_up = time.monotonic() + timeout
        while not self.accepted:
            assert time.monotonic() < give_up, "nobody connected to the black hole"
            time.sleep(0.02)

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        for conn in self.accepted:
            conn.close()
        self.listener.close()


@contextmanager
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then released, never listened)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
