"""A TCP proxy in front of a real server (S3, PostgreSQL, Redis) that injects network
faults, and the fixtures of the suite's S3 and PostgreSQL behind one (``s3_proxy``,
``pg_proxy``).

The store behind it is the real one; the proxy only delays or cuts the traffic, as a
slow or failing network or load balancer would. It recognises a multi-object delete by
the start of its request (``POST /bucket?delete``): S3 clients send one request at a
time per connection, so a request starts a read from the client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest


class FaultyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay_deletes = 0.0  # seconds to hold each multi-object delete
        self.latency = 0.0  # seconds added to everything the client sends (any protocol)
        self.fail_after_deletes: int | None = None  # then cut every connection
        self.deletes = 0  # multi-object deletes forwarded
        self.cut_on = b""  # cut a connection whose client sends these bytes...
        self.cuts = 0  # ...this many times (a blip mid-command; other connections go on)
        self.delete_started = threading.Event()  # set when a delete starts being held
        self._broken = False
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.close()
        self._cut_all()

    # -- internals ---------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._broken:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._is_delete(data) and not self._admit_delete():
                    self._cut_all()
                    return
                if from_client and self.cuts and self.cut_on and self.cut_on in data:
                    self.cuts -= 1
                    return  # closes this connection's two sides
                if from_client and self.latency:
                    time.sleep(self.latency)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                _close(s)

    @staticmethod
    def _is_delete(data: bytes) -> bool:
        first_line = data.split(b"\r\n", 1)[0]
        return first_line.startswith(b"POST ") and b"?delete" in first_line

    def _admit_delete(self) -> bool:
        with self._lock:
            if self.fail_after_deletes is not None and self.deletes >= self.fail_after_deletes:
                self._broken = True
                return False
            self.deletes += 1
        if self.delay_deletes:
            self.delete_started.set()
            time.sleep(self.delay_deletes)
        return True

    def _cut_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            _close(s)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@pytest.fixture
def s3_proxy(s3_server: None, stack: Any) -> Iterator[FaultyProxy]:
    """A FaultyProxy in front of the suite's S3 store (``minio_endpoint=s3_proxy.endpoint``)."""
    p = FaultyProxy(int(stack.env()["MINIO_ENDPOINT"].rpartition(":")[2]))
    yield p
    p.close()


@pytest.fixture
def pg_proxy(pg_server: None, stack: Any) -> Iterator[FaultyProxy]:
    """A FaultyProxy in front of the suite's PostgreSQL (its ``port`` in a DATABASE_URL)."""
    p = FaultyProxy(stack.ports["postgres"])
    yield p
    p.close()
