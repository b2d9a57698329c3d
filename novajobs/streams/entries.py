"""The fields of the entries novajobs writes back: producer fields plus ``novajobs:*`` meta.

Every field set novajobs writes (a promoted retry, a dead letter, a replayed dead
letter) is built by ``with_meta``: it drops whatever ``novajobs:*`` fields the source
carried and appends the new ones, so a meta field is never written twice whatever
path an entry took (a promoted retry dead-lettered again once carried ``novajobs:id``
twice, and the second, wrong one won when read back).

| field | in | meaning |
|---|---|---|
| ``novajobs:id`` | stream, DLQ | the id the entry first had: stable across retries and replays |
| ``novajobs:attempts`` | stream, DLQ | failed attempts so far (a replay starts over: absent) |
| ``novajobs:error`` | DLQ | why it was dead-lettered (one line, at most 2000 chars) |
| ``novajobs:failed_at`` | DLQ | when (ISO 8601, UTC) |
| ``novajobs:raw`` | DLQ | a retry member that could not be read back, verbatim |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from novajobs.conversions import text
from novajobs.streams.handlers import Message

META_PREFIX = "novajobs:"
META_ID = "novajobs:id"
META_ATTEMPTS = "novajobs:attempts"
META_ERROR = "novajobs:error"
META_FAILED_AT = "novajobs:failed_at"
META_RAW = "novajobs:raw"
_PREFIX_BYTES = META_PREFIX.encode()


class PoisonEntry(Exception):
    """A stream entry that cannot be decoded into a Message: straight to the DLQ."""


def is_meta(name: str | bytes) -> bool:
    if isinstance(name, bytes):
        return name.startswith(_PREFIX_BYTES)
    return name.startswith(META_PREFIX)


def with_meta(fields: Mapping[Any, Any], meta: Mapping[str, str]) -> dict[Any, Any]:
    """``fields`` without any meta field, then ``meta``: the one way a field set is built."""
    out = {name: value for name, value in fields.items() if not is_meta(name)}
    out.update(meta)
    return out


def meta(first_id: str, attempts: int | None = None, error: str | None = None,
         failed_at: float | None = None) -> dict[str, str]:
    out = {META_ID: first_id}
    if attempts is not None:
        out[META_ATTEMPTS] = str(attempts)
    if error is not None:
        out[META_ERROR] = error[:2000]
    if failed_at is not None:
        out[META_FAILED_AT] = datetime.fromtimestamp(failed_at, UTC).isoformat(
            timespec="milliseconds")
    return out


def first_values(pairs: Iterable[Any]) -> dict[Any, Any]:
    """A flat ``[name, value, ...]`` list as a dict in which a repeated name keeps its
    FIRST value (dead letters written by older versions repeat ``novajobs:id``)."""
    out: dict[Any, Any] = {}
    it = iter(pairs)
    for name, value in zip(it, it, strict=True):
        out.setdefault(name, value)
    return out


def peek_meta(raw: Mapping[Any, Any], entry_id: str) -> tuple[str, int]:
    """(first id, attempts) of an entry that may not decode: its meta where readable."""
    first = text(raw.get(META_ID.encode(), raw.get(META_ID, b"")))
    attempts = text(raw.get(META_ATTEMPTS.encode(), raw.get(META_ATTEMPTS, b"")))
    return first or entry_id, int(attempts) if attempts.isdigit() else 0


@dataclass
class Decoded:
    """Entries read from a stream, as handlers get them and as poison for the DLQ."""

    messages: list[Message] = field(default_factory=list)
    poison: list[tuple[str, dict[bytes, bytes], str]] = field(default_factory=list)  # id, raw, why

    def __len__(self) -> int:
        return len(self.messages) + len(self.poison)


def decode_entries(stream: str, entries: Iterable[tuple[Any, Mapping[bytes, bytes]]]) -> Decoded:
    """Entries as redis-py reads them: ``(id, {name: value})``, bytes."""
    out = Decoded()
    for raw_id, raw in entries:
        entry_id = text(raw_id)
        try:
            fields = {name.decode(): value.decode() for name, value in raw.items()}
        except UnicodeDecodeError as exc:
            why = f"fields are not UTF-8 text ({exc.reason} at byte {exc.start})"
            out.poison.append((entry_id, dict(raw), why))
            continue
        if META_ID in fields or META_ATTEMPTS in fields:
            _add_meta_entry(out, stream, entry_id, fields, raw)
        else:
            out.messages.append(_message(stream, entry_id, entry_id, fields, 0))
    return out


def decode_entry(stream: str, entry_id: str, raw: Mapping[bytes, bytes]) -> Message:
    """One entry as redis-py reads it; PoisonEntry when it cannot be a Message."""
    decoded = decode_entries(stream, [(entry_id, raw)])
    if decoded.poison:
        raise PoisonEntry(decoded.poison[0][2])
    return decoded.messages[0]


def _add_meta_entry(out: Decoded, stream: str, entry_id: str, fields: dict[str, str],
                    raw: Mapping[bytes, bytes]) -> None:
    """An entry novajobs wrote back (a promoted retry, a replay): its first id and
    attempts from the meta fields, the producer's fields without them."""
    attempts_text = fields.get(META_ATTEMPTS, "0")
    if not attempts_text.isdigit():
        why = f"{META_ATTEMPTS} is {attempts_text!r}, not a count"
        out.poison.append((entry_id, dict(raw), why))
        return
    data = {k: v for k, v in fields.items() if not k.startswith(META_PREFIX)}
    out.messages.append(_message(stream, fields.get(META_ID, entry_id), entry_id, data,
                                 int(attempts_text)))


def _message(stream: str, first_id: str, entry_id: str, fields: dict[str, str],
             attempts: int) -> Message:
    """A Message without the frozen dataclass's ``__init__`` (five ``object.__setattr__``
    calls: a third of a drain's own time per entry with a no-op handler): the same
    instance, its ``__dict__`` filled directly."""
    message = _new(Message)
    message.__dict__.update(stream=stream, id=first_id, entry_id=entry_id, fields=fields,
                            attempts=attempts)
    return message


_new = object.__new__
