"""How far behind a stream is, in one round trip: what drain-stream, promote-retries and
``dlq list`` report per stream (record counters, Pushgateway gauges, the table).

| figure | from | meaning |
|---|---|---|
| ``length`` | XLEN | entries in the stream (acked ones too, until trimmed) |
| ``lag`` | XINFO GROUPS | entries the group has not been handed yet (None: unknown) |
| ``pending`` | XINFO GROUPS | handed out, not acked yet |
| ``oldest_pending_age_sec`` | XPENDING | how long ago the oldest pending entry was added |
| ``retry_size`` / ``retry_next_due`` | ZCARD / ZRANGE 0 0 | the retry set; next due (Unix) |
| ``dlq_size`` / ``dlq_oldest_age_sec`` | XLEN / XRANGE COUNT 1 | dead letters; oldest's age |
| ``dlq_dropped_total`` | GET | dead letters the DLQ cap ever dropped |
| ``queued`` | lag + pending + retry_size | not done yet and not dead |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from novajobs.conversions import text

if TYPE_CHECKING:
    import redis

    from novajobs.streams.keys import StreamKeys


@dataclass(frozen=True)
class StreamLag:
    stream: str
    length: int
    lag: int | None
    pending: int
    oldest_pending_age_sec: float | None
    retry_size: int
    retry_next_due: float | None
    dlq_size: int
    dlq_oldest_age_sec: float | None
    dlq_dropped_total: int

    @property
    def queued(self) -> int:
        return (self.lag or 0) + self.pending + self.retry_size

    def figures(self) -> dict[str, float | int]:
        """Every known figure (None left out), ``queued`` included."""
        out = {k: v for k, v in asdict(self).items() if k != "stream" and v is not None}
        out["queued"] = self.queued
        return out


def measure(r: redis.Redis, keys: StreamKeys, group: str, now: float) -> StreamLag:
    pipe = r.pipeline(transaction=False)
    pipe.xlen(keys.stream)
    pipe.xinfo_groups(keys.stream)
    pipe.xpending(keys.stream, group)
    pipe.zcard(keys.retry)
    pipe.zrange(keys.retry, 0, 0, withscores=True)
    pipe.xlen(keys.dlq)
    pipe.xrange(keys.dlq, count=1)
    pipe.get(keys.dropped)
    length, groups, pending, retry_size, first_due, dlq_size, oldest, dropped = pipe.execute(
        raise_on_error=False)
    info = _group(groups, group)
    oldest_pending = pending.get("min") if isinstance(pending, dict) else None
    return StreamLag(
        stream=keys.name,
        length=_count(length),
        lag=_lag(info) if info else _count(length),  # no group yet: it will read all
        pending=int(info.get("pending") or 0),
        oldest_pending_age_sec=_age(oldest_pending, now),
        retry_size=_count(retry_size),
        retry_next_due=float(first_due[0][1]) if _ok(first_due) and first_due else None,
        dlq_size=_count(dlq_size),
        dlq_oldest_age_sec=_age(oldest[0][0], now) if _ok(oldest) and oldest else None,
        dlq_dropped_total=int(dropped) if _ok(dropped) and dropped else 0,
    )


def as_counters(lags: list[StreamLag]) -> dict[str, int]:
    """For the run record (integer counters): ``<figure>[<stream>]``."""
    return {f"{name}[{lag.stream}]": round(value)
            for lag in lags for name, value in lag.figures().items()}


def _group(groups: Any, name: str) -> dict[str, Any]:
    if not _ok(groups):
        return {}  # no stream yet
    for group in groups:
        if text(group.get("name", b"")) == name:
            return dict(group)
    return {}


def _lag(info: dict[str, Any]) -> int | None:
    if not info:
        return None
    lag = info.get("lag")
    return None if lag is None else int(lag)


def _age(entry_id: Any, now: float) -> float | None:
    if entry_id is None:
        return None
    ms = text(entry_id).partition("-")[0]
    return max(0.0, round(now - int(ms) / 1000, 3)) if ms.isdigit() else None


def _count(value: Any) -> int:
    return int(value) if _ok(value) and value is not None else 0


def _ok(value: Any) -> bool:
    return not isinstance(value, Exception)
