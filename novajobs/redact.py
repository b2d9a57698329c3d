"""Secrets never leave the process: one place that masks them in any text going out.

Everything novajobs writes passes through ``redact_text``: log lines (message, fields and
tracebacks, third-party loggers included), error lines, run records, alerts, pings and
``--json`` output. It masks

- the password of any URL (``scheme://user:PASSWORD@host``),
- the value of any URL query or ``key=value`` parameter whose name says it is a
  credential (``password``, ``sslpassword``, ``api_key``, ``token``, ``secret``, ...),
- every secret value of the loaded settings, wherever it appears (a webhook URL whose
  token is its path, a password a driver quotes in an error). ``load_settings``
  registers them through ``remember``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "****"
# Secrets shorter than this are only masked where their form shows them (URL password,
# credential parameter): masking every "abc" in every line would garble the logs.
MIN_SCRUBBED_LEN = 4

_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@", re.I)
# A parameter is a credential by its name: it ends in one of these (sslpassword,
# x-api-key, access_token, X-Amz-Signature...).
_CREDENTIAL_NAME = (
    r"[\w.-]*(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|apikey|signature|credential)"
)
_PARAMETER = re.compile(
    rf"(?P<name>\b{_CREDENTIAL_NAME})(?P<eq>\s*=\s*)(?P<value>'[^']*'|[^&\s#'\",;]+)", re.I
)

_known: set[str] = set()
_known_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def remember(values: Iterable[str]) -> None:
    """Mask these values from now on in everything ``redact_text`` sees."""
    global _pattern
    # Each also as it appears inside a JSON string (a quote or backslash escaped).
    forms = {form for v in values for form in (v, json.dumps(v)[1:-1])}
    fresh = {v for v in forms if len(v) >= MIN_SCRUBBED_LEN} - _known
    if not fresh:
        return
    with _known_lock:
        _known.update(fresh)
        longest_first = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in longest_first))


def redact_text(text: str) -> str:
    """``text`` with every secret in it masked."""
    if _pattern is not None:
        text = _pattern.sub(MASK, text)
    text = _USERINFO.sub(rf"\g<head>:{MASK}@", text)
    return _PARAMETER.sub(rf"\g<name>\g<eq>{MASK}", text)


def redact_url(value: str) -> str:
    """A URL as it may be shown: password and credential parameters masked
    (``redis://:s3cret@host/0?password=x`` -> ``redis://:****@host/0?password=****``)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return redact_text(value)
    if parts.password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:{MASK}@{hostinfo}")
    return redact_text(urlunsplit(parts))


def url_secrets(value: str) -> list[str]:
    """The secret parts of a URL (password, credential parameters), for ``remember``."""
    try:
        parts = urlsplit(value)
        found = [parts.password] if parts.password else []
    except ValueError:
        found = []
    found += [m["value"].strip("'") for m in _PARAMETER.finditer(value)]
    return [form for s in found if s for form in {s, unquote(s)}]
