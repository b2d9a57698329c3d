"""The run contract (SPEC §1): lock, record, run once within a timeout, log, outcome.

``run_job`` is what the CLI calls for every job, and what Python callers use to get
the same guarantees. It never raises for a job's failure: the returned ``RunRecord``
carries the outcome and the exit code.
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
from novajobs.errors import Interrupted, JobTimeout, NovajobsError, Outcome
from novajobs.lock import JobLock, lock_key, read_holder
from novajobs.output import JobLog, log_file_problem
from novajobs.records import RunRecord, now_iso, record_end, record_skip, record_start
from novajobs.registry import JobSpec, get_job
from novajobs.retry import describe_error, is_transient
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
    """Run one job once under the full contract and return its record."""
    spec = get_job(job) if isinstance(job, str) else job
    settings = settings or load_settings()
    options = options or RunOptions()
    shard = options.shard
    ctx = _new_context(spec, settings, options)
    rec = RunRecord(
        job=spec.name,
        run_id=ctx.run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        shard=shard.label if shard else None,
        started_at=now_iso(),
        dry_run=options.dry_run,
    )
    rec.warning = log_file_problem() or None  # the run goes on; its record says so
    timeout = options.timeout_sec or spec.timeout_sec
    started = time.monotonic()
    lock: JobLock | None = None
    beacon = _new_beacon(ctx, rec)
    try:
        with _stop_on_signals(ctx.guard, ctx.log), _hard_timeout(ctx.guard, timeout):
            func = spec.load()
            if options.use_lock:
                lock = _take_lock(ctx, spec, rec, options.wait_sec)
                if lock is None:
                    return rec
            checkins.ping_start(ctx, rec)
            ctx.retry(lambda: record_start(ctx.redis, settings.redis_prefix, rec), "record start")
            beacon.start()
            ctx.log.info("run started", timeout_sec=timeout, dry_run=options.dry_run or None,
                         warning=rec.warning)
            result = func(ctx, **params)
            rec.outcome, rec.message, rec.details = result.outcome, result.message, result.details
    except NovajobsError as exc:
        rec.outcome, rec.error, rec.details = exc.outcome, str(exc), exc.details
    except KeyboardInterrupt:
        rec.outcome, rec.error = Outcome.INTERRUPTED, "stopped by a second SIGINT"
    except Exception as exc:
        rec.outcome = Outcome.UNAVAILABLE if is_transient(exc) else Outcome.FAILED
        rec.error = describe_error(exc)
        # A traceback helps with the unexpected; an unreachable store needs none.
        ctx.log.error("run failed", error=rec.error, exc_info=rec.outcome is Outcome.FAILED)
    finally:
        beacon.stop()
        _finish(ctx, rec, lock, started, beacon)
    return rec


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
        connections=Connections(settings, log, guard.remaining),
    )


def _new_beacon(ctx: JobContext, rec: RunRecord) -> Beacon:
    """The run's heartbeat (alive, stop requests) and its log lines kept in Redis."""
    return Beacon(ctx, rec, RunLog(lambda: ctx.redis, ctx.settings, rec.unit, rec.run_id))


def _take_lock(ctx: JobContext, spec: JobSpec, rec: RunRecord, wait: float) -> JobLock | None:
    """Take the job's lock and start its heartbeat; None (and a skip record) when held."""
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
        ctx.guard.lock = lock
        lock.start_heartbeat(
            lambda exc: ctx.log.warning("lock heartbeat failed", error=describe_error(exc))
        )
        return lock
    if stopping():  # SIGTERM while waiting for the lock: interrupted, not skipped
        raise Interrupted(f"stopped by {ctx.guard.stop_reason} while waiting for the lock")
    rec.outcome, rec.message = Outcome.SKIPPED, f"lock {key} is held by {_who(ctx, key)}"
    return None


def _who(ctx: JobContext, key: str) -> str:
    current = read_holder(ctx.redis, key)
    return current.describe() if current else "another run (released just now)"


def _finish(
    ctx: JobContext, rec: RunRecord, lock: JobLock | None, started: float, beacon: Beacon
) -> None:
    """Release, record, log, close. Every step is best effort: none may hide the outcome."""
    log = ctx.log
    if lock is not None:
        try:
            if not lock.release() and rec.outcome.ok:
                log.warning("the lock was not ours any more at release", lock_key=lock.key)
        except Exception as exc:
            error = describe_error(exc)
            log.warning("releasing the lock failed; it expires by itself", error=error)
    rec.ended_at = now_iso()
    rec.duration_ms = round((time.monotonic() - started) * 1000)
    rec.counters = dict(ctx.counters)
    rec.exit_code = int(rec.outcome.exit_code)
    alerts.send_alerts(ctx, rec)  # before the record, so alerts_sent/alerts_failed land in it
    prefix, keep = ctx.settings.redis_prefix, ctx.settings.history_size
    try:
        if rec.outcome is Outcome.SKIPPED:
            record_skip(ctx.redis, prefix, rec, keep)
        else:
            record_end(ctx.redis, prefix, rec, keep)
    except Exception as exc:
        log.warning("could not record the run in Redis", error=describe_error(exc))
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
    beacon.close()  # after the last line: it is kept with the record
    ctx.close()


@contextmanager
def _stop_on_signals(guard: Guard, log: JobLog) -> Iterator[None]:
    """SIGTERM/SIGINT ask the job to stop at its next safe point; a second SIGINT stops now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if guard.stop_reason and signum == signal.SIGINT:
            if not guard.hard_stop(KeyboardInterrupt()):
                raise KeyboardInterrupt
            return
        guard.request_stop(name)
        log.warning(f"{name} received; stopping at the next safe point")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def hard_timeout_grace(timeout_sec: float) -> float:
    """How long past its timeout a run stuck in one call may go before SIGALRM cuts it off."""
    return min(max(timeout_sec * 0.1, 2.0), 30.0)


@contextmanager
def _hard_timeout(guard: Guard, timeout_sec: float) -> Iterator[None]:
    """The deadline is checked at safe points; if the job is stuck in one call past it
    (plus a grace), SIGALRM raises JobTimeout right there so the run ends regardless."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    grace = hard_timeout_grace(timeout_sec)

    def expire(signum: int, frame: FrameType | None) -> None:
        exc = JobTimeout(f"the run exceeded its timeout of {timeout_sec:g} s")
        if not guard.hard_stop(exc):
            raise exc
        signal.setitimer(signal.ITIMER_REAL, guard.CRITICAL_HOLD_SEC)  # stuck: cut anyway

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_sec + grace)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
