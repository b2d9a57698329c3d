"""Stream handlers for the tests, usable in-process (register_handler) and by a `novajobs`
subprocess through a real ``novajobs.handlers`` entry point (see ``entry_point_env``)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from novajobs.streams.audit import AuditLogHandler
from novajobs.streams.handlers import Handler, Message


class Recorder(Handler):
    """Sleeps ``fields['sleep']`` s, fails when ``fields['fail']`` is set, then records the
    message's first id in the Redis set ``{prefix}test:done`` (and the order in a list)."""

    def __init__(self, settings: Any) -> None:
        from novajobs.redisconn import connect_redis

        super().__init__(settings)
        self.redis = connect_redis(settings)  # one Redis or a cluster, as novajobs's own
        self.prefix = settings.redis_prefix

    def handle(self, message: Message) -> None:
        time.sleep(float(message.fields.get("sleep", 0)))
        if message.fields.get("fail"):
            raise RuntimeError(f"asked to fail ({message.fields['fail']})")
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.prefix + "test:done", message.id)
        pipe.rpush(self.prefix + "test:order", f"{message.stream} {message.id}")
        pipe.execute()

    def close(self) -> None:
        self.redis.close()


class DyingAudit(AuditLogHandler):
    """The audit-log handler steered by the Redis key ``{prefix}test:mode``: ``fail``
    raises before writing anything; ``die`` writes (commits its rows and dedupe ids)
    and then kill -9s its own process, before drain-stream can ack; else as is."""

    def __init__(self, settings: Any) -> None:
        import redis

        super().__init__(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.mode_key = settings.redis_prefix + "test:mode"

    def handle_batch(self, messages: Sequence[Message]) -> Mapping[str, BaseException]:
        mode = self.redis.get(self.mode_key)
        if mode == b"fail":
            raise RuntimeError("asked to fail")
        failures = super().handle_batch(messages)
        if mode == b"die":
            os.kill(os.getpid(), signal.SIGKILL)
        return failures

    def close(self) -> None:
        super().close()
        self.redis.close()


class Gauge:
    """Counts handler calls running at the same time, and the most ever seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.calls: list[Message] = []

    def __enter__(self) -> Gauge:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def entry_point_env(tmp: Path) -> dict[str, str]:
    """PYTHONPATH with a dist-info that declares `recorder` in the novajobs.handlers group."""
    dist = tmp / "novajobs_test_handlers-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: novajobs-test-handlers\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[novajobs.handlers]\nrecorder = stream_handlers:Recorder\n"
        "audit-die = stream_handlers:DyingAudit\n")
    here = Path(__file__).resolve().parent
    paths = [str(tmp), str(here), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
