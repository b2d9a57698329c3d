"""The job lock: ``SET key value NX PX ttl``, renewed by a heartbeat, released by its owner.

The value is a JSON document naming the holder (job, host, pid, run id, since) plus a
random token; renew and release are compare-and-act Lua scripts on that exact value,
so a run can never extend or delete a lock another run holds.

Besides the heartbeat, the owner checks its *lease* locally before each write: the
time since the last successful renewal, on the monotonic clock. A process that was
paused past the TTL (GC, SIGSTOP, a frozen VM) sees at once that its lease ran out,
even before the heartbeat thread has had a chance to notice the key is gone.

Replication is asynchronous: a primary that dies right after ``SET`` may not have
passed the lock to the replica that takes its place, and a second run could then take
it too. Where the lock's primary has replicas, ``acquire`` therefore waits (``WAIT 1``,
at most a tenth of the TTL, 1 s) until one has it, and the runner warns when none did.
Renewals need no wait: the lease check stops writes a third of a TTL before even a
renewal the new primary never saw would have run out, and the next renewal on the new
primary either extends the lock or finds it gone (exit 4, lock lost).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novajobs.conversions import text
from novajobs.redisconn import write_and_wait

if TYPE_CHECKING:
    import redis

# KEYS[1] lock key; ARGV[1] the value we set; ARGV[2] ttl ms
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def lock_key(prefix: str, job: str, shard_label: str | None = None) -> str:
    return f"{prefix}job:lock:{job}" + (f":{shard_label}" if shard_label else "")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as read back from Redis."""

    key: str
    info: dict[str, Any]
    ttl_ms: int
    raw: str

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Who holds it, as the status, `novajobs locks` and the console show it."""
        since = self.info.get("since")
        now = time.time() if now is None else now
        age = now - since if isinstance(since, int | float) else None
        return {
            "host": self.info.get("host"),
            "pid": self.info.get("pid"),
            "run_id": self.info.get("run_id"),
            "age_sec": round(age, 1) if age is not None else None,
            "ttl_sec": round(self.ttl_ms / 1000, 1),
        }

    def describe(self) -> str:
        i = self.info
        return (
            f"host {i.get('host', '?')} pid {i.get('pid', '?')} run {i.get('run_id', '?')}"
            f" (expires in {self.ttl_ms / 1000:.1f} s)"
        )


def read_holder(r: redis.Redis, key: str) -> Holder | None:
    pipe = r.pipeline(transaction=True)
    pipe.get(key)
    pipe.pttl(key)
    raw, ttl = pipe.execute()
    if raw is None:
        return None
    raw_text = text(raw)
    try:
        info = json.loads(raw_text)
        info = info if isinstance(info, dict) else {}
    except ValueError:  # a lock written by something else: show it, don't crash
        info = {}
    return Holder(key=key, info=info, ttl_ms=max(int(ttl), 0), raw=raw_text)


def force_release(r: redis.Redis, holder: Holder) -> bool:
    """Delete a lock only if it still has the value that was shown to the operator."""
    return bool(r.eval(_RELEASE, 1, holder.key, holder.raw))


class JobLock:
    def __init__(self, r: redis.Redis, key: str, ttl_sec: float, holder: dict[str, Any]) -> None:
        self.redis = r
        self.key = key
        self.ttl_ms = max(int(ttl_sec * 1000), 1000)
        self.value = json.dumps({**holder, "since": time.time(), "token": secrets.token_hex(16)})
        self._renewed_at: float | None = None  # monotonic time a successful SET/PEXPIRE was sent
        self.fence: int | None = None  # this acquisition's fencing token (novajobs/fencing.py)
        # Replicas that acknowledged the SET (None: the primary has none). See the docstring.
        self.replicas_acked: int | None = None
        self.wait_ms = min(1000, self.ttl_ms // 10)
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release -------------------------------------------------------------
    def acquire(self, wait_sec: float = 0.0, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Try to take the lock, polling for up to ``wait_sec`` seconds (or until
        ``give_up()``, e.g. SIGTERM arrived while waiting)."""
        deadline = time.monotonic() + wait_sec
        delay = 0.05
        while True:
            sent = time.monotonic()
            if self._take():
                self._renewed_at = sent
                return True
            if time.monotonic() + delay > deadline or give_up():
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _take(self) -> bool:
        """``SET NX PX`` and, in the same script, the next fence of this lock key."""
        from novajobs.fencing import acquire_script, colocated

        script = acquire_script(self.redis)
        fence, self.replicas_acked = write_and_wait(
            self.redis, self.key,
            lambda c: script(keys=[self.key, colocated(self.key, ":fence")],
                             args=[self.value, self.ttl_ms], client=c),
            self.wait_ms,
        )
        if fence is None:
            return False
        self.fence = int(fence)
        return True

    def release(self, client: redis.Redis | None = None) -> bool:
        """Delete the lock if it is still ours (through ``client``, e.g. one with short
        timeouts for the end of a run). Safe to call more than once."""
        self.stop_heartbeat()
        if self._renewed_at is None:
            return False
        self._renewed_at = None
        return bool((client or self.redis).eval(_RELEASE, 1, self.key, self.value))

    def renew(self) -> bool:
        sent = time.monotonic()
        if self.redis.eval(_RENEW, 1, self.key, self.value, self.ttl_ms):
            self._renewed_at = sent
            return True
        self._lost.set()
        return False

    # -- lease -------------------------------------------------------------------------
    def lease_remaining(self) -> float:
        """Seconds the lock is certainly still ours, judged on the local monotonic clock."""
        if self._renewed_at is None or self._lost.is_set():
            return 0.0
        return self.ttl_ms / 1000 - (time.monotonic() - self._renewed_at)

    def lease_ok(self) -> bool:
        # The heartbeat renews every TTL/3, so a healthy lease never drops below 2/3 of
        # the TTL; below 1/3 at least one renewal was missed and a write is not safe.
        return self.lease_remaining() > self.ttl_ms / 3000

    # -- heartbeat ---------------------------------------------------------------------
    def start_heartbeat(self, on_error: Callable[[Exception], None]) -> None:
        def beat() -> None:
            interval = self.ttl_ms / 3000
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        return
                except Exception as exc:  # a network blip: the lease check covers us
                    on_error(exc)

        self._thread = threading.Thread(target=beat, name=f"heartbeat {self.key}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            # Briefly: a renewal stuck on a hung Redis must not hold up the release (and a
            # renewal landing after it finds the key gone or not ours: it changes nothing).
            self._thread.join(timeout=0.5)
        self._thread = None
