"""One small HTTP sender for the reporting side-channels (Pushgateway, health-check pings).

Standard library only, imported lazily: a run that reports nowhere never loads
urllib/http.client/ssl, and the image needs no extra package. ``user:password@`` in
the URL becomes HTTP basic auth (urllib would otherwise send it nowhere).
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit

from novajobs import __version__

USER_AGENT = f"novajobs/{__version__}"


class ReportError(Exception):
    """A push or ping was refused or could not be sent. The message never holds the URL."""


def send(url: str, body: bytes, *, method: str, timeout: float, content_type: str) -> None:
    """Send ``body`` to ``url``; raise ReportError on anything but a 2xx answer."""
    import http.client
    import urllib.error
    import urllib.request

    bare, auth = split_credentials(url)
    headers = {"Content-Type": content_type, "User-Agent": USER_AGENT}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(bare, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        raise ReportError(f"HTTP {exc.code} {exc.reason}: {detail}".rstrip(": ")) from None
    except urllib.error.URLError as exc:
        raise ReportError(f"cannot connect: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ReportError(f"{type(exc).__name__}: {exc}") from None


def split_credentials(url: str) -> tuple[str, str | None]:
    """``https://u:p@host/x`` -> (``https://host/x``, ``Basic ...``)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    user, password = unquote(parts.username), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"
