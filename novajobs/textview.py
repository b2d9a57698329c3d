"""Run records as plain text that fits a terminal: the compact ``status`` table (one line
per job, relative ages, cut with an ellipsis) and the full ``history`` of one job.

Pure functions over the record schema (novajobs/records.py): no Redis, no rich.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

COLUMNS = ("JOB", "STATE", "WHEN", "TOOK", "EXIT", "LAST OK", "MESSAGE")
_FIXED = (13, 4, 5, 4, 7)  # widths of STATE .. LAST OK


def age(seconds: float | None) -> str:
    """12s, 3m, 5h, 2d: how long ago, in one short word."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 10_000:
        return f"{ms / 1000:.1f}s"
    s = round(ms / 1000)
    if s < 600:
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m"


def cut(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters, an ellipsis where it was cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def since(iso: str | None, now: float) -> float | None:
    if not iso:
        return None
    try:
        return now - datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def state_word(status: dict[str, Any]) -> str:
    state = status["state"]
    if state in ("ended", None):
        return str(status["outcome"])
    return str(state).replace("_", " ")


def status_note(status: dict[str, Any], now: float) -> str:
    """The MESSAGE column: what the run said (its error if it failed), or why it is
    running or stale."""
    state = status["state"]
    seen = age(status.get("seen_age_sec"))
    if state == "running":
        text = f"seen {seen} ago"
    elif state == "stale":
        lock = status.get("lock")
        held = "locked" if lock and lock["run_id"] == status["run_id"] else "no lock"
        text = f"silent {seen}, {held}"  # short: it must fit beside the job at 80 columns
    elif state == "never_run":
        text = ""
    else:
        text = status["error"] or status["message"] or ""
    if status.get("warning"):
        text = f"warning: {status['warning']}; {text}" if text else f"warning: {status['warning']}"
    return text


def skips_note(status: dict[str, Any], now: float) -> str:
    if not status["skips"]:
        return ""
    return f"skipped {status['skips']}x, {age(since(status['last_skipped_at'], now))} ago"


def status_lines(rows: list[dict[str, Any]], width: int = 80,
                 now: float | None = None) -> Iterator[str]:
    now = time.time() if now is None else now
    job_w = min(max([len(COLUMNS[0]), *(len(r["unit"]) for r in rows)]), 28)
    msg_w = max(width - job_w - sum(_FIXED) - len(_FIXED) - 1, 10)
    widths = (job_w, *_FIXED)

    def line(cells: tuple[str, ...], message: str) -> str:
        parts = [
            cut(c, w).rjust(w) if i in (2, 3, 4, 5) else cut(c, w).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return (" ".join(parts) + " " + cut(message, msg_w)).rstrip()

    yield line(COLUMNS[:-1], COLUMNS[-1])
    for r in rows:
        ended = r["state"] == "ended"
        when = since(r["ended_at"] if ended else r["started_at"], now)
        exit_code = r["exit_code"]
        yield line(
            (
                r["unit"],
                state_word(r),
                age(when),
                duration(r["duration_ms"]),
                "-" if exit_code is None else str(exit_code),
                age(since(r["last_success_at"], now)),
            ),
            _message(status_note(r, now), skips_note(r, now), msg_w),
        )
        if r.get("attempt"):
            yield "  " + cut(attempt_note(r["attempt"], now), width - 2)


def _message(text: str, skips: str, width: int) -> str:
    """The run's message, cut so that the skips since it started stay visible."""
    room = width - len(skips) - 2
    if not skips:
        return text
    return f"{cut(text, room)}; {skips}" if text and room >= 8 else skips


def attempt_note(attempt: dict[str, Any], now: float) -> str:
    kind = "dry run" if attempt["dry_run"] else "attempt"
    when = attempt["ended_at"] or attempt["started_at"]
    code = attempt["exit_code"]
    said = attempt["error"] or attempt["message"] or ""
    return (f"└ later {kind} {age(since(when, now))} ago: {attempt['outcome']}"
            + ("" if code is None else f", exit {code}") + (f": {said}" if said else ""))


def history_lines(entries: list[dict[str, Any]], timezone: str,
                  now: float | None = None) -> Iterator[str]:
    """Every run in full: a heading line per run, then its message, error and counters."""
    now = time.time() if now is None else now
    zone = ZoneInfo(timezone)
    for e in entries:
        start = _local(e["started_at"], zone)
        if e["skips"] and e["skips"] > 1:
            head = (f"{start} .. {_local(e['ended_at'], zone)}  skipped {e['skips']}x"
                    f" (last {age(since(e['ended_at'], now))} ago)")
        else:
            code = "" if e["exit_code"] is None else f"  exit {e['exit_code']}"
            dry = " (dry run)" if e["dry_run"] and e["outcome"] != "dry_run" else ""
            head = (f"{start}  {e['outcome']}{dry}{code}  took {duration(e['duration_ms'])}"
                    f"  ({age(since(e['started_at'], now))} ago)")
        yield head
        yield f"    run {e['run_id']} on {e['host']} pid {e['pid']}"
        for name in ("message", "error", "warning"):
            if e[name]:
                yield f"    {name}: {e[name]}"
        if e["counters"]:
            yield "    counters: " + " ".join(f"{k}={v}" for k, v in e["counters"].items())


def _local(iso: str | None, zone: ZoneInfo) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso
