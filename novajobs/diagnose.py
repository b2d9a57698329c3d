"""Driver errors that need no traceback: a misconfigured deployment, or a store's answer.

A certificate that does not verify, a Redis node that is a replica or a cluster node
talked to as a single server, ClickHouse refusing the credentials or missing a table:
the drivers raise these as connection or response errors, and trying again only
repeats them. ``known_failure(exc)`` names them in one line -- a ``ConfigError``
(exit 78) -- and any other error ClickHouse answered with a code as a ``JobFailed``
(exit 1, one line: the server said why). Anything else is None and keeps its usual
handling.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator

from novajobs.errors import (
    ConfigError,
    JobFailed,
    NovajobsError,
    UnavailableError,
    is_driver_error,
)

# What OpenSSL (Python's ssl, urllib3) and libpq say when verification fails.
_TLS_REASONS = [
    re.compile(r"certificate verify failed(: [^(]+)?", re.I),
    re.compile(r"server certificate for .+? does not match host name \"[^\"]*\""),
    re.compile(r"(tlsv1[3]? alert )?(unknown ca|certificate required|bad certificate)", re.I),
]
# The store an error came from, by the top module of its type or of an error it wraps.
_STORES = {
    "redis": "Redis",
    "psycopg": "PostgreSQL",
    "clickhouse_connect": "ClickHouse",
    "minio": "S3",
    "urllib3": "S3",
    "elastic_transport": "Elasticsearch",
    "elasticsearch": "Elasticsearch",
}


# ClickHouse codes that mean the configuration is wrong: authentication failed, unknown
# user, access denied, unknown table, unknown database.
_CLICKHOUSE_CONFIG_CODES = {516, 192, 497, 60, 81}
_CLICKHOUSE_ERROR = re.compile(r"Code: (\d+)\. DB::Exception: (.+?)(?: \(version [^)]*\))?"
                               r"(?: \(for url [^)]*\))?\s*$", re.S)


def known_failure(exc: BaseException) -> NovajobsError | None:
    line = _tls_failure(exc) or _redis_topology(exc)
    return ConfigError(line) if line else _clickhouse_error(exc)


def _clickhouse_error(exc: BaseException) -> NovajobsError | None:
    if not is_driver_error(exc, "clickhouse_connect.driver.exceptions", "DatabaseError"):
        return None
    found = _CLICKHOUSE_ERROR.search(str(exc))
    if found is None:
        return None
    code, message = int(found.group(1)), " ".join(found.group(2).split())
    line = f"ClickHouse error {code}: {message[:300]}"
    if message.startswith("Error initializing EmbeddedServer"):  # a process outside novajobs
        return UnavailableError(f"{line} (the embedded ClickHouse path is in use by another "
                                "process)")
    return ConfigError(line) if code in _CLICKHOUSE_CONFIG_CODES else JobFailed(line)


def _tls_failure(exc: BaseException) -> str | None:
    reason = next((_verify_reason(err) for err in _chain(exc) if _verify_reason(err)), None)
    if reason is None:
        return None
    return (
        f"{_store(exc)} TLS verification failed: {reason}; check the CA (tls_ca_file, or"
        " sslrootcert in DATABASE_URL), the client certificate and the host name in the URL"
    )


def _verify_reason(err: BaseException) -> str | None:
    """Why verification failed, as OpenSSL or libpq put it, if ``err`` says it did."""
    text = " ".join(str(err).split())
    if isinstance(err, ssl.SSLCertVerificationError):
        text = f"certificate verify failed: {err.verify_message}"
    for pattern in _TLS_REASONS:
        if found := pattern.search(text):
            return found.group(0).rstrip(" .")
    return None


def _redis_topology(exc: BaseException) -> str | None:
    # redis-py's cluster client follows redirections itself (and raises ClusterError when
    # it cannot): a MOVED/ASK that reaches us comes from the plain client on a cluster node.
    if is_driver_error(exc, "redis.exceptions", "AskError"):
        return (
            "Redis answered MOVED/ASK: REDIS_URL is a Redis Cluster node, but redis_mode is"
            " single; set redis_mode to auto (or cluster)"
        )
    if is_driver_error(exc, "redis.exceptions", "ReadOnlyError"):
        return "Redis refused a write: REDIS_URL points at a read-only replica, not a primary"
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error, what caused it, and the errors it carries (urllib3's ``reason``...)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        linked = [err.__cause__, err.__context__, getattr(err, "reason", None),
                  *getattr(err, "errors", ()), *err.args]
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _store(exc: BaseException) -> str:
    for err in _chain(exc):
        store = _STORES.get(type(err).__module__.split(".")[0])
        if store:
            return store
    return "a store's"

