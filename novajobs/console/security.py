"""Who may do what in the console.

- Bound to loopback (the default), anyone on this host may look; a non-loopback bind
  refuses to start without ``console_token`` and then every page needs it (except the
  probes /healthz and /readyz).
- Every action (any request that is not GET/HEAD) needs the token: ``Authorization:
  Bearer TOKEN`` (scripts, the API), or the session cookie set by /login (the browser).
- CSRF: the session cookie is ``SameSite=Strict`` and ``HttpOnly``; a request carried by
  it must also send the CSRF token (a form field or the ``X-CSRF-Token`` header, derived
  from the token) and, when the browser says where it comes from (``Origin``,
  ``Sec-Fetch-Site``), come from the console itself. A bearer token is never sent by a
  browser on its own, so it needs neither.
- On a loopback bind the ``Host`` header must name the console (DNS rebinding).
- Read-only mode refuses every action, token or not.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

COOKIE = "novajobs_console"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Guard:
    token: str
    host: str
    port: int
    read_only: bool

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def derived(self, purpose: str) -> str:
        return hmac.new(self.token.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    @property
    def session(self) -> str:
        return self.derived("session")

    @property
    def csrf(self) -> str:
        return self.derived("csrf")

    def token_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def host_ok(self, host_header: str | None) -> bool:
        """On loopback, only requests naming the console itself (no DNS rebinding)."""
        if not self.loopback:
            return True
        allowed = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]", self.host)}
        return (host_header or "").lower() in allowed

    def how_authenticated(self, headers: Any) -> str | None:
        """"bearer", "cookie" or None."""
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and self.token_ok(auth[7:].strip()):
            return "bearer"
        cookie = SimpleCookie(headers.get("Cookie") or "")
        if COOKIE in cookie and hmac.compare_digest(cookie[COOKIE].value.encode(),
                                                    self.session.encode()):
            return "cookie"
        return None

    def may_read(self, headers: Any) -> bool:
        return self.loopback or self.how_authenticated(headers) is not None

    def action_refusal(self, headers: Any, csrf_given: str | None) -> tuple[int, str] | None:
        """Why an action must be refused (status, reason), or None if it may go ahead."""
        if self.read_only:
            return 403, "the console is read-only"
        how = self.how_authenticated(headers)
        if how is None:
            return 401, "this action needs the console token (log in, or Authorization: Bearer)"
        return self.cookie_refusal(headers, csrf_given) if how == "cookie" else None

    def cookie_refusal(self, headers: Any, csrf_given: str | None) -> tuple[int, str] | None:
        """A request the browser sent with the session cookie: from this console, and with
        the CSRF token that only the console's own pages carry."""
        if not self.same_origin(headers):
            return 403, "cross-site request refused"
        if not csrf_given or not hmac.compare_digest(str(csrf_given).encode(),
                                                     self.csrf.encode()):
            return 403, "missing or wrong CSRF token"
        return None

    def same_origin(self, headers: Any) -> bool:
        site = headers.get("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            return False
        origin = headers.get("Origin")
        if origin and origin != "null":
            return bool(urlsplit(origin).netloc.lower() == (headers.get("Host") or "").lower())
        return bool(origin != "null")

    def session_cookie(self) -> str:
        return f"{COOKIE}={self.session}; Path=/; HttpOnly; SameSite=Strict"
