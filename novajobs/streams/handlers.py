"""Stream handlers: the ``Message`` they get, the ``Handler`` base, and the registry.

A handler is registered by name and mapped to streams by the ``stream_handlers``
setting (``stream:audit:log=audit-log``). Names come from three places, first wins:
handlers registered in-process with ``register_handler`` (tests, Python callers), the
built-ins, and the ``novajobs.handlers`` entry-point group of installed packages::

    # pyproject.toml of your package
    [project.entry-points."novajobs.handlers"]
    story-gen = "mypkg.handlers:handle_story"      # a function(message) -> None
    memory-update = "mypkg.handlers:MemoryHandler"  # or a Handler subclass

A handler signals failure by raising:

- any exception: this entry failed; retry it later (with backoff, then the
  dead-letter queue);
- ``PermanentError``: this entry can never succeed; to the dead-letter queue at once;
- ``Unavailable`` (or a connection error of a known driver, see ``is_outage``): not
  this entry, what the handler depends on is down; the run stops with exit 69 and
  the entry stays pending, its attempt count untouched, for a later run;
- a ``NovajobsError`` such as ``ConfigError`` (a missing table): the run stops with
  that error's exit code and the entry stays pending, untouched.

Each worker thread gets its own handler instances, so a handler needs no locking and
may keep a connection per instance (the built-in audit-log handler does).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from novajobs.errors import ConfigError, UsageError
from novajobs.retry import is_transient
from novajobs.streams.keys import StreamKeys, stream_keys

if TYPE_CHECKING:
    from novajobs.output import JobLog
    from novajobs.settings import Settings

ENTRY_POINT_GROUP = "novajobs.handlers"
DEFAULT_PRIORITY = 5  # 1 highest .. 10 lowest, 5 normal

class PermanentError(Exception):
    """Raised by a handler for an entry that can never succeed (malformed data):
    it goes to the dead-letter queue without retries."""


class Unavailable(Exception):
    """Raised by a handler when what it depends on is down, not the entry at fault (a
    service answering 503, a database refusing connections). The run stops with exit 69;
    the entry stays pending with its attempt and delivery counts untouched, for a later
    run. Connection errors of the drivers novajobs knows (redis, psycopg, urllib3, ...,
    see novajobs.retry.is_transient) count as this without being wrapped."""


def is_outage(error: BaseException) -> bool:
    """A handler error that is the infrastructure's fault, not the entry's."""
    return isinstance(error, Unavailable) or is_transient(error)


class Message(NamedTuple):
    """One stream entry as a handler sees it (immutable; a named tuple, the cheapest
    object Python builds: drain-stream makes one per entry)."""

    stream: str  # the stream's name as configured (without the Redis key prefix)
    id: str  # the original entry id: the same on every retry and replay (dedupe on it)
    entry_id: str  # the id of the entry being delivered now (differs after a retry)
    fields: Mapping[str, str]  # the producer's fields, without novajobs' meta fields
    attempts: int = 0  # failed attempts before this delivery


class Handler:
    """Base class of a handler. Override ``handle`` (one message) or ``handle_batch``.

    ``batch_size`` > 1 lets drain-stream pass up to that many messages of one stream
    per call (one transaction for many cheap entries); the per-message timeout then
    applies to the whole call.
    """

    batch_size: ClassVar[int] = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def handle(self, message: Message) -> None:
        raise NotImplementedError

    def handle_batch(self, messages: Sequence[Message]) -> Mapping[str, BaseException]:
        """Handle ``messages``; return the failures keyed by ``entry_id`` (the rest succeeded)."""
        failures: dict[str, BaseException] = {}
        for message in messages:
            try:
                self.handle(message)
            except Exception as exc:  # isolated per message; the pool sees the others
                failures[message.entry_id] = exc
        return failures

    def close(self) -> None:
        """Release what the instance holds (connections); called once per worker thread."""

    @classmethod
    def after_run(cls, settings: Settings, log: JobLog) -> None:
        """Once per run in which the handler was used: housekeeping (e.g. pruning)."""


class FunctionHandler(Handler):
    """Adapts a plain ``function(message) -> None`` to the Handler interface."""

    func: ClassVar[Callable[[Message], Any]]

    def handle(self, message: Message) -> None:
        type(self).func(message)

    def handle_batch(self, messages: Sequence[Message]) -> Mapping[str, BaseException]:
        func, failures = type(self).func, {}  # (the base class's loop, one call less)
        for message in messages:
            try:
                func(message)
            except Exception as exc:  # isolated per message
                failures[message.entry_id] = exc
        return failures


def one_at_a_time(handler: Handler) -> Callable[[Message], Any] | None:
    """The function that handles one message, for a handler whose ``handle_batch`` is
    the standard loop over it (the pool then calls it directly, one call per message,
    with the same outcome); None for a handler with a ``handle_batch`` of its own."""
    batch = type(handler).handle_batch
    if batch is FunctionHandler.handle_batch and isinstance(handler, FunctionHandler):
        return type(handler).func
    if batch is Handler.handle_batch:
        return handler.handle
    return None


HandlerFactory = type[Handler]  # called with the settings, once per worker thread

_BUILTIN = {"audit-log": "novajobs.streams.audit:AuditLogHandler"}
_registered: dict[str, HandlerFactory] = {}


def register_handler(name: str, handler: type[Handler] | Callable[[Message], Any]) -> None:
    """Register a handler in this process (overrides built-ins and entry points)."""
    _registered[name] = as_factory(name, handler)


def unregister_handler(name: str) -> None:
    _registered.pop(name, None)


def as_factory(name: str, obj: Any) -> HandlerFactory:
    if isinstance(obj, type) and issubclass(obj, Handler):
        return obj
    if callable(obj):
        return type(f"FunctionHandler[{name}]", (FunctionHandler,), {"func": staticmethod(obj)})
    raise ConfigError(f"handler {name!r} is neither a Handler subclass nor a function")


def handler_names() -> list[str]:
    names = set(_registered) | set(_BUILTIN)
    names |= {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def load_handler(name: str) -> HandlerFactory:
    """The factory of handler ``name``; ConfigError naming the known ones if there is none."""
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name)
    if target is None:
        found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            known = ", ".join(handler_names())
            raise ConfigError(
                f"stream handler {name!r} is not registered (known: {known}); install a package"
                f" with a {ENTRY_POINT_GROUP!r} entry point, or fix setting stream_handlers"
            )
        target = found[0].value
    return as_factory(name, _import(name, target))


def _import(name: str, target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name.strip())
        for part in attr.strip().split(".") if attr else ():
            obj = getattr(obj, part)
    except Exception as exc:
        raise ConfigError(f"stream handler {name!r} ({target}) cannot be loaded: {exc}") from exc
    return obj


# -- which streams, with what, in which order -----------------------------------------
@dataclass(frozen=True)
class StreamPlan:
    name: str  # as configured, without the key prefix
    handler: str
    priority: int
    keys: StreamKeys


def plan_streams(settings: Settings, only: Sequence[str] = ()) -> list[StreamPlan]:
    """The configured streams (or the ``only`` subset), highest priority first."""
    handlers = _pairs(settings.stream_handlers)
    priorities = {k: int(v) for k, v in _pairs(settings.stream_priorities).items()}
    unknown = [s for s in only if s not in handlers]
    if unknown:
        configured = ", ".join(handlers) or "none"
        raise UsageError(
            f"stream {unknown[0]!r} has no handler in setting stream_handlers "
            f"(configured: {configured})"
        )
    names = list(dict.fromkeys(only)) if only else list(handlers)
    plans = [
        StreamPlan(name, handlers[name], priorities.get(name, DEFAULT_PRIORITY),
                   stream_keys(settings.redis_prefix, name))
        for name in names
    ]
    return sorted(plans, key=lambda p: p.priority)  # stable: config order within a priority


def _pairs(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out
