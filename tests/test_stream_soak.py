"""A simulated day, shortened (scripts/bench_stream_soak.py runs the 24 hours): drains
with producers in between, retries and poison, on the test's Redis. What Redis holds for
the stream stays flat: the stream is trimmed after each drain, the DLQ stays within its
cap, the retry set empties at each promotion; so do the run's other keys without a TTL
(records, locks, fences)."""

from __future__ import annotations

from novajobs_dev.stream_soak import flat, simulate


def test_forty_simulated_minutes_keep_memory_flat(redis_client, make_settings):
    per_minute = 40

    samples = simulate(redis_client, make_settings, minutes=40, per_minute=per_minute)

    assert flat(samples), [(s.bytes, s.lasting) for s in samples]
    assert samples[-1].lasting > 0 and samples[-1].expiring > 0  # (measured: not nothing)
    assert all(s.length <= per_minute for s in samples)  # trimmed: not the 1600 produced
    assert all(s.dlq <= 50 for s in samples) and samples[-1].dropped > 0  # capped, counted
    assert max(s.retry for s in samples) <= per_minute // 10
