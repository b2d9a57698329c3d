"""The shared retry policy: what counts as transient, how often and how long it retries."""

from __future__ import annotations

import time

import pytest
import urllib3
from minio.error import S3Error, ServerError

from novajobs.output import JobLog
from novajobs.retry import call_with_retry, describe_error, is_transient
from novajobs.settings import load_settings


def flaky(failures: list[BaseException]):  # type: ignore[no-untyped-def]
    calls = []

    def fn() -> str:
        calls.append(time.monotonic())
        if failures:
            raise failures.pop(0)
        return "ok"

    return fn, calls


def s3_error(code: str, status: int) -> S3Error:
    return S3Error(urllib3.HTTPResponse(status=status), code, "msg", "/b", "req", "host")


def test_transient_errors_are_retried_until_they_pass():
    fn, calls = flaky([ConnectionRefusedError("refused"), s3_error("SlowDown", 503)])
    settings = load_settings(environ={"NOVAJOBS_RETRY_ATTEMPTS": "3"})

    assert call_with_retry(fn, what="demo", settings=settings, log=JobLog()) == "ok"
    assert len(calls) == 3


def test_a_permanent_error_is_not_retried():
    fn, calls = flaky([s3_error("NoSuchBucket", 404)])
    with pytest.raises(S3Error):
        call_with_retry(fn, what="demo", settings=load_settings(environ={}), log=JobLog())
    assert len(calls) == 1


def test_retries_stop_at_the_attempt_cap_and_within_the_budget():
    fn, calls = flaky([TimeoutError("t")] * 10)
    settings = load_settings(environ={"NOVAJOBS_RETRY_ATTEMPTS": "4"})
    with pytest.raises(TimeoutError):
        call_with_retry(fn, what="demo", settings=settings, log=JobLog())
    assert len(calls) == 4

    fn, calls = flaky([TimeoutError("t")] * 10)
    settings = load_settings(environ={"NOVAJOBS_RETRY_ATTEMPTS": "10",
                                      "NOVAJOBS_RETRY_MAX_WAIT_SEC": "5"})
    deadline = time.monotonic() + 0.5
    with pytest.raises(TimeoutError):
        call_with_retry(fn, what="demo", settings=settings, log=JobLog(),
                        remaining=lambda: deadline - time.monotonic())
    assert 1 < len(calls) < 10
    assert calls[-1] < deadline  # never slept past what the run had left


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError("reset"), True),
        (ServerError("bad gateway", 502), True),
        (s3_error("InternalError", 500), True),
        (s3_error("AccessDenied", 403), False),
        (ValueError("bug"), False),
    ],
)
def test_what_counts_as_transient(exc, transient):
    assert is_transient(exc) is transient


def test_error_lines_keep_the_cause_and_hide_passwords():
    exc = ConnectionError("Couldn't connect to db:7687:\nConnection refused")
    assert describe_error(exc) == "ConnectionError: Couldn't connect to db:7687: Connection refused"
    leak = ConnectionError("failed for redis://app:s3cret@cache:6379/0")
    assert "s3cret" not in describe_error(leak) and "app:****@cache" in describe_error(leak)
