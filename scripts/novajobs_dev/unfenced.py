"""novajobs as it was before fencing tokens, for measuring what they cost in one process:
the lock a plain ``SET NX PX``, the writes plain commands and transactions, the run
records a plain MULTI. Only benchmarks use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def unfenced() -> Iterator[None]:
    """Inside: every run takes no fence and writes without checking one."""
    from novajobs import fencing, runner
    from novajobs.jobs import daily_stats, refresh_trending
    from novajobs.lock import JobLock

    def take(self: JobLock) -> bool:
        return bool(self.redis.set(self.key, self.value, nx=True, px=self.ttl_ms))

    def plain_set(ctx: Any, key: str, value: str, *args: Any) -> Any:
        return ctx.redis.execute_command("SET", key, value, *args)

    @contextmanager
    def plain_transaction(ctx: Any, what: str) -> Iterator[Any]:
        with ctx.pg.transaction():
            yield ctx.pg

    patches: list[tuple[Any, str, Any]] = [
        (JobLock, "_take", take),
        (runner, "fence_of", lambda ctx: None),
        (fencing, "fence_of", lambda ctx: None),
        (refresh_trending, "fenced_set", plain_set),
        (daily_stats, "pg_transaction", plain_transaction),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
