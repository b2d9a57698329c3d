"""Network faults on loopback: a black hole (accepts connections, never answers), a
refused port (nothing listens) and a proxy that can be cut (a store killed mid-run).
What a hung, a stopped or a dying store looks like to a client. The tests and
scripts/faults.py use them."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from novajobs_dev.stack import reserved_port


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

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


class Proxy:
    """A TCP proxy on loopback in front of a real store. ``cut()`` is the store dying
    mid-run: every connection through it is reset and the port refuses new ones;
    ``restore()`` is the store back on the same port."""

    def __init__(self, target_port: int, cut_on_first_reply: bool = False) -> None:
        """``cut_on_first_reply``: die by itself right after the store's first answer
        (a client mid-session then, not one that has not connected yet)."""
        self.target = ("127.0.0.1", target_port)
        self.armed = cut_on_first_reply
        self.port = reserved_port()  # free again for restore(), whatever connects meanwhile
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _shut(listener)  # wakes the accept() blocked in its thread: the port refuses
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _shut(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=_pump, args=(client, server), daemon=True).start()
            threading.Thread(target=_pump, args=(server, client, self._replied),
                             daemon=True).start()

    def _replied(self) -> None:
        if self.armed:
            self.armed = False
            threading.Thread(target=self.cut, daemon=True).start()

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shut(sock: socket.socket) -> None:
    """Close at once, waking a thread blocked on it (a bare close() would not)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _pump(source: socket.socket, sink: socket.socket,
          sent: Callable[[], None] = lambda: None) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
            sent()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
