"""Which errors are transient, which are misconfiguration, and the one retry policy used
at every named retry point.

Drivers are imported lazily, so the exception types are looked up by name among the
modules already loaded: an error from a driver that was never imported cannot be raised
anyway.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from novajobs.errors import ConfigError, Interrupted, Outcome, is_driver_error
from novajobs.redact import redact_text

if TYPE_CHECKING:
    from novajobs.context import Guard
    from novajobs.output import JobLog
    from novajobs.settings import Settings

T = TypeVar("T")

_TRANSIENT_BY_MODULE = {
    "redis.exceptions": ("ConnectionError", "TimeoutError", "BusyLoadingError",
                         # a Redis Cluster mid-failover or mid-resharding
                         "ClusterError", "TryAgainError", "SlotNotCoveredError"),
    "clickhouse_connect.driver.exceptions": ("OperationalError",),
    "urllib3.exceptions": ("HTTPError",),  # minio: MaxRetryError, ProtocolError, ...
    "neo4j.exceptions": ("ServiceUnavailable", "SessionExpired", "TransientError"),
    "elastic_transport": ("ConnectionError", "ConnectionTimeout"),
}
# Errors no retry can fix: credentials, names of things that do not exist, TLS setup.
# Checked before the transient ones (redis-py's AuthenticationError is a ConnectionError).
_MISCONFIGURED_BY_MODULE = {
    "redis.exceptions": ("AuthenticationError", "AuthorizationError",
                         "AuthenticationWrongNumberOfArgsError", "NoPermissionError"),
    "neo4j.exceptions": ("AuthError", "ConfigurationError"),
    "elasticsearch.exceptions": ("AuthenticationException", "AuthorizationException"),
    "elastic_transport": ("TlsError",),
    "ssl": ("SSLCertVerificationError",),
}
# PostgreSQL: connection exceptions (class 08) and administrator shutdowns only; a
# statement timeout or a deadlock is not something to blindly run again.
_PG_TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03")
# A failed connection carries no SQLSTATE in psycopg: libpq's message tells. These are
# the server's (and libpq's) words for "this configuration can never connect".
_PG_MISCONFIGURED = re.compile(
    r"password authentication failed|database \S+ does not exist|role \S+ does not exist"
    r"|no pg_hba\.conf entry|authentication failed for user|permission denied for database"
    r"|no password supplied|invalid \w+ value|invalid connection option"
    r"|invalid URI query parameter|invalid (?:integer|percent-encoded) value"
    r"|server does not support SSL|certificate verify failed|is not permitted to log in"
)
_PG_MISCONFIGURED_STATES = ("28", "3D")  # invalid authorization, invalid catalog name
# ClickHouse server error codes: unknown database/table/user, wrong password, no access.
_CH_MISCONFIGURED_CODES = {60, 81, 192, 193, 194, 195, 497, 516}
_CH_CODE = re.compile(r"\bCode: (\d+)\.|error code (\d+)")
# S3: the store answered, and no retry changes its answer.
_S3_MISCONFIGURED_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "NoSuchBucket",
    "InvalidBucketName", "AuthorizationHeaderMalformed",
}
# S3: the codes a store answers when it is overloaded or briefly down.
_S3_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}
# redis-py reports these server replies as plain ResponseErrors.
_REDIS_MISCONFIGURED = ("DB index is out of range", "invalid DB index", "NOAUTH", "WRONGPASS",
                        "NOPERM")


def classify(exc: BaseException) -> Outcome:
    """What a run that ended with ``exc`` ended as: misconfigured (78, retrying cannot
    help), unavailable (69, a retry later may), or failed (1)."""
    if is_misconfigured(exc):
        return Outcome.CONFIG_ERROR
    if is_transient(exc):
        return Outcome.UNAVAILABLE
    return Outcome.FAILED


def is_misconfigured(exc: BaseException) -> bool:
    from novajobs.diagnose import known_failure  # TLS and Redis topology, in its chain too

    if _any_of(exc, _MISCONFIGURED_BY_MODULE) or isinstance(known_failure(exc), ConfigError):
        return True
    text = str(exc)
    if is_driver_error(exc, "psycopg", "Error"):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(_PG_MISCONFIGURED_STATES) or (
            not state and _PG_MISCONFIGURED.search(text) is not None
        )
    if is_driver_error(exc, "redis.exceptions", "ResponseError"):
        return any(words in text for words in _REDIS_MISCONFIGURED)
    if is_driver_error(exc, "clickhouse_connect.driver.exceptions", "DatabaseError"):
        code = _CH_CODE.search(text)
        return code is not None and int(code[1] or code[2]) in _CH_MISCONFIGURED_CODES
    if is_driver_error(exc, "minio.error", "S3Error"):
        return getattr(exc, "code", None) in _S3_MISCONFIGURED_CODES
    return False


def is_transient(exc: BaseException) -> bool:
    if is_misconfigured(exc):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if is_driver_error(exc, "psycopg", "OperationalError"):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith(_PG_TRANSIENT_STATES)
    if is_driver_error(exc, "minio.error", "ServerError"):  # a 5xx without an S3 error body
        return True
    if is_driver_error(exc, "minio.error", "S3Error"):
        return getattr(exc, "code", None) in _S3_TRANSIENT_CODES
    return _any_of(exc, _TRANSIENT_BY_MODULE)


def _any_of(exc: BaseException, types_by_module: dict[str, tuple[str, ...]]) -> bool:
    return any(is_driver_error(exc, module_name, *names)
               for module_name, names in types_by_module.items())


def describe_error(exc: BaseException) -> str:
    """One line for a log or a run record: the type and the first line of the message
    (and the second, when the first only announces it: "Couldn't connect to host:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return redact_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    settings: Settings,
    log: JobLog,
    remaining: Callable[[], float | None] = lambda: None,
    guard: Guard | None = None,
) -> T:
    """Call ``fn``, retrying transient errors with capped exponential backoff and jitter.

    Gives up after ``settings.retry_attempts`` tries, or earlier when the next wait and a
    try as slow as the last one would not fit in the time the run has left; the last
    error is then raised as is. With a ``guard``, a stop request (SIGTERM) ends it: the
    backoff sleep wakes at once and no new try starts; the run then ends as interrupted,
    not as unavailable.
    """
    import tenacity

    if guard is not None:
        remaining = guard.remaining

    def stopping() -> bool:
        return guard is not None and guard.stop_reason is not None

    last_try_sec = [0.0]

    def give_up(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= settings.retry_attempts or stopping():
            return True
        # Never sleep past the run's deadline, nor start a try that, taking as long to
        # fail as the last one (a store that stopped answering: its timeout), would not
        # end within it: the run ends unavailable (69), not cut off (124).
        left = remaining()
        return left is not None and left <= (state.upcoming_sleep or 0.0) + last_try_sec[0]

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{what} failed, retrying",
            attempt=state.attempt_number,
            retry_in_sec=round(state.upcoming_sleep or 0.0, 2),
            error=describe_error(exc) if exc else "",
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=give_up,
        wait=tenacity.wait_exponential(multiplier=0.2, max=settings.retry_max_wait_sec)
        + tenacity.wait_random(0, 0.2),
        before_sleep=log_retry,
        sleep=guard.sleep if guard is not None else time.sleep,
        reraise=True,
    )
    def attempt() -> T:
        started = time.monotonic()
        try:
            if guard is None:
                return fn()
            with guard.store_call():
                return fn()
        finally:
            last_try_sec[0] = time.monotonic() - started

    if getattr(_nesting, "depth", 0):  # inside another retried call (a lazy client's
        return attempt()  # connect in a query's): one try, the outer policy retries
    _nesting.depth = 1
    try:
        return retrying(attempt)
    except Exception as exc:
        if stopping() and is_transient(exc) and guard is not None:
            raise Interrupted(
                f"stopped by {guard.stop_reason} while {what} failed: {describe_error(exc)}"
            ) from exc
        raise
    finally:
        _nesting.depth = 0


_nesting = threading.local()  # whether this thread is inside call_with_retry
