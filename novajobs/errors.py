"""Exit codes, outcomes and the exception hierarchy.

Every failure novajobs knows about is a ``NovajobsError`` carrying its exit code; the
CLI is the one place that turns an error into a process exit.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes. Documented in README.md; stable for podFailurePolicy rules."""

    OK = 0
    FAILED = 1
    USAGE = 2
    PROBLEM_FOUND = 3  # a check ran fine and found something wrong
    LOCK_LOST = 4  # another run may now hold the lock; this one stopped early
    UNAVAILABLE = 69  # EX_UNAVAILABLE: a store could not be reached after retries
    SKIPPED = 75  # EX_TEMPFAIL: the lock is held by another run
    CONFIG = 78  # EX_CONFIG
    TIMEOUT = 124  # as timeout(1)
    INTERRUPTED = 130  # SIGINT/SIGTERM: stopped at a safe point


class Outcome(StrEnum):
    """What a run ended as; recorded in Redis and mapped to an exit code."""

    RUNNING = "running"
    SUCCESS = "success"
    NOTHING_TO_DO = "nothing_to_do"
    DRY_RUN = "dry_run"
    PROBLEM_FOUND = "problem_found"
    SKIPPED = "skipped"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"
    LOCK_LOST = "lock_lost"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    CONFIG_ERROR = "config_error"
    USAGE_ERROR = "usage_error"

    @property
    def exit_code(self) -> ExitCode:
        return _OUTCOME_EXIT[self]

    @property
    def ok(self) -> bool:
        return self in (Outcome.SUCCESS, Outcome.NOTHING_TO_DO, Outcome.DRY_RUN)


_OUTCOME_EXIT = {
    Outcome.RUNNING: ExitCode.FAILED,
    Outcome.SUCCESS: ExitCode.OK,
    Outcome.NOTHING_TO_DO: ExitCode.OK,
    Outcome.DRY_RUN: ExitCode.OK,
    Outcome.PROBLEM_FOUND: ExitCode.PROBLEM_FOUND,
    Outcome.SKIPPED: ExitCode.SKIPPED,
    Outcome.FAILED: ExitCode.FAILED,
    Outcome.UNAVAILABLE: ExitCode.UNAVAILABLE,
    Outcome.LOCK_LOST: ExitCode.LOCK_LOST,
    Outcome.TIMEOUT: ExitCode.TIMEOUT,
    Outcome.INTERRUPTED: ExitCode.INTERRUPTED,
    Outcome.CONFIG_ERROR: ExitCode.CONFIG,
    Outcome.USAGE_ERROR: ExitCode.USAGE,
}


class NovajobsError(Exception):
    """Base of every error novajobs raises on purpose. The message is one line for humans;
    ``details`` is what the job did before it failed (shown by ``--json``)."""

    outcome = Outcome.FAILED

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}

    @property
    def exit_code(self) -> ExitCode:
        return self.outcome.exit_code


class UsageError(NovajobsError):
    """A bad argument: a malformed date, shard spec, id..."""

    outcome = Outcome.USAGE_ERROR


class ConfigError(NovajobsError):
    """A setting is invalid, or the stores do not look as configured (missing table...)."""

    outcome = Outcome.CONFIG_ERROR


class UnavailableError(NovajobsError):
    """A store could not be reached, even after retries."""

    outcome = Outcome.UNAVAILABLE


class LockHeld(NovajobsError):
    """The job's lock is held by another run."""

    outcome = Outcome.SKIPPED


class LockLost(NovajobsError):
    """The lock was lost (expired, deleted or taken over) while the job ran."""

    outcome = Outcome.LOCK_LOST


class JobTimeout(NovajobsError):
    """The run went past its time budget."""

    outcome = Outcome.TIMEOUT


class Interrupted(NovajobsError):
    """SIGTERM or SIGINT arrived; the job stopped at a safe point."""

    outcome = Outcome.INTERRUPTED


class JobFailed(NovajobsError):
    """The job ran and failed (e.g. too many items failed)."""


class HardStop(BaseException):
    """Raised from a signal handler wherever the main thread is (the run's hard timeout,
    a stop request that found no safe point within its grace, a second Ctrl-C).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way
    out can swallow or transform it: a job's per-item isolation would count it as one
    failed item and go on, and elastic-transport wraps every Exception into its own
    ConnectionError, which our retry policy would retry. The runner unwraps ``error``.
    """

    def __init__(self, error: NovajobsError) -> None:
        super().__init__(str(error))
        self.error = error


def is_driver_error(exc: BaseException, module_name: str, *type_names: str) -> bool:
    """Whether ``exc`` is one of a driver's exception types, looked up by name among the
    modules already loaded (drivers are imported lazily: an error from a driver that was
    never imported cannot be raised). A module another thread is still importing sits in
    sys.modules without its attributes yet; it matches nothing."""
    import sys

    module = sys.modules.get(module_name)
    types = tuple(t for t in (getattr(module, name, None) for name in type_names)
                  if isinstance(t, type))
    return bool(types) and isinstance(exc, types)
