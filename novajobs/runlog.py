"""Each run's last log lines, kept in Redis beside its record (``job:log:{unit}:{run_id}``,
a list of JSON lines, for ``run_log_retention``), read back by ``novajobs logs`` and the
console. The lines are the run's own JSON log lines, numbered (``seq``), capped by
``run_log_lines`` and ``run_log_bytes``, with every secret setting's value and URL
password replaced by ``****`` before they leave the process.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from novajobs.dates import parse_duration
from novajobs.output import RunLogCapture
from novajobs.records import details_key, log_key
from novajobs.redact import redact_text
from novajobs.settings import setting_names

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings


def redactor(settings: Settings) -> Callable[[str], str]:
    """Replace the values of secret settings and URL passwords, raw or JSON-escaped."""
    secrets: set[str] = set()
    for name in setting_names():
        value = getattr(settings, name)
        if not isinstance(value, str) or not value:
            continue
        if settings.redacted(name) == "****":
            secrets.add(value)
        elif settings.redacted(name) != value:  # a URL with a password
            password = urlsplit(value).password
            if password:
                secrets.add(password)
    forms = sorted({f for s in secrets if len(s) >= 4 for f in (s, json.dumps(s)[1:-1])},
                   key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in forms:
            text = text.replace(secret, "****")
        return redact_text(text)

    return redact


class RunLog:
    """Captures one run's log lines and stores them; ``store()`` is cheap when nothing
    new was logged (the heartbeat calls it every beat)."""

    def __init__(self, client: Callable[[], redis.Redis], settings: Settings, unit: str,
                 run_id: str) -> None:
        self.client, self.key = client, log_key(settings.redis_prefix, unit, run_id)
        self.details_key = details_key(settings.redis_prefix, unit, run_id)
        self.retention = max(int(parse_duration(settings.run_log_retention)), 60)
        self.capture = RunLogCapture(run_id, settings.run_log_lines, settings.run_log_bytes,
                                     redactor(settings))
        self._stored = 0
        logging.getLogger("novajobs").addHandler(self.capture)

    def store(self) -> None:
        seq, lines = self.capture.snapshot()
        if seq == self._stored or not lines:
            return
        pipe = self.client().pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.rpush(self.key, *lines)
        pipe.expire(self.key, self.retention)
        pipe.execute()
        self._stored = seq

    def store_details(self, details: dict[str, Any]) -> None:
        """What the job returned beside its counters (the record keeps only those): for
        the console's run page, capped at ``run_log_bytes`` like the lines."""
        if not details:
            return
        text = self.capture.redact(json.dumps(details, default=str, ensure_ascii=False))
        if len(text.encode()) > self.capture.max_bytes:
            text = json.dumps({"truncated": True, "bytes": len(text.encode()),
                               "keys": sorted(details)[:50]})
        self.client().set(self.details_key, text, ex=self.retention)

    def close(self) -> None:
        logging.getLogger("novajobs").removeHandler(self.capture)


SHOWN_APART = frozenset({"seq", "ts", "level", "message", "job", "run_id", "traceback"})


def line_text(line: dict[str, Any], clock_only: bool = False) -> str:
    """A kept line as one line of text: time, level, message, then its other fields
    (``key=value``), and the traceback below, if any. ``clock_only``: the time of day only."""
    extra = " ".join(f"{k}={v}" for k, v in line.items() if k not in SHOWN_APART)
    ts = str(line.get("ts", ""))
    text = (f"{ts[11:23] if clock_only else ts} {str(line.get('level', '')).upper():7} "
            f"{line.get('message', '')}" + (f"  {extra}" if extra else ""))
    return text + (f"\n{line['traceback']}" if line.get("traceback") else "")


def read_lines(r: redis.Redis, prefix: str, unit: str, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.lrange(log_key(prefix, unit, run_id), 0, -1)]


def read_details(r: redis.Redis, prefix: str, unit: str, run_id: str) -> dict[str, Any] | None:
    raw = r.get(details_key(prefix, unit, run_id))
    return json.loads(raw) if raw else None


def follow(r: redis.Redis, prefix: str, unit: str, run_id: str, running: Callable[[], bool],
           poll_sec: float = 1.0) -> Iterator[dict[str, Any]]:
    """The run's lines as they arrive, until it has ended and its last lines are read."""
    shown = 0
    while True:
        still_running = running()  # asked before reading: the last lines come after the end
        for line in read_lines(r, prefix, unit, run_id):
            if int(line.get("seq", 0)) > shown:
                shown = int(line["seq"])
                yield line
        if not still_running:
            return
        time.sleep(poll_sec)
