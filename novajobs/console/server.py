"""`novajobs console`: the web console's HTTP server (the standard library's threading
HTTP server: a handful of pages for a few operators, no dependency to add), its routes
and its security checks (security.py). Pages are rendered by pages.py/opspages.py from
the same data the JSON API under /api/ returns (data.py); actions are in actions.py.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from novajobs.console.actions import ActionError, Triggers
from novajobs.console.security import Guard, is_loopback, new_token
from novajobs.errors import ConfigError, NovajobsError
from novajobs.retry import describe_error

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings

MAX_BODY = 64 * 1024
# A connection that sends nothing (or too slowly) is closed after this long, so idle
# sockets cannot pile up one thread each.
REQUEST_TIMEOUT_SEC = 30
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it, browsers send "Origin: null" on the console's own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class Request:
    method: str
    path: str
    parts: list[str]  # the path's segments, unquoted
    query: dict[str, str]
    headers: Any
    form: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> bool:
        return self.path.startswith("/api/")


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, default=str, ensure_ascii=False).encode(),
                    "application/json")


def html_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode())


def redirect(to: str, **headers: str) -> Response:
    return Response(303, b"", headers={"Location": to, **headers})


Route = Callable[[Request], Response]


class Console:
    """The console's state: settings, one Redis client, the security guard, the runs
    started here, and the routes."""

    def __init__(self, settings: Settings, guard: Guard, client: redis.Redis) -> None:
        self.settings, self.guard, self.redis = settings, guard, client
        self.triggers = Triggers(settings)
        from novajobs.console import routes

        self.routes: list[tuple[str, re.Pattern[str], Route]] = routes.table(self)

    def handle(self, req: Request) -> Response:
        if not self.guard.host_ok(req.headers.get("Host")):
            return json_response({"error": "unknown Host header"}, 421)
        for method, pattern, route in self.routes:
            if method == req.method and pattern.fullmatch(req.path):
                return self._call(route, req)
        return self.error(req, 404, f"no page {req.path}")

    def _call(self, route: Route, req: Request) -> Response:
        try:
            return route(req)
        except ActionError as exc:
            return self.error(req, exc.status, str(exc))
        except NovajobsError as exc:  # an unknown job, bad ids: the CLI's own messages
            return self.error(req, 404 if "unknown job" in str(exc) else 400, str(exc))
        except Exception as exc:
            from novajobs.retry import is_transient

            if is_transient(exc):
                return self.error(req, 503, f"Redis unreachable: {describe_error(exc)}")
            sys.stderr.write(f"novajobs console: {req.method} {req.path}: "
                             f"{describe_error(exc)}\n")
            return self.error(req, 500, "internal error (see the console's stderr)")

    def error(self, req: Request, status: int, message: str) -> Response:
        if req.api:
            return json_response({"error": message}, status)
        from novajobs.console.opspages import error_page

        return html_response(error_page(self.page(req), status, message), status)

    def page(self, req: Request) -> Any:
        from novajobs.console.pages import Page

        logged_in = self.guard.how_authenticated(req.headers) is not None
        return Page(can_act=not self.guard.read_only, logged_in=logged_in,
                    csrf=self.guard.csrf if logged_in else "", read_only=self.guard.read_only)


def make_handler(console: Console) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "novajobs-console"
        sys_version = ""
        timeout = REQUEST_TIMEOUT_SEC

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("GET", head=True)

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str, head: bool = False) -> None:
            try:
                req = self._request(method)
            except ValueError as exc:
                response = json_response({"error": str(exc)}, 400)
            else:
                response = console.handle(req)
            self.send_response(response.status)
            for name, value in {**HEADERS, **response.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if not head:
                self.wfile.write(response.body)

        def _request(self, method: str) -> Request:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            parts = [unquote(p) for p in url.path.split("/")[1:]]
            req = Request(method, url.path, parts, query, self.headers)
            if method == "POST":
                req.form = self._body()
            return req

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("request body too large")
            raw = self.rfile.read(length).decode("utf-8", errors="replace")
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if kind == "application/json":
                data = json.loads(raw or "{}")
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
                return data
            return {k: v[-1] if len(v) == 1 else v for k, v in parse_qs(raw).items()}

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log on stderr: the runs have their own logs

    return Handler


def build(settings: Settings, bind: str, read_only: bool,
          token: str) -> tuple[ThreadingHTTPServer, Console]:
    host, _, port = bind.rpartition(":")
    if not token and not is_loopback(host):
        raise ConfigError(f"console --bind {bind}: not a loopback address, so the setting "
                          "console_token must be set (every request then needs it)")
    from novajobs.connections import redis_client

    client = redis_client(settings)
    guard = Guard(token or new_token(), host.strip("[]"), int(port), read_only)
    console = Console(settings, guard, client)
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), make_handler(console))
    server.daemon_threads = True
    actual = server.server_address[1]
    console.guard = Guard(guard.token, guard.host, int(actual), read_only)
    return server, console


def run_console(settings: Settings, bind: str, read_only: bool) -> int:
    """Serve until SIGTERM or Ctrl-C; exit 0."""
    token = settings.console_token
    try:
        server, console = build(settings, bind, read_only, token)
    except OSError as exc:
        raise ConfigError(f"console --bind {bind}: {exc.strerror or exc}") from None
    host, port = console.guard.host, console.guard.port
    sys.stderr.write(f"novajobs console on http://{host}:{port}/"
                     f"{' (read-only)' if read_only else ''}\n")
    if not token and not read_only:
        sys.stderr.write(f"novajobs console: token for actions (log in with it): "
                         f"{console.guard.token}\n")
    def shutdown(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shutdown)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0
