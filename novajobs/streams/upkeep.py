"""What every drain-stream and promote-retries run does at its end, however it ended:
trim each stream (drain-stream only), cap its DLQ, and measure it (lag.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from novajobs.retry import describe_error
from novajobs.streams import dlq
from novajobs.streams.lag import StreamLag, as_counters, measure
from novajobs.streams.settle import trim_acked

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.streams.keys import StreamKeys


def upkeep(ctx: JobContext, all_keys: Sequence[StreamKeys], trim: bool) -> list[StreamLag]:
    """After a run, whatever it ended as: trim what every group is done with, cap the
    DLQ, and measure each stream (counters ``trimmed``, ``dlq_dropped`` and the lag
    figures). Best effort, one try each: a Redis that is down was already reported."""
    s = ctx.settings
    max_age = dlq.max_age_sec(s)
    lags = []
    for keys in all_keys:
        try:
            if trim:
                ctx.count("trimmed", trim_acked(ctx.redis, keys))
            dropped = dlq.cap(ctx.redis, keys, s.stream_dlq_max_len, max_age)
            ctx.count("dlq_dropped", dropped)
            if dropped:
                ctx.log.warning("dead letters dropped by the DLQ cap", stream=keys.name,
                                dropped=dropped, max_len=s.stream_dlq_max_len,
                                max_age=s.stream_dlq_max_age)
            lags.append(measure(ctx.redis, keys, s.stream_group, time.time()))
        except Exception as exc:
            ctx.log.warning("could not trim or measure the stream", stream=keys.name,
                            error=describe_error(exc))
    ctx.counters.update(as_counters(lags))
    return lags
