"""A running run's own heartbeat, every ``run_heartbeat_sec``, beside the lock's:

- it says the run is alive (``seen_at`` in its status): ``status`` tells a run that
  died without a word (``kill -9``) by a heartbeat that stopped;
- it looks for a stop request for this run (``novajobs stop``, the console), from
  anywhere, and turns it into a stop at the next safe point, as SIGTERM would;
- it stores the run's latest log lines in Redis, so ``logs --follow`` can tail the run.

Every operation touches one key, so it works the same on a Redis Cluster. A failing
beat is logged once and never stops the run: the lock's lease check covers safety.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

from novajobs.errors import Outcome
from novajobs.fencing import fence_of
from novajobs.records import now_iso, stop_key, touch
from novajobs.retry import describe_error

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.records import RunRecord
    from novajobs.runlog import RunLog


class Beacon:
    def __init__(self, ctx: JobContext, rec: RunRecord, log: RunLog) -> None:
        self.ctx, self.rec, self.log = ctx, rec, log
        self.interval = ctx.settings.run_heartbeat_sec
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.started = False

    def start(self) -> None:
        self.started = True
        self._thread = threading.Thread(target=self._loop, name=f"beacon {self.rec.unit}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Briefly: a beat stuck on a Redis that stopped answering must not hold up the
            # end of the run (the thread is a daemon; its next wait sees the stop).
            self._thread.join(timeout=0.5)
        self._thread = None

    def close(self, store: bool = True) -> None:
        """Store the run's last lines (all of them, the final one included); stop capturing.

        Only for a run that got as far as its start record (a skip's one line is its
        record; a run that never reached Redis would only wait for it once more), and
        not with ``store=False`` (Redis just failed to answer)."""
        self.stop()
        try:
            if store and self.started and self.rec.outcome is not Outcome.SKIPPED:
                self.log.store()
                self.log.store_details(self.rec.details)
        except Exception as exc:  # debug: the line before this one must stay the last word
            self.ctx.log.debug("could not keep the run's log lines in Redis",
                               error=describe_error(exc))
        finally:
            self.log.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                self._failing = False
            except Exception as exc:  # Redis away for a moment: the next beat tries again
                if not self._failing:
                    self.ctx.log.warning("run heartbeat failed", error=describe_error(exc))
                self._failing = True

    def beat(self) -> None:
        prefix, rec, r = self.ctx.settings.redis_prefix, self.rec, self.ctx.redis
        touch(r, prefix, rec.unit, now_iso(), fence_of(self.ctx))
        request = r.hget(stop_key(prefix, rec.unit), rec.run_id)
        if request is not None and self.ctx.guard.stop_reason is None:
            by = json.loads(request).get("by", "?")
            self.ctx.guard.request_stop("stop request", f"stop requested by {by}")
            self.ctx.log.warning(f"stop requested by {by}; stopping at the next safe point")
        self.log.store()
