"""Which errors are transient, and the one retry policy used at every named retry point.

Drivers are imported lazily, so the transient exception types are looked up by name
among the modules already loaded: an error from a driver that was never imported
cannot be raised anyway.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from novajobs.output import JobLog
    from novajobs.settings import Settings

T = TypeVar("T")

_TRANSIENT_BY_MODULE = {
    "redis.exceptions": ("ConnectionError", "TimeoutError", "BusyLoadingError"),
    "clickhouse_connect.driver.exceptions": ("OperationalError",),
    "urllib3.exceptions": ("HTTPError",),  # minio: MaxRetryError, ProtocolError, ...
    "neo4j.exceptions": ("ServiceUnavailable", "SessionExpired", "TransientError"),
    "elastic_transport": ("ConnectionError", "ConnectionTimeout"),
}
# PostgreSQL: connection exceptions (class 08) and administrator shutdowns only; a
# statement timeout or a deadlock is not something to blindly run again.
_PG_TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03")
# S3: the codes a store answers when it is overloaded or briefly down.
_S3_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(_PG_TRANSIENT_STATES)
    minio_error = sys.modules.get("minio.error")
    if minio_error is not None:
        if isinstance(exc, minio_error.ServerError):  # a 5xx without an S3 error body
            return True
        if isinstance(exc, minio_error.S3Error):
            return exc.code in _S3_TRANSIENT_CODES
    for module_name, names in _TRANSIENT_BY_MODULE.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, tuple(getattr(module, n) for n in names)):
            return True
    return False


_SECRET_IN_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)


def redact_text(text: str) -> str:
    """Hide passwords of any URL inside a message (driver errors sometimes quote the DSN)."""
    return _SECRET_IN_URL.sub(r"\g<scheme>\g<user>:****@", text)


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
) -> T:
    """Call ``fn``, retrying transient errors with capped exponential backoff and jitter.

    Gives up after ``settings.retry_attempts`` tries, or earlier when the next wait would
    not fit in the time the run has left; the last error is then raised as is.
    """
    import tenacity

    def give_up(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= settings.retry_attempts:
            return True
        left = remaining()  # never sleep past the run's deadline
        return left is not None and left <= (state.upcoming_sleep or 0.0)

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
        sleep=time.sleep,
        reraise=True,
    )
    return retrying(fn)
