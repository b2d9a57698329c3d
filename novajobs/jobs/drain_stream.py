"""drain-stream: consume Redis streams through a consumer group within a budget (seeds 001, 004).

Several runs may drain the same streams at once (one per pod, docs/operations.md): the consumer
group hands each new entry to exactly one consumer. The job lock is therefore per
*consumer* (``job:lock:drain-stream:{stream_consumer}``, the host/pod name by default):
it only keeps two processes from draining under the same consumer name, i.e. a cron
line on one host from stacking runs. See novajobs/streams/drain.py for the loop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from novajobs.context import JobContext, Result
from novajobs.errors import ConfigError, NovajobsError, Outcome
from novajobs.retry import describe_error
from novajobs.streams import dlq
from novajobs.streams.drain import Budget, Drainer
from novajobs.streams.handlers import StreamPlan, load_handler, plan_streams
from novajobs.streams.keys import migrate_legacy
from novajobs.streams.upkeep import upkeep

if TYPE_CHECKING:
    from novajobs.settings import Settings

# KEYS[1] stream; ARGV[1] group, ARGV[2] this run's consumer, ARGV[3] idle ms for others.
# Atomic, so a consumer is never deleted with entries pending (that would orphan them):
# ours once it has none, others (dead pods' names) when idle and empty for a day.
_REAP_CONSUMERS = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and (info['name'] == ARGV[2] or info['idle'] > tonumber(ARGV[3])) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""
REAP_IDLE_MS = 24 * 3600 * 1000


def run(ctx: JobContext, streams: Sequence[str] = ()) -> Result:
    s = ctx.settings
    check_settings(s)
    plans = plan_streams(s, streams)
    factories = {p.handler: load_handler(p.handler) for p in plans}
    budget = Budget(s.drain_max_messages, _read_until(ctx))
    for plan in plans:
        ctx.retry(functools.partial(migrate_legacy, ctx.redis, plan.keys),
                  f"migrate the keys of {plan.name}")
    ensure_groups(ctx, plans)
    drainer = Drainer(ctx, plans, factories, budget)
    ctx.log.info(
        "draining",
        streams=",".join(p.name for p in plans),
        group=s.stream_group,
        consumer=s.stream_consumer,
        concurrency=s.drain_concurrency,
        max_messages=budget.max_messages,
    )
    try:
        drainer.run()
    except NovajobsError as exc:  # the record of a stopped run shows the streams too
        exc.details = {**exc.details, **_finish(ctx, drainer, plans)}
        raise
    except BaseException:  # e.g. Redis down: count what was done, touch nothing more
        ctx.counters.update(drainer.stats.counters())
        raise
    details = _finish(ctx, drainer, plans)
    for handler in sorted(set(factories.values()), key=lambda f: f.__name__):
        try:
            handler.after_run(s, ctx.log)
        except Exception as exc:  # housekeeping must not fail a run whose entries are done
            ctx.log.warning("handler housekeeping failed", error=describe_error(exc))
    stats = drainer.stats
    received = stats.counts["received"]
    return Result(
        outcome=Outcome.SUCCESS if received else Outcome.NOTHING_TO_DO,
        message=stats.summary() if received else _nothing(details["lag"]),
        details=details,
    )


def check_params(settings: Settings, streams: Sequence[str] = ()) -> None:
    """Before the lock: settings that only make sense together, and the STREAM names."""
    check_settings(settings)
    plan_streams(settings, streams)


def _finish(ctx: JobContext, drainer: Drainer, plans: Sequence[StreamPlan]) -> dict[str, Any]:
    """Counters, consumer clean-up, upkeep (trim, DLQ cap, lag); the run's details."""
    s, stats = ctx.settings, drainer.stats
    ctx.counters.update(stats.counters())
    _reap_consumers(ctx, plans)
    lags = upkeep(ctx, [p.keys for p in plans], trim=s.stream_trim)
    return {
        "group": s.stream_group,
        "consumer": s.stream_consumer,
        "streams": {name: dict(c) for name, c in stats.per_stream.items()},
        "lag": {lag.stream: lag.figures() for lag in lags},
        **stats.counters(),
    }


def _nothing(lags: dict[str, dict[str, float]]) -> str:
    pending = round(sum(figures.get("pending", 0) for figures in lags.values()))
    if not pending:
        return "no entries to drain"
    return (f"no entries to drain now; {pending} pending with other consumers, reclaimed "
            "once idle for stream_claim_idle_sec")


def check_settings(s: Settings) -> None:
    """What single settings cannot check alone."""
    if s.drain_block_ms >= s.redis_timeout_sec * 1000:
        raise ConfigError(
            f"setting drain_block_ms ({s.drain_block_ms}) must stay below redis_timeout_sec "
            f"({s.redis_timeout_sec:g} s), or a blocking read times out as an error"
        )
    if s.stream_claim_idle_sec <= s.drain_message_timeout_sec:
        raise ConfigError(
            f"setting stream_claim_idle_sec ({s.stream_claim_idle_sec:g}) must exceed "
            f"drain_message_timeout_sec ({s.drain_message_timeout_sec:g}), or entries still "
            "being handled are taken over by other consumers"
        )
    dlq.max_age_sec(s)


def _read_until(ctx: JobContext) -> float:
    """Stop reading in time to let the last calls finish before the run's timeout."""
    s = ctx.settings
    seconds = s.drain_max_seconds
    left = ctx.guard.remaining()
    if left is not None:
        room = left - s.drain_message_timeout_sec - 1
        if room <= 0:
            raise ConfigError(
                f"the run's timeout ({left:.0f} s left) leaves no time to read: it must "
                f"exceed drain_message_timeout_sec ({s.drain_message_timeout_sec:g} s) + 1 s"
            )
        seconds = min(seconds, room)
    return time.monotonic() + seconds


def ensure_groups(ctx: JobContext, plans: Sequence[StreamPlan]) -> None:
    """Create the consumer group where missing, from the start of the stream (id 0): a
    new deployment handles the backlog too. MKSTREAM: an empty stream is not an error."""
    import redis

    for plan in plans:
        key = plan.keys.stream
        try:
            ctx.retry(functools.partial(_create_group, ctx, key), f"create group on {plan.name}")
            ctx.log.info("consumer group created", stream=plan.name)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise ConfigError(f"stream {plan.name}: {exc}") from None


def _create_group(ctx: JobContext, key: str) -> None:
    ctx.redis.xgroup_create(key, ctx.settings.stream_group, "0", mkstream=True)


def _reap_consumers(ctx: JobContext, plans: Sequence[StreamPlan]) -> None:
    s = ctx.settings
    for plan in plans:
        try:
            ctx.redis.eval(_REAP_CONSUMERS, 1, plan.keys.stream, s.stream_group,
                           s.stream_consumer, REAP_IDLE_MS)
        except Exception as exc:  # best effort: a leftover empty consumer costs nothing
            ctx.log.warning("could not remove idle consumers", stream=plan.name,
                            error=describe_error(exc))
