"""Everything the user sees: log lines, tables, JSON, progress bars.

The only module that imports rich, and only when a terminal is being written to:
JSON mode (cron, Kubernetes) never pays for it.

Logs go to stderr: rich lines on a terminal, otherwise one JSON object per line with
``ts``, ``level``, ``job``, ``run_id``, ``message`` and the line's fields. Drivers that
log on their own (clickhouse-connect, urllib3, ...) and Python warnings go through the
same formatter, so the log stays one JSON object per line. Results (tables, ``--json``)
go to stdout. Everything written passes ``redact_text``; stored or user-supplied text is
printed literally (never read as rich markup or emoji codes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from novajobs.redact import redact_text

_LOGGER = logging.getLogger("novajobs")
_state = {"format": "json"}


def resolve_format(requested: str, stream: Any = None) -> str:
    if requested != "auto":
        return requested
    stream = stream or sys.stderr
    return "rich" if hasattr(stream, "isatty") and stream.isatty() else "json"


def setup_logging(log_format: str = "auto", level: str = "info", log_file: str = "") -> str:
    """Configure the ``novajobs`` logger; returns the format chosen ("rich" or "json").

    With ``log_file`` the lines go there (JSON) instead of stderr, if it can be opened."""
    file_handler = open_log_file(log_file) if log_file else None
    fmt = "json" if file_handler else resolve_format(log_format)
    _state["format"] = fmt
    root = logging.getLogger()
    for old in list(_LOGGER.handlers):
        _LOGGER.removeHandler(old)
        old.close()  # a log file's handler closes its file; stderr's leaves stderr open
    for old in [h for h in root.handlers if getattr(h, "novajobs", False)]:
        root.removeHandler(old)
    handler = file_handler or _handler(fmt)
    setattr(handler, "novajobs", True)  # noqa: B010 -- ours, to replace on a new setup
    _LOGGER.addHandler(handler)
    _LOGGER.setLevel(level.upper())
    _LOGGER.propagate = False
    # Other libraries' warnings and errors go to the same place in the same format (not
    # Python's bare "last resort" lines in the middle of the JSON); their chatter below
    # warning is not ours to show.
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return fmt


def _handler(fmt: str) -> logging.Handler:
    handler: logging.Handler
    if fmt == "rich":
        from rich.logging import RichHandler

        handler = RichHandler(console=_console(stderr=True), show_path=False, markup=False)
        handler.setFormatter(_RichFieldsFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    return handler


def open_log_file(path: str) -> logging.Handler | None:
    """A handler appending JSON lines to ``path`` (its directory created). It reopens the
    file when it was moved or removed, so logrotate needs no copytruncate. If it cannot
    be opened: one line on stderr, remembered for the run record (``log_file_problem``),
    and None: the lines go to stderr and the job still runs."""
    from logging.handlers import WatchedFileHandler

    _state["log_file_problem"] = ""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        handler = WatchedFileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        problem = f"cannot write the log file {path}: {exc.strerror or exc}; logging to stderr"
        sys.stderr.write(f"novajobs: {problem}\n")
        _state["log_file_problem"] = problem
        return None
    handler.setFormatter(JsonFormatter())
    return handler


def log_file_problem() -> str:
    """Why the configured log file could not be opened ("" when it could, or none is set)."""
    return _state.get("log_file_problem", "")


def is_rich() -> bool:
    return _state["format"] == "rich"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        if record.name != _LOGGER.name:
            data["logger"] = record.name  # a driver's own line
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        # Redacted as a whole: a secret in a field, a message or a traceback is masked
        # alike, and "****" never breaks the JSON around it.
        return redact_text(json.dumps(data, default=str, ensure_ascii=False))


class RunLogCapture(logging.Handler):
    """Keeps the last log lines of one run (those bound to its ``run_id``) as JSON lines,
    each numbered (``seq``), at most ``max_lines`` lines and ``max_bytes`` bytes, secrets
    removed by ``redact``. The run's heartbeat and its end store them with its record."""

    LINE_MAX = 4000  # characters of one message or traceback kept

    def __init__(self, run_id: str, max_lines: int, max_bytes: int,
                 redact: Callable[[str], str]) -> None:
        super().__init__()
        self.run_id, self.max_lines, self.max_bytes, self.redact = (
            run_id, max_lines, max_bytes, redact)
        self.lines: deque[str] = deque()
        self.size = 0
        self.seq = 0
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "fields", {}).get("run_id") != self.run_id:
            return
        data = json.loads(self.redact(self.format(record)))
        for name in ("message", "traceback"):
            if isinstance(data.get(name), str) and len(data[name]) > self.LINE_MAX:
                data[name] = data[name][: self.LINE_MAX - 1] + "…"
        self.seq += 1
        line = json.dumps({"seq": self.seq, **data}, default=str, ensure_ascii=False)
        self.lines.append(line)
        self.size += len(line.encode())
        while self.lines and (len(self.lines) > self.max_lines or self.size > self.max_bytes):
            self.size -= len(self.lines.popleft().encode())

    def snapshot(self) -> tuple[int, list[str]]:
        """(number of the newest line, the lines kept), consistent with each other."""
        with self.lock or nullcontext():
            return self.seq, list(self.lines)


class _RichFieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}))
        fields.pop("run_id", None)  # noise on a terminal; it is in the JSON and the record
        job = fields.pop("job", None) or (record.name if record.name != _LOGGER.name else None)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        head = f"[{job}] " if job else ""
        text = f"{head}{record.getMessage()}" + (f"  {extra}" if extra else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact_text(text)


class JobLog:
    """A logger with bound fields: ``log.info("cache refreshed", redis_key=k, ttl_sec=90)``."""

    def __init__(self, **bound: Any) -> None:
        self.bound = bound

    def _log(self, level: int, message: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if _LOGGER.isEnabledFor(level):
            merged = {k: v for k, v in {**self.bound, **fields}.items() if v is not None}
            _LOGGER.log(level, message, exc_info=exc_info, extra={"fields": merged})

    def debug(self, message: str, **fields: Any) -> None:
        self._log(logging.DEBUG, message, False, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log(logging.INFO, message, False, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, message, False, fields)

    def error(self, message: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, message, exc_info, fields)


class Progress:
    """Advance by items done. A bar on a terminal; a log line every 10 s otherwise."""

    def __init__(self, log: JobLog, description: str, total: int | None) -> None:
        self.log, self.description, self.total = log, description, total
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._last_log = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
        elif time.monotonic() - self._last_log >= 10:
            self._last_log = time.monotonic()
            self.log.info(f"{self.description}: progress", done=self.done, total=self.total)


@contextmanager
def progress(log: JobLog, description: str, total: int | None = None) -> Iterator[Progress]:
    bar = Progress(log, description, total)
    if not is_rich():
        yield bar
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as RichProgress

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with RichProgress(*columns, console=_console(stderr=True), transient=True) as rich_bar:
        bar._bar, bar._task = rich_bar, rich_bar.add_task(description, total=total)
        yield bar


def print_json(data: Any) -> None:
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write(redact_text(text) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout: rich on a terminal, plain tab-separated text otherwise."""
    if not sys.stdout.isatty():
        sys.stdout.write("\t".join(columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(_cell(c) for c in row) + "\n")
        return
    from rich.table import Table
    from rich.text import Text

    # Text(), not str: a stored message with "[/]" or ":lock:" is shown as it is, never
    # read as markup (which raised) or an emoji code.
    table = Table(title=Text(redact_text(title)), title_justify="left")
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*(Text(_cell(c)) for c in row))
    _console(stderr=False).print(table)


def print_line(text: str) -> None:
    sys.stdout.write(redact_text(text) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return redact_text(" ".join(f"{k}={v}" for k, v in value.items()))
    return redact_text(str(value))


def _console(stderr: bool) -> Any:
    from rich.console import Console

    # rich honours NO_COLOR itself; say so explicitly for terminals that lie about colour.
    # No markup, emoji codes or highlighting of what we print: it is data, not rich text.
    return Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")) or None,
                   markup=False, emoji=False, highlight=False)
