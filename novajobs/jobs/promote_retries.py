"""promote-retries: move due entries of ``retry:{stream}`` back into their streams.

Each batch moves atomically in one Lua script (see novajobs/streams/queues.py): an
entry is in the retry set or back in the stream, never both, never neither, whatever
the moment the process dies. Runs take the ordinary job lock (one promoter at a time
over every stream: the work is a few script calls, and two promoters would only race
for the same batches).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

from novajobs.context import JobContext, Result
from novajobs.errors import Outcome
from novajobs.fencing import fence_of, refused_as_lock_lost
from novajobs.streams import dlq
from novajobs.streams.handlers import plan_streams
from novajobs.streams.keys import StreamKeys, migrate_legacy, stream_keys
from novajobs.streams.queues import pending_retries, promote_due
from novajobs.streams.upkeep import upkeep


def run(ctx: JobContext, streams: Sequence[str] = ()) -> Result:
    dlq.max_age_sec(ctx.settings)
    prefix = ctx.settings.redis_prefix
    names = list(dict.fromkeys(streams)) or [p.name for p in plan_streams(ctx.settings)]
    all_keys = [stream_keys(prefix, name) for name in names]
    moved: dict[str, int] = {}
    for keys in all_keys:
        ctx.retry(functools.partial(migrate_legacy, ctx.redis, keys),
                  f"migrate the keys of {keys.name}")
        moved[keys.name] = promote_stream(ctx, keys)
    later = {k.name: pending_retries(ctx.redis, k, time.time())[1] for k in all_keys}
    lags = {lag.stream: lag.figures() for lag in upkeep(ctx, all_keys, trim=False)}
    total = sum(moved.values())
    ctx.count("promoted", total)
    ctx.count("scheduled_later", sum(later.values()))
    if not total:
        return Result(Outcome.NOTHING_TO_DO, "no retries due",
                      {"scheduled_later": later, "lag": lags})
    listing = ", ".join(f"{n} {name}" for name, n in moved.items() if n)
    return Result(
        Outcome.SUCCESS,
        f"promoted {total} due retries ({listing})",
        {"promoted": moved, "scheduled_later": later, "lag": lags},
    )


def promote_stream(ctx: JobContext, keys: StreamKeys) -> int:
    """Promote every retry of the stream due now, one atomic batch at a time."""
    batch = ctx.settings.stream_promote_batch
    now = time.time()  # entries falling due while we run wait for the next run
    total = 0
    while True:
        ctx.checkpoint()
        with refused_as_lock_lost(ctx, f"promote retries of {keys.name}"):
            n = ctx.retry(lambda: promote_due(ctx.redis, keys, now, batch, fence_of(ctx)),
                          f"promote retries of {keys.name}")
        total += n
        if n < batch:
            break
    if total:
        ctx.log.info("retries promoted", stream=keys.name, entries=total)
    return total
