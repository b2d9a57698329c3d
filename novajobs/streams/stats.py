"""What a drain did, as pool statistics: counts and handling times."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

P95_EXACT = 10_000  # handling times sorted at most for the p95

COUNTS = (
    "received",  # entries taken from the streams (reclaimed ones included)
    "reclaimed",  # of those, taken over from consumers that left them pending (XAUTOCLAIM)
    "succeeded",  # handled and acked
    "retried",  # failed, scheduled in retry:{stream} and acked
    "dead_lettered",  # moved to dlq:{stream} (poison, permanent error, or out of retries)
    "timed_out",  # of the failures, calls that overran the per-message timeout
    "left_pending",  # unfinished when the run stopped: reclaimed by a later run
    "past_dedupe_retention",  # handed out again with a first id older than the dedupe
    # retention: an idempotent handler may have forgotten it handled it (warned)
)


@dataclass
class DrainStats:
    counts: Counter[str] = field(default_factory=Counter)
    per_stream: dict[str, Counter[str]] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)  # seconds, one per handled message

    def add(self, stream: str, what: str, n: int = 1) -> None:
        if n:
            self.counts[what] += n
            self.per_stream.setdefault(stream, Counter())[what] += n

    def timed(self, seconds: Sequence[float], sizes: Sequence[int] | None = None) -> None:
        """Handler calls took ``seconds`` each, for ``sizes`` messages each (one each when
        None): every message waited as long as its call."""
        if sizes is None:
            self.durations.extend(seconds)
        else:
            for took, messages in zip(seconds, sizes, strict=True):
                self.durations.extend([took] * messages)

    def avg_ms(self) -> float:
        return round(1000 * sum(self.durations) / len(self.durations), 2) if self.durations else 0.0

    def p95_ms(self) -> float:
        """Exact up to P95_EXACT messages; beyond, from every k-th of them (sorting all of
        100k was 1% of a fast drain's work, and a run's record asks for it twice)."""
        if not self.durations:
            return 0.0
        sample = self.durations[:: -(-len(self.durations) // P95_EXACT)]
        rank = min(len(sample) - 1, math.ceil(0.95 * len(sample)) - 1)
        return round(1000 * sorted(sample)[rank], 2)

    def counters(self) -> dict[str, int]:
        """For the run record: every count (zeros too) plus the handling times in
        microseconds (run-record counters are integers)."""
        out = {name: self.counts[name] for name in COUNTS}
        out["avg_us"] = round(self.avg_ms() * 1000)
        out["p95_us"] = round(self.p95_ms() * 1000)
        return out

    def summary(self) -> str:
        c = self.counts
        return (
            f"received {c['received']} (reclaimed {c['reclaimed']}), succeeded {c['succeeded']}, "
            f"retried {c['retried']}, dead-lettered {c['dead_lettered']}, "
            f"timed out {c['timed_out']}, left pending {c['left_pending']}; "
            f"handling avg {self.avg_ms()} ms, p95 {self.p95_ms()} ms"
        )
