"""A simulated day of drain-stream (scripts/bench_stream_soak.py, tests/test_stream_soak.py):
producers add entries between runs, a few fail once (retry set, promote-retries), a few
are poison (DLQ, capped); drain-stream and promote-retries run once per simulated
minute. What Redis holds for the stream (stream, retry set, DLQ: MEMORY USAGE) must stay
flat: trimming, the DLQ cap and promotion keep it bounded however long it runs; so must
every other key the runs leave without a TTL (records capped at history_size, locks,
fences). Run logs and details expire after run_log_retention (7 days by default: a
compressed day never sees them go), so they are measured apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STREAM = "soak"


@dataclass
class Sample:
    minute: int
    bytes: int  # MEMORY USAGE of the stream, its retry set and its DLQ
    length: int  # entries in the stream after the drain
    retry: int
    dlq: int
    dropped: int  # by the DLQ cap, so far
    lasting: int = 0  # every other key of the prefix without a TTL (records, locks, ...)
    expiring: int = 0  # keys with a TTL: run logs and details (run_log_retention)


def handle(message: Any) -> None:
    """Fails an entry marked ``fail`` on its first attempt; ``poison`` never succeeds."""
    from novajobs.streams.handlers import PermanentError

    if message.fields.get("poison"):
        raise PermanentError("poison")
    if message.fields.get("fail") and message.attempts == 0:
        raise RuntimeError("fails once")


def simulate(r: Any, settings: Callable[..., Any], minutes: int, per_minute: int,
             report: Callable[[Sample], None] = lambda sample: None) -> list[Sample]:
    """``settings(**overrides)`` gives the Settings of this simulation (its Redis, prefix)."""
    from novajobs.runner import RunOptions, run_job
    from novajobs.streams.handlers import register_handler, unregister_handler
    from novajobs.streams.keys import stream_keys

    register_handler("soak", handle)
    s = settings(stream_handlers=(f"{STREAM}=soak",), stream_retry_initial_sec=0.001,
                 stream_retry_jitter=0.0, stream_max_retries=1, stream_dlq_max_len=50,
                 stream_dlq_max_age="3s", drain_block_ms=20, log_level="error",
                 history_size=5)  # (the run history fills up within the warm-up)
    keys = stream_keys(s.redis_prefix, STREAM)
    samples = []
    try:
        for minute in range(minutes):
            pipe = r.pipeline(transaction=False)
            for i in range(per_minute):
                n = minute * per_minute + i
                fields = {"n": str(n), "payload": "x" * 40}
                if n % 50 == 7:
                    fields["fail"] = "1"
                if n % 200 == 11:
                    fields["poison"] = "1"
                pipe.xadd(keys.stream, fields)
            pipe.execute()
            drained = run_job("drain-stream", s, RunOptions())
            assert drained.outcome.ok, (drained.outcome, drained.error)
            run_job("promote-retries", s, RunOptions())
            samples.append(_sample(r, keys, s.redis_prefix, minute))
            report(samples[-1])
    finally:
        unregister_handler("soak")
    return samples


def _sample(r: Any, keys: Any, prefix: str, minute: int) -> Sample:
    pipe = r.pipeline(transaction=False)
    for key in (keys.stream, keys.retry, keys.dlq):
        pipe.memory_usage(key, samples=0)
    pipe.xlen(keys.stream)
    pipe.zcard(keys.retry)
    pipe.xlen(keys.dlq)
    pipe.get(keys.dropped)
    *sizes, length, retry, dlq, dropped = pipe.execute()
    lasting, expiring = _others(r, prefix, {keys.stream, keys.retry, keys.dlq})
    return Sample(minute, sum(int(b or 0) for b in sizes), int(length), int(retry), int(dlq),
                  int(dropped or 0), lasting, expiring)


def _others(r: Any, prefix: str, skip: set[str]) -> tuple[int, int]:
    """(bytes of the prefix's other keys without a TTL, bytes of those with one)."""
    names = [k for k in r.scan_iter(match=_glob(prefix) + "*", count=1000)
             if k.decode() not in skip]
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
        pipe.pttl(name)
    replies = pipe.execute()
    sizes = [(int(replies[i] or 0), int(replies[i + 1])) for i in range(0, len(replies), 2)]
    return sum(b for b, ttl in sizes if ttl < 0), sum(b for b, ttl in sizes if ttl >= 0)


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def flat(samples: list[Sample], slack: float = 1.25) -> bool:
    """What the stream holds (stream, retry set, DLQ) and every other key of the prefix
    that has no TTL: the last quarter never more than ``slack`` times the most of the
    second quarter (the first is warm-up: the DLQ fills up to its cap, the run history
    up to history_size). Keys with a TTL (run logs and details) are bounded by it."""
    quarter = max(1, len(samples) // 4)
    for figure in ("bytes", "lasting"):
        settled = max(getattr(s, figure) for s in samples[quarter : 2 * quarter])
        if max(getattr(s, figure) for s in samples[-quarter:]) > slack * settled:
            return False
    return True
