"""The run contract (README): lock, record, run once within a timeout, log, outcome.

``run_job`` is what the CLI calls for every job, and what Python callers use to get
the same guarantees. It never raises for a job's failure: the returned ``RunRecord``
carries the outcome and the exit code. Bad arguments raise UsageError before anything
is locked, recorded or connected.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from novajobs import alerts, checkins, metrics
from novajobs.beacon import Beacon
from novajobs.connections import Connections
from novajobs.context import Guard, JobContext, Shard
from novajobs.diagnose import known_failure
from novajobs.errors import (
    HardStop,
    Interrupted,
    JobTimeout,
    NovajobsError,
    Outcome,
    UsageError,
)
from novajobs.fencing import fence_of
from novajobs.lock import JobLock, lock_key, read_holder
from novajobs.output import JobLog, log_file_problem
from novajobs.records import RunRecord, now_iso, record_end, record_skip, record_start
from novajobs.redact import redact_text
from novajobs.registry import JobSpec, get_job
from novajobs.retry import classify, describe_error, is_transient
from novajobs.runlog import RunLog
from novajobs.settings import Settings, load_settings


@dataclass(frozen=True)
class RunOptions:
    timeout_sec: float | None = None  # None: the job's default from the registry
    use_lock: bool = True
    wait_sec: float = 0.0  # wait this long for a held lock before skipping
    shard: Shard | None = None
    dry_run: bool = False


def run_job(
    job: str | JobSpec,
    settings: Settings | None = None,
    options: RunOptions | None = None,
    **params: Any,
) -> RunRecord:
    """Run one job once under the full contract and return its record.

    Bad arguments (an unknown parameter, a malformed date, a shard the job does not
    take) raise UsageError before anything is locked, recorded or connected. After that
    it never raises for the job's outcome: the record carries it and its exit code.
    """
    spec = get_job(job) if isinstance(job, str) else job
    settings = settings or load_settings()
    options = options or RunOptions()
    check_run(spec, settings, options, params)
    ctx = _new_context(spec, settings, options)
    rec = RunRecord(
        job=spec.name,
        run_id=ctx.run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        shard=options.shard.label if options.shard else None,
        started_at=now_iso(),
        dry_run=options.dry_run,
    )
    rec.warning = log_file_problem() or None  # the run goes on; its record says so
    timeout = options.timeout_sec or spec.timeout_sec
    started = time.monotonic()
    redis_hung = False
    beacon = _new_beacon(ctx, rec)
    with _StopSignals(ctx.guard, ctx.log, settings.stop_grace_sec) as signals:
        try:
            with signals.deadline(timeout):
                _run(ctx, spec, rec, options, params, beacon)
        except HardStop as stop:  # raised where the job was: the timeout, a forced stop
            _fail(rec, stop.error)
            redis_hung = _inside_redis(stop)
        except NovajobsError as exc:
            _fail(rec, exc)
        except Exception as exc:
            known = known_failure(exc)  # a bad certificate, a replica, a ClickHouse error...
            rec.outcome = known.outcome if known else classify(exc)
            rec.error = str(known) if known else describe_error(exc)
            redis_hung = rec.outcome is Outcome.UNAVAILABLE and _inside_redis(exc)
            # A traceback helps with the unexpected; an unreachable store needs none.
            unexpected = known is None and rec.outcome is Outcome.FAILED
            ctx.log.error("run failed", error=rec.error, exc_info=unexpected)
        finally:
            try:
                beacon.stop()
                _finish(ctx, rec, started, beacon, redis_ok=not redis_hung)
            except HardStop:  # a second Ctrl-C while finishing: leave now
                ctx.log.warning("stopped while recording the run; the lock expires by itself")
                ctx.close()
    return rec


def check_run(spec: JobSpec, settings: Settings, options: RunOptions, params: dict[str, Any]
              ) -> None:
    """Everything about a run's arguments that can be wrong, checked before the lock."""
    if options.timeout_sec is not None and not options.timeout_sec > 0:
        raise UsageError(f"--timeout {options.timeout_sec}: must be greater than 0")
    if options.wait_sec < 0:
        raise UsageError(f"--wait {options.wait_sec}: must be 0 or more")
    if options.shard is not None:
        if not spec.shardable:
            raise UsageError(f"{spec.name} is not sharded: it takes no --shard")
        shard = options.shard
        if shard.total < 1 or not 1 <= shard.index <= shard.total:
            raise UsageError(f"--shard {shard.index}/{shard.total}: the index must be "
                             f"between 1 and {max(shard.total, 1)}")
    spec.check_params(settings, params)


def _run(ctx: JobContext, spec: JobSpec, rec: RunRecord, options: RunOptions,
         params: dict[str, Any], beacon: Beacon) -> None:
    """Lock (kept in ctx.guard.lock for the finish), record the start, run the job."""
    func = spec.load()
    if options.use_lock and not _take_lock(ctx, spec, rec, options.wait_sec):
        return  # skipped: the record says so
    checkins.ping_start(ctx, rec)
    fence = fence_of(ctx)
    ctx.retry(lambda: record_start(ctx.redis, ctx.settings.redis_prefix, rec, fence),
              "record start")
    beacon.start()
    ctx.log.info("run started", timeout_sec=options.timeout_sec or spec.timeout_sec,
                 dry_run=options.dry_run or None, warning=rec.warning, fence=rec.fence)
    result = func(ctx, **params)
    rec.outcome, rec.message, rec.details = result.outcome, result.message, result.details


def _fail(rec: RunRecord, exc: NovajobsError) -> None:
    rec.outcome, rec.error, rec.details = exc.outcome, redact_text(str(exc)), exc.details


def _inside_redis(exc: BaseException) -> bool:
    """Whether the run ended inside a Redis call (stopped there, or Redis failed): then
    Redis is the store that does not answer, and recording the run there would only wait
    for it again."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("redis."):
            return True
        tb = tb.tb_next
    return False


def _new_context(spec: JobSpec, settings: Settings, options: RunOptions) -> JobContext:
    guard = Guard(options.timeout_sec or spec.timeout_sec)
    run_id = os.urandom(8).hex()
    fields: dict[str, Any] = {"job": spec.name, "run_id": run_id}
    if options.shard:
        fields["shard"] = options.shard.label
    log = JobLog(**fields)
    return JobContext(
        settings,
        spec.name,
        run_id=run_id,
        log=log,
        guard=guard,
        shard=options.shard,
        dry_run=options.dry_run,
        connections=Connections(settings, log, guard),
    )


def _new_beacon(ctx: JobContext, rec: RunRecord) -> Beacon:
    """The run's heartbeat (alive, stop requests) and its log lines kept in Redis."""
    return Beacon(ctx, rec, RunLog(lambda: ctx.redis, ctx.settings, rec.unit, rec.run_id))


def _take_lock(ctx: JobContext, spec: JobSpec, rec: RunRecord, wait: float) -> bool:
    """Take the job's lock (ctx.guard.lock) and start its heartbeat; False (and a skip
    record) when another run holds it."""
    scope = rec.shard or (getattr(ctx.settings, spec.lock_scope) if spec.lock_scope else None)
    key = rec.lock_key = lock_key(ctx.settings.redis_prefix, spec.name, scope)
    holder = {"job": rec.unit, "host": rec.host, "pid": rec.pid, "run_id": rec.run_id}
    lock = JobLock(ctx.redis, key, ctx.settings.lock_ttl_sec or spec.lock_ttl_sec, holder)

    def stopping() -> bool:
        return ctx.guard.stop_reason is not None

    taken = ctx.retry(lock.acquire, "acquire the lock")
    if not taken and wait > 0:
        ctx.log.info(f"lock held by {_who(ctx, key)}; waiting up to {wait:g} s", lock_key=key)
        taken = ctx.retry(lambda: lock.acquire(wait, stopping), "acquire the lock")
    if taken:
        if lock.replicas_acked == 0:
            ctx.log.warning("no replica acknowledged the lock yet: a failover now could lose it",
                            lock_key=key)
        ctx.guard.lock = lock
        rec.fence = lock.fence
        lock.start_heartbeat(
            lambda exc: ctx.log.warning("lock heartbeat failed", error=describe_error(exc))
        )
        return True
    if stopping():  # SIGTERM while waiting for the lock: interrupted, not skipped
        raise Interrupted(f"stopped by {ctx.guard.stop_reason} while waiting for the lock")
    rec.outcome, rec.message = Outcome.SKIPPED, f"lock {key} is held by {_who(ctx, key)}"
    return False


def _who(ctx: JobContext, key: str) -> str:
    current = read_holder(ctx.redis, key)
    return current.describe() if current else "another run (released just now)"


def _finish(ctx: JobContext, rec: RunRecord, started: float, beacon: Beacon,
            redis_ok: bool = True) -> None:
    """Release, record, report, log, close. Every step is best effort: none may hide the
    outcome. Redis gets short timeouts here and is given up on after its first failure
    (or at once, ``redis_ok=False``, when the run ended in a Redis call that hung): a run
    that ended because Redis does not answer must not then wait on it once per write."""
    log, lock = ctx.log, ctx.guard.lock
    ctx.conns.shorten_redis_timeouts()
    if lock is not None and redis_ok:
        try:
            if not lock.release(ctx.redis) and rec.outcome.ok:
                log.warning("the lock was not ours any more at release", lock_key=lock.key)
        except Exception as exc:
            redis_ok = not is_transient(exc)
            error = describe_error(exc)
            log.warning("releasing the lock failed; it expires by itself", error=error)
    elif lock is not None:
        lock.stop_heartbeat()  # no renewals of a lock we cannot release: it expires
    rec.ended_at = now_iso()
    rec.duration_ms = round((time.monotonic() - started) * 1000)
    rec.counters = dict(ctx.counters)
    rec.exit_code = int(rec.outcome.exit_code)
    rec.message = redact_text(rec.message)
    # before the record, so alerts_sent/alerts_failed land in it
    alerts.send_alerts(ctx, rec, use_redis=redis_ok)
    if redis_ok:
        _record(ctx, rec)
    else:
        log.warning("the run is not recorded: Redis did not answer")
    metrics.push_run(ctx, rec)  # after the record: a skip counts the skips before it
    checkins.ping_end(ctx, rec)
    fields: dict[str, Any] = {
        "outcome": str(rec.outcome),
        "exit_code": rec.exit_code,
        "elapsed_ms": rec.duration_ms,
        **rec.counters,
    }
    if rec.error:
        fields["error"] = rec.error
    text = rec.message or rec.error or "run finished"
    if rec.outcome.ok or rec.outcome is Outcome.SKIPPED:
        log.info(text, **fields)
    else:
        log.error(text, **fields)
    beacon.close(store=redis_ok)  # after the last line: it is kept with the record
    ctx.close()


def _record(ctx: JobContext, rec: RunRecord) -> None:
    prefix, keep = ctx.settings.redis_prefix, ctx.settings.history_size
    try:
        if rec.outcome is Outcome.SKIPPED:
            record_skip(ctx.redis, prefix, rec, keep)
        elif not record_end(ctx.redis, prefix, rec, keep, fence_of(ctx)):
            ctx.log.warning("a newer run holds the lock: this run went into the history "
                            "only, the status stays the newer run's", fence=rec.fence)
    except Exception as exc:
        ctx.log.warning("could not record the run in Redis", error=describe_error(exc))


STORE_CALL_GRACE_SEC = 1.0


def hard_timeout_grace(timeout_sec: float) -> float:
    """How long past its timeout a run stuck in one call may go before SIGALRM cuts it off."""
    return min(max(timeout_sec * 0.1, 2.0), 30.0)


class _StopSignals:
    """SIGTERM/SIGINT, the hard timeout and the stop grace, for one run in the main thread.

    A stop signal asks the job to stop at its next safe point (``ctx.checkpoint()``);
    retry backoffs wake at once and no new try starts. How a blocked call is ended:
    Python runs a signal handler in the main thread between bytecodes; a blocking C call
    (``recv``, ``poll``, a lock wait) returns EINTR, Python runs the handler, and an
    exception the handler raises comes out of the call (PEP 475 retries the call only
    when the handler returns normally). So:

    - the job gets ``stop_grace_sec`` to reach a safe point, or STORE_CALL_GRACE_SEC if
      the signal found it in a retried store call (``ctx.retry``: a healthy call ends in
      milliseconds, one blocked on a store that does not answer would not); then
      SIGALRM raises HardStop right where the main thread is. It is a BaseException, so
      no driver wraps it into an error of its own on the way out;
    - inside a critical section (``ctx.critical()``) a hard stop waits for the section
      to end, or ``Guard.CRITICAL_HOLD_SEC`` more;
    - the hard timeout is the same alarm, set to the run's timeout plus its grace;
    - a second stop signal is a hard stop at once.

    Outside the main thread Python delivers no signals: only the deadline and the lease,
    checked at safe points, apply.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, guard: Guard, log: JobLog, stop_grace_sec: float) -> None:
        self.guard, self.log, self.stop_grace_sec = guard, log, stop_grace_sec
        self.enabled = threading.current_thread() is threading.main_thread()
        self._previous: dict[int, Any] = {}
        self._timeout_sec = 0.0
        self._armed = False
        self._grace = stop_grace_sec

    def __enter__(self) -> _StopSignals:
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_stop_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextmanager
    def deadline(self, timeout_sec: float) -> Iterator[None]:
        """While the job runs: the alarm for the hard timeout (and a forced stop)."""
        if not self.enabled:
            yield
            return
        self._timeout_sec = timeout_sec
        previous = signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_sec + hard_timeout_grace(timeout_sec))
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.guard.stop_reason:  # asked twice: stop now
            self._hard_stop(Interrupted(f"stopped by a second {name}"))
            return
        self.guard.request_stop(name)
        self.log.warning(f"{name} received; stopping at the next safe point")
        grace = self.stop_grace_sec
        if self.guard.interruptible:  # in a store call: a healthy one ends in milliseconds
            grace = min(grace, STORE_CALL_GRACE_SEC)
        if self._armed:  # not stopped within the grace: forced where it is
            left = signal.getitimer(signal.ITIMER_REAL)[0]
            signal.setitimer(signal.ITIMER_REAL, min(left or grace, grace))
        self._grace = grace

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.guard.stop_reason:
            error: NovajobsError = Interrupted(
                f"stopped by {self.guard.stop_reason} (forced: no safe point within "
                f"{self._grace:g} s)"
            )
        else:
            error = JobTimeout(f"the run exceeded its timeout of {self._timeout_sec:g} s")
        if self._hard_stop(error):  # deferred by a critical section: if stuck, cut anyway
            signal.setitimer(signal.ITIMER_REAL, self.guard.CRITICAL_HOLD_SEC)

    def _hard_stop(self, error: NovajobsError) -> bool:
        """Raise HardStop now, or True when a critical section defers it."""
        stop = HardStop(error)
        if self.guard.hard_stop(stop):
            return True
        raise stop
