"""What a job function receives (``JobContext``) and returns (``Result``)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from novajobs.connections import Connections
from novajobs.errors import Interrupted, JobTimeout, LockLost, Outcome, UsageError
from novajobs.output import JobLog, Progress, progress

if TYPE_CHECKING:
    import psycopg
    import redis

    from novajobs.lock import JobLock
    from novajobs.settings import Settings

T = TypeVar("T")


@dataclass
class Result:
    """What a job returns. Counters live on the context (kept even when a job fails)."""

    outcome: Outcome = Outcome.SUCCESS
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``total``, 1-based; it owns the items with ``id % total == index-1``."""

    index: int
    total: int

    @property
    def label(self) -> str:
        return f"{self.index}-of-{self.total}"

    @property
    def remainder(self) -> int:
        return self.index - 1

    @classmethod
    def parse(cls, text: str, *, completion_index: str | None, shard_count: int) -> Shard:
        """``"2/3"``, or ``"auto"``: the Kubernetes Indexed-Job index (0-based) of
        ``shard_count`` shards. Raises UsageError with one line on anything else."""
        if text.strip().lower() == "auto":
            if completion_index is None or not completion_index.isdigit():
                raise UsageError("--shard auto: JOB_COMPLETION_INDEX is not set to an index")
            if shard_count < 1:
                raise UsageError("--shard auto: set shard_count (NOVAJOBS_SHARD_COUNT)")
            index, total = int(completion_index) + 1, shard_count
        else:
            left, sep, right = text.partition("/")
            if not sep or not left.strip().isdigit() or not right.strip().isdigit():
                raise UsageError(f"--shard {text!r}: expected I/N (1-based, e.g. 1/3) or auto")
            index, total = int(left), int(right)
        if total < 1 or not 1 <= index <= total:
            raise UsageError(f"--shard {text!r}: the index must be between 1 and {max(total, 1)}")
        return cls(index, total)


class Guard:
    """Decides at each safe point whether the run may go on: stop signal, lease, deadline.

    It also keeps the hard stops (the runner's SIGALRM timeout, a second Ctrl-C) out of
    critical sections, such as between deleting objects and committing their rows.
    """

    # A critical section stuck this long past a hard stop is cut anyway: it must not hang.
    CRITICAL_HOLD_SEC = 60.0

    def __init__(self, timeout_sec: float | None = None, lock: JobLock | None = None) -> None:
        self.deadline = time.monotonic() + timeout_sec if timeout_sec else None
        self.lock = lock
        self.stop_reason: str | None = None
        self.stop_message: str | None = None  # what the record says; default "stopped by ..."
        self._critical = 0
        self._store_calls = 0
        self._deferred: BaseException | None = None

    @contextmanager
    def critical(self) -> Iterator[None]:
        """Hard stops that arrive inside are raised when the outermost section ends."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc

    def hard_stop(self, exc: BaseException) -> bool:
        """For signal handlers: True if ``exc`` was deferred to the end of a critical
        section; False if the caller must raise it now (outside one, or the second time)."""
        if self._critical and self._deferred is None:
            self._deferred = exc
            return True
        return False

    @contextmanager
    def store_call(self) -> Iterator[None]:
        """Around one try of a retried store call: a stop signal may end it at once. Any
        store call can fail, so its callers already cope with one that did not finish."""
        self._store_calls += 1
        try:
            yield
        finally:
            self._store_calls -= 1

    @property
    def interruptible(self) -> bool:
        """In a store call and in no critical section: a stop need not wait."""
        return self._store_calls > 0 and not self._critical

    def request_stop(self, reason: str, message: str | None = None) -> None:
        self.stop_reason = reason
        self.stop_message = message

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake within 50 ms of a stop request and raise Interrupted: a retry
        backoff or a poll interval never holds a stopping run. The stop flag is polled,
        not a threading.Event: the SIGTERM handler runs in the main thread, possibly
        while that thread is inside the Event's wait holding its lock, and setting the
        Event there deadlocked the run (no exit, no log line, until SIGKILL)."""
        end = time.monotonic() + max(seconds, 0.0)
        while not self.stop_reason:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))
        raise Interrupted(self.stop_message or f"stopped by {self.stop_reason}")

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self.stop_reason:
            raise Interrupted(self.stop_message or f"stopped by {self.stop_reason}")
        if self.lock is not None and not self.lock.lease_ok():
            raise LockLost(f"lock {self.lock.key} lost; stopped before the next write")
        left = self.remaining()
        if left is not None and left <= 0:
            raise JobTimeout("the run reached its timeout")


class JobContext:
    """Settings, clients, logger and safe points for one run of one job."""

    def __init__(
        self,
        settings: Settings,
        job: str,
        *,
        run_id: str | None = None,
        log: JobLog | None = None,
        guard: Guard | None = None,
        shard: Shard | None = None,
        dry_run: bool = False,
        connections: Connections | None = None,
    ) -> None:
        self.settings = settings
        self.job = job
        self.run_id = run_id or uuid.uuid4().hex
        self.shard = shard
        self.dry_run = dry_run
        self.guard = guard or Guard()
        self.log = log or JobLog(job=job, run_id=self.run_id)
        self.conns = connections or Connections(settings, self.log, self.guard)
        self.counters: Counter[str] = Counter()

    # -- stores: a job reaches each as ctx.<store>, never through ctx.conns ----------------
    @property
    def redis_text(self) -> redis.Redis:
        """The same Redis with replies as text (for reading streams)."""
        return self.conns.redis_text

    @property
    def redis(self) -> redis.Redis:
        return self.conns.redis

    @property
    def clickhouse(self) -> Any:
        return self.conns.clickhouse

    @property
    def pg(self) -> psycopg.Connection[Any]:
        return self.conns.pg

    @property
    def s3(self) -> Any:
        """The S3/MinIO client (the MinIO SDK)."""
        return self.conns.minio

    @property
    def neo4j(self) -> Any:
        """The Neo4j driver: open a session per query (``with ctx.neo4j.session()``)."""
        return self.conns.neo4j

    @property
    def elasticsearch(self) -> Any:
        return self.conns.elasticsearch

    def key(self, name: str) -> str:
        """A Redis key with the configured prefix."""
        return self.settings.redis_prefix + name

    # -- run contract ----------------------------------------------------------------------
    def checkpoint(self) -> None:
        """A safe point: call before every write. Raises if the run must stop."""
        self.guard.check()

    def critical(self) -> AbstractContextManager[None]:
        """A stretch the run's hard timeout and a second Ctrl-C must not cut in the
        middle; they take effect when it ends (or once it is stuck for a minute more)."""
        return self.guard.critical()

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn`` with the shared retry policy for transient connection errors."""
        return self.conns.retry(fn, what)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def not_configured(self, setting: str, effect: str, example: str,
                       **details: Any) -> Result:
        """A run that does nothing until ``setting`` is set: says so (a warning naming what
        is not done, ``effect``, and how to set it) and ends nothing_to_do."""
        message = (f"{setting} is not set: {effect} until it is "
                   f"(e.g. NOVAJOBS_{setting.upper()}={example})")
        self.log.warning(message)
        return Result(Outcome.NOTHING_TO_DO, message, details)

    def progress(
        self, description: str, total: int | None = None
    ) -> AbstractContextManager[Progress]:
        return progress(self.log, description, total)

    def close(self) -> None:
        self.conns.close()

    def __enter__(self) -> JobContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
