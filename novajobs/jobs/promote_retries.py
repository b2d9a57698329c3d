"""promote-retries: move due entries of ``retry:{stream}`` back into their streams.

Each batch moves atomically in one Lua script (see novajobs/streams/queues.py): an
entry is in the retry set or back in the stream, never both, never neither, whatever
the moment the process dies. Runs take the ordinary job lock (one promoter at a time
over every stream: the work is a few script calls, and two promoters would only race
for the same batches).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from novajobs.context import JobContext, Result
from novajobs.errors import Outcome
from novajobs.fencing import fence_of, refused_as_lock_lost
from novajobs.streams.handlers import plan_streams
from novajobs.streams.queues import pending_retries, promote_due


def run(ctx: JobContext, streams: Sequence[str] = ()) -> Result:
    names = list(dict.fromkeys(streams)) or [p.name for p in plan_streams(ctx.settings)]
    moved: dict[str, int] = {}
    for name in names:
        moved[name] = promote_stream(ctx, name)
    later = {name: pending_retries(ctx.redis, ctx.settings.redis_prefix, name, time.time())[1]
             for name in names}
    total = sum(moved.values())
    ctx.count("promoted", total)
    ctx.count("scheduled_later", sum(later.values()))
    if not total:
        return Result(Outcome.NOTHING_TO_DO, "no retries due", {"scheduled_later": later})
    listing = ", ".join(f"{n} {name}" for name, n in moved.items() if n)
    return Result(
        Outcome.SUCCESS,
        f"promoted {total} due retries ({listing})",
        {"promoted": moved, "scheduled_later": later},
    )


def promote_stream(ctx: JobContext, stream: str) -> int:
    """Promote every retry of ``stream`` due now, one atomic batch at a time."""
    s = ctx.settings
    now = time.time()  # entries falling due while we run wait for the next run
    total = 0
    while True:
        ctx.checkpoint()
        with refused_as_lock_lost(ctx, f"promote retries of {stream}"):
            n = ctx.retry(
                lambda: promote_due(ctx.redis, s.redis_prefix, stream, now,
                                    s.stream_promote_batch, fence_of(ctx)),
                f"promote retries of {stream}",
            )
        total += n
        if n < s.stream_promote_batch:
            break
    if total:
        ctx.log.info("retries promoted", stream=stream, entries=total)
    return total
