"""Validators for settings: each takes a value and returns a complaint, or None when it is
fine. The complaint completes "setting NAME (SOURCE) ...", e.g. "must be greater than 0".

The bottom floor: this module imports nothing of novajobs. A validator that needs to
know more (the registered jobs, a parser) is given it as an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Validator = Callable[[Any], str | None]  # a complaint, or None when the value is fine


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def one_of(*choices: str) -> Validator:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def url_with_scheme(*schemes: str) -> Validator:
    def check(value: Any) -> str | None:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError on a malformed port
        except ValueError as exc:
            return f"is not a valid URL ({exc})"
        if parts.scheme not in schemes:
            return f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
        if parts.scheme == "chdb" and (parts.netloc or not parts.path.startswith("/")):
            return "must name an absolute directory: chdb:///path (three slashes)"
        if parts.scheme not in ("unix", "chdb") and not parts.hostname:
            return "has no host"
        return None

    return check


def no_credentials(value: Any) -> str | None:
    """For a URL whose driver takes the user and password as settings of their own."""
    if "@" in urlsplit(value).netloc:
        return "must not contain a user or password (their settings take them: see config)"
    return None


def host_port(value: Any) -> str | None:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or "/" in value or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be host:port (no scheme), e.g. 127.0.0.1:9000"
    return None


def timezone_name(value: Any) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not a known IANA time zone (e.g. UTC, Europe/Berlin)"
    return None


def pairs_of(value_check: Validator, example: str) -> Validator:
    """A list of ``name=value`` items (e.g. stream=handler), each value passing ``value_check``."""

    def check(value: Any) -> str | None:
        for item in value:
            name, sep, raw = str(item).partition("=")
            if not sep or not name.strip() or not raw.strip():
                return f"item {item!r} is not NAME=VALUE (e.g. {example})"
            complaint = value_check(raw.strip())
            if complaint:
                return f"item {item!r}: {complaint}"
        return None

    return check


def text(value: Any) -> str | None:
    return None


def fraction(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "must be from 0 to 1"


def at_least_one(value: Any) -> str | None:
    return None if value >= 1 else "must be 1 or more"


def int_between(low: int, high: int) -> Validator:
    def check(value: Any) -> str | None:
        try:
            ok = low <= int(value) <= high
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"must be an integer from {low} to {high}"

    return check


def http_url_or_empty(*placeholders: str) -> Validator:
    """An http(s) URL that may hold ``{placeholder}``s from ``placeholders``; "" = off."""

    def check(value: Any) -> str | None:
        import string

        if not value:
            return None
        try:
            names = {n for _, n, _, _ in string.Formatter().parse(value) if n is not None}
        except ValueError as exc:
            return f"is not a valid URL template ({exc})"
        unknown = sorted(names - set(placeholders))
        if unknown:
            known = ", ".join("{" + p + "}" for p in placeholders) or "none"
            return f"has an unknown placeholder {{{unknown[0]}}} (known: {known})"
        return url_with_scheme("http", "https")(value.format(**dict.fromkeys(placeholders, "x")))

    return check


def k8s_quantity(value: Any) -> str | None:
    """A Kubernetes resource quantity (100m, 0.5, 256Mi, 1G), or "" for none."""
    import re

    if value == "" or re.fullmatch(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?", str(value)):
        return None
    return "must be a Kubernetes quantity such as 100m, 1, 256Mi (or empty for none)"


def names_in(known: Callable[[], Collection[str]], what: str) -> Validator:
    """Names out of ``known()`` (e.g. the registered jobs), or "*" for all of them."""

    def check(value: Any) -> str | None:
        names = set(known())
        unknown = [name for name in value if name != "*" and name not in names]
        if unknown:
            return f"names unknown {what} {unknown[0]!r} (use {what} names or *)"
        return None

    return check


def parsed_by(parse: Callable[[str], object], complaint: str | None = None, *,
              empty_ok: bool = False) -> Validator:
    """A value ``parse`` accepts (it raises ValueError otherwise); the complaint is
    ``complaint``, or the ValueError's own message. ``empty_ok``: "" is fine too."""

    def check(value: Any) -> str | None:
        if empty_ok and not value:
            return None
        try:
            parse(value)
        except ValueError as exc:
            return complaint or str(exc)
        return None

    return check


def non_empty(value: Any) -> str | None:
    return None if str(value).strip() else "must not be empty"


def email_addresses(value: Any) -> str | None:
    bad = [item for item in value if "@" not in item.strip("@")]
    return f"item {bad[0]!r} is not an email address" if bad else None



# -- TLS files and connection URLs ---------------------------------------------------


def both(first: Validator, second: Validator) -> Validator:
    def check(value: Any) -> str | None:
        return first(value) or second(value)

    return check


def file_or_empty(value: Any) -> str | None:
    """A file that exists and can be read (checked before any connection), or ''."""
    if not value:
        return None
    try:
        with open(value, "rb"):
            return None
    except OSError as exc:
        return f"names {value}, which cannot be read ({exc.strerror or exc})"


def ca_file_or_empty(value: Any) -> str | None:
    """A readable PEM bundle with at least one CA certificate, or ''."""
    import ssl

    complaint = file_or_empty(value)
    if complaint or not value:
        return complaint
    try:
        ssl.create_default_context(cafile=value)
    except ssl.SSLError:
        return f"names {value}, which holds no PEM certificate"
    return None


def libpq_tls_files(value: Any) -> str | None:
    """The files a libpq URL names (sslrootcert, sslcert, sslkey) must exist."""
    from urllib.parse import parse_qs

    for name, paths in parse_qs(urlsplit(value).query).items():
        if name in ("sslrootcert", "sslcert", "sslkey") and paths[0] != "system":
            complaint = file_or_empty(paths[0])
            if complaint:
                return f"{name} {complaint}"
    return None


def redis_url_options(value: Any) -> str | None:
    """TLS comes from settings, never from REDIS_URL's query: a URL cannot turn
    verification off (redis-py would take ?ssl_cert_reqs=none from it)."""
    from urllib.parse import parse_qs

    options = sorted(name for name in parse_qs(urlsplit(value).query) if name.startswith("ssl"))
    if options:
        return (f"sets {', '.join(options)} in the URL: use tls_ca_file, redis_tls_cert_file"
                " and redis_tls_key_file instead")
    return None
