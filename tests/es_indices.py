"""Elasticsearch fixtures shared by the index jobs' tests (forcemerge, expire), and
``ShardProxy``, which plays what the emulator cannot in front of it.

The emulator really keeps indices, creation dates, aliases with is_write_index, closed
indices and answers _stats, _forcemerge and _tasks; but every non-empty shard has one
segment and a merge ends at once (its task id is then unknown to _tasks). To test
candidates and long merges, ``ShardProxy`` sits in front of it: it passes every request
through and only (a) reports N segments for chosen indices until they are merged and
(b) answers a force-merge with a task that runs for a chosen time (or number of polls).
"""

from __future__ import annotations

import http.client
import http.server
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DAY_MS = 86_400_000


@pytest.fixture
def es(es_server: None, stack: Any, names: dict[str, str]) -> Iterator[Any]:
    """A client of the emulator; the test's indices (``p`` prefix) are deleted afterwards."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(stack.env()["ELASTICSEARCH_URL"], request_timeout=30)
    yield client
    mine = client.cat.indices(index=f"{names['schema']}-*", format="json", h="index",
                              expand_wildcards="open,closed")
    if mine:  # the emulator refuses wildcard deletes
        client.indices.delete(index=",".join(row["index"] for row in mine))
    client.close()


@pytest.fixture
def p(names: dict[str, str]) -> str:
    """This test's index name prefix."""
    return f"{names['schema']}-"


def make_index(es: Any, name: str, age_days: float = 10, docs: int = 2,
               aliases: dict[str, Any] | None = None) -> None:
    created = int(time.time() * 1000 - age_days * DAY_MS)
    es.indices.create(index=name, settings={"index.creation_date": created},
                      aliases=aliases or None)
    for n in range(docs):
        es.index(index=name, document={"n": n, "msg": "hello"}, refresh=True)


class ShardProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.segments: dict[str, int] = {}  # index -> segments per shard copy until merged
        self.merge_sec = 0.0  # how long a merge task runs
        self.merge_polls = 0  # polls a merge task answers "not completed" to, however long
        self.fail: set[str] = set()  # indices whose force-merge is answered 500
        self.emulator_tasks = False  # pass force-merges through (emulator's unknown task ids)
        self.merged_at: dict[str, float] = {}  # index -> when its merge is (was) done
        self.tasks: dict[str, tuple[str, float]] = {}  # task id -> (index, done at)
        self.polls_left: dict[str, int] = {}  # task id -> polls still answered "running"
        self.merges: list[tuple[str, float, dict[str, list[str]]]] = []  # index, at, query
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                status, headers, out = proxy.answer(self.command, self.path, dict(self.headers),
                                                    body)
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def is_merged(self, index: str) -> bool:
        done = self.merged_at.get(index)
        return done is not None and time.time() >= done

    # -- what is played on top of the emulator -----------------------------------------
    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        if method == "POST" and len(parts) == 2 and parts[1] == "_forcemerge":
            return self.force_merge(parts[0], path, headers, body, parse_qs(url.query))
        if method == "GET" and len(parts) == 2 and parts[0] == "_tasks" and parts[1] in self.tasks:
            return self.task(parts[1])
        status, out_headers, out = self.forward(method, path, headers, body)
        if method == "GET" and parts[1:] == ["_stats", "segments"] and status == 200:
            out = self.inflate(parts[0], out)
        return status, out_headers, out

    def inflate(self, index: str, raw: bytes) -> bytes:
        if index not in self.segments or self.is_merged(index):
            return raw
        stats = json.loads(raw)
        for copies in stats["indices"][index]["shards"].values():
            for copy in copies:
                copy["segments"]["count"] = self.segments[index]
        return json.dumps(stats).encode()

    def force_merge(self, index: str, path: str, headers: dict[str, str], body: bytes,
                    query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        self.merges.append((index, time.time(), query))
        if index in self.fail:
            error = {"error": {"root_cause": [], "type": "exception", "reason": "merge blew up"},
                     "status": 500}
            return 500, {"X-Elastic-Product": "Elasticsearch",
                         "Content-Type": "application/json"}, json.dumps(error).encode()
        status, out_headers, out = self.forward("POST", path, headers, body)
        if self.emulator_tasks or status != 200:
            self.merged_at[index] = time.time()
            return status, out_headers, out
        task = f"proxy:{len(self.tasks) + 1}"
        self.tasks[task] = (index, time.time() + self.merge_sec)
        self.polls_left[task] = self.merge_polls
        self.merged_at[index] = time.time() + self.merge_sec if not self.merge_polls else math.inf
        return 200, out_headers, json.dumps({"task": task}).encode()

    def task(self, task: str) -> tuple[int, dict[str, str], bytes]:
        index, done_at = self.tasks[task]
        with self._lock:
            running = self.polls_left[task] > 0 or time.time() < done_at
            self.polls_left[task] -= 1
            if not running and self.merged_at[index] == math.inf:
                self.merged_at[index] = time.time()  # done now, at the poll that says so
        answer: dict[str, Any] = {"completed": not running,
                                  "task": {"action": "indices:admin/forcemerge",
                                           "description": f"Force-merge indices [{index}]"}}
        if answer["completed"]:
            answer["response"] = {"_shards": {"total": 2, "successful": 1, "failed": 0}}
        return 200, {"X-Elastic-Product": "Elasticsearch",
                     "Content-Type": "application/json"}, json.dumps(answer).encode()

    def forward(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            send = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, path, body=body or None, headers=send)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()
