"""The real ClickHouse engine (chdb) behind the ClickHouse HTTP interface, for the tests.

No ClickHouse server can be installed here, so this front answers HTTP the way a
ClickHouse server does for what clickhouse-connect sends (see docs/topology.md for what
it does not prove):

- ``GET /ping`` -> ``Ok.``;
- a query in the body (or the ``query`` URL parameter, the body appended; or both it
  and the ``param_*`` as multipart/form-data fields, which clickhouse-connect sends
  once the parameters would make the URL longer than 4 KiB), its
  ``FORMAT`` clause taken as the output format (default ``default_format`` or
  TabSeparated), run by chdb, which produces the bytes itself (Native, JSON, TSV...);
- ``database`` (URL or ``X-ClickHouse-Database``), ``param_*`` server-side parameters,
  every other URL parameter that is a ClickHouse setting applied to that query only;
- the user and password from basic auth, ``X-ClickHouse-User``/``-Key`` or the URL,
  checked: a wrong one is HTTP 403 with exception code 516, as ClickHouse answers;
- errors as ClickHouse sends them: the ``Code: N. DB::Exception: ...`` text, status 404
  (unknown table or database), 400 (syntax) or 500, and ``X-ClickHouse-Exception-Code``;
- for the tests of failures: ``delay = (text, seconds)`` holds every query containing
  ``text`` that long first (a slow query), ``fail_with = (text, error)`` answers such a
  query with that ClickHouse error instead of running it (a server failing).

Responses are never compressed (``Accept-Encoding`` is ignored; clients take a
response without ``Content-Encoding`` as it is). Queries run one at a time.
"""

from __future__ import annotations

import base64
import contextlib
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# URL parameters of the HTTP interface itself, not settings.
_HTTP_PARAMS = {
    "query", "database", "user", "password", "quota_key", "query_id", "session_id",
    "session_timeout", "session_check", "default_format", "wait_end_of_query",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "enable_http_compression", "http_zlib_compression_level", "compress", "decompress",
    "buffer_size", "client_protocol_version", "http_response_buffer_size",
}
_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.I)
_CODE = re.compile(r"Code: (\d+)")
_STATUS = {60: 404, 81: 404, 62: 400, 516: 403}  # unknown table, database; syntax; auth


class ClickHouseHTTP:
    def __init__(self, path: str, user: str = "default", password: str = "",
                 tls: tuple[str, str] | None = None) -> None:
        import chdb

        self.user, self.password = user, password
        self.delay: tuple[str, float] | None = None
        self.fail_with: tuple[str, str] | None = None
        self.requests: list[dict[str, Any]] = []  # what clients sent: path, params, query
        self._conn = chdb.connect(path)  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                front._handle(self)

            def do_POST(self) -> None:
                front._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, database: str, user: str | None = None, password: str | None = None) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        return f"{self.scheme}://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
        with self._lock:
            self._conn.close()

    # -- one request ----------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        split = urlsplit(request.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        kind = request.headers.get("Content-Type", "")
        form = kind.startswith("multipart/form-data")
        if form:  # the query and param_* as form fields (large parameters)
            params.update(_form_fields(kind, raw))
        body = "" if form else raw.decode()
        if split.path.rstrip("/") == "/ping":
            self._reply(request, 200, b"Ok.\n", {})
            return
        if not self._authorized(request, params):
            self._error(request, "Code: 516. DB::Exception: novajobs-front: Authentication "
                        "failed: password is incorrect, or there is no user with such name. "
                        "(AUTHENTICATION_FAILED)")
            return
        query = "\n".join(q for q in (params.get("query", ""), body) if q)
        self.requests.append({"path": split.path, "params": params, "query": query,
                              "form": form})
        match = _FORMAT.search(query)
        fmt = match.group(1) if match else params.get("default_format", "TabSeparated")
        sql = query[: match.start()] if match else query
        database = params.get("database") or request.headers.get("X-ClickHouse-Database")
        settings = {k: v for k, v in params.items()
                    if k not in _HTTP_PARAMS and not k.startswith("param_")}
        bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        if self.delay and self.delay[0] in sql:
            time.sleep(self.delay[1])
        try:
            if self.fail_with and self.fail_with[0] in sql:
                raise RuntimeError(self.fail_with[1])
            data = self._run(sql, fmt, bind, database, settings)
        except Exception as exc:  # chdb raises the engine's error text
            self._error(request, str(exc))
            return
        self._reply(request, 200, data, {"X-ClickHouse-Format": fmt,
                                         "X-ClickHouse-Timezone": "UTC",
                                         "X-ClickHouse-Summary": '{"read_rows":"0"}'})

    def _run(self, sql: str, fmt: str, bind: dict[str, str], database: str | None,
             settings: dict[str, str]) -> bytes:
        if settings:
            clause = ", ".join(f"{k} = {_literal(v)}" for k, v in settings.items())
            sql = f"{sql}\nSETTINGS {clause}" if _is_select(sql) else sql
        with self._lock:
            self._conn.query(f"USE {database or 'default'}", "TabSeparated")
            result = self._conn.query(sql, fmt, params=bind)
        return bytes(result.bytes()) if hasattr(result, "bytes") else bytes(result)

    def _authorized(self, request: BaseHTTPRequestHandler, params: dict[str, str]) -> bool:
        user = request.headers.get("X-ClickHouse-User") or params.get("user")
        password = request.headers.get("X-ClickHouse-Key") or params.get("password", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return (user or "default") == self.user and password == self.password

    def _error(self, request: BaseHTTPRequestHandler, text: str) -> None:
        found = _CODE.search(text)
        code = int(found.group(1)) if found else 1000
        body = text if text.startswith("Code:") else f"Code: {code}. DB::Exception: {text}"
        self._reply(request, _STATUS.get(code, 500), (body.rstrip() + "\n").encode(),
                    {"X-ClickHouse-Exception-Code": str(code)})

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, data: bytes,
               headers: dict[str, str]) -> None:
        with contextlib.suppress(OSError):  # the client gave up (its timeout): nothing to do
            request.send_response(status)
            for name, value in {"Content-Type": "application/octet-stream", **headers}.items():
                request.send_header(name, value)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart/form-data body, by name."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = bytes(part.get_payload(decode=True)).decode()
    return fields


def _is_select(sql: str) -> bool:
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    return head in ("SELECT", "WITH") and " SETTINGS " not in sql.upper()


def _literal(value: str) -> str:
    return value if re.fullmatch(r"-?\d+(\.\d+)?", value) else "'" + value.replace("'", "\\'") + "'"
