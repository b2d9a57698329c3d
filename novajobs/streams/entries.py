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

import itertools
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


Entry = tuple[str, dict[str, str]]  # (id, {name: value}) as a text client reads it
Poison = tuple[str, dict[bytes, bytes], str]  # (id, its fields as stored, why)


@dataclass
class Decoded:
    """Entries read from a stream, as handlers get them and as poison for the DLQ."""

    messages: list[Message] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    carried: list[Message] = field(default_factory=list)  # of messages: an earlier first id

    def __len__(self) -> int:
        return len(self.messages) + len(self.poison)


def as_bytes(fields: Mapping[str, str]) -> dict[bytes, bytes]:
    """Fields read by a text client, as stored (invalid bytes came as lone surrogates)."""
    return {name.encode("utf-8", "surrogateescape"): value.encode("utf-8", "surrogateescape")
            for name, value in fields.items()}


def split_invalid(entries: list[Entry]) -> tuple[list[Entry], list[Poison]]:
    """Entries a text client read while it met invalid UTF-8 (redisconn.surrogates_seen
    moved): those that are text throughout, and the others as poison."""
    good: list[Entry] = []
    poison: list[Poison] = []
    for entry_id, fields in entries:
        try:
            "".join(itertools.chain.from_iterable((fields or {}).items())).encode()
        except UnicodeEncodeError:
            raw = as_bytes(fields)
            poison.append((entry_id, raw, _why(raw)))
        else:
            good.append((entry_id, fields))
    return good, poison


def _why(raw: Mapping[bytes, bytes]) -> str:
    for item in itertools.chain.from_iterable(raw.items()):
        try:
            item.decode()
        except UnicodeDecodeError as exc:
            return f"fields are not UTF-8 text ({exc.reason} at byte {exc.start})"
    return "fields are not UTF-8 text"


def decode_entries(stream: str, entries: Iterable[Entry], poison: Iterable[Poison] = ()
                   ) -> Decoded:
    """Messages of text entries (``split_invalid``'s good ones); ``poison`` passes on.
    Per entry only what cannot be skipped: a look for meta fields and a Message."""
    out = Decoded(poison=list(poison))
    messages = out.messages
    for entry_id, fields in entries:
        if META_ID in fields or META_ATTEMPTS in fields:
            _add_meta_entry(out, stream, entry_id, fields)
        else:
            messages.append(_new(Message, (stream, entry_id, entry_id, fields, 0)))
    return out


def decode_entry(stream: str, entry_id: str, raw: Mapping[bytes, bytes]) -> Message:
    """One entry as a bytes client reads it; PoisonEntry when it cannot be a Message."""
    fields = {name.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape")
              for name, value in raw.items()}
    good, poison = split_invalid([(entry_id, fields)])
    decoded = decode_entries(stream, good, poison)
    if decoded.poison:
        raise PoisonEntry(decoded.poison[0][2])
    return decoded.messages[0]


def _add_meta_entry(out: Decoded, stream: str, entry_id: str, fields: dict[str, str]) -> None:
    """An entry novajobs wrote back (a promoted retry, a replay): its first id and
    attempts from the meta fields, the producer's fields without them."""
    attempts_text = fields.get(META_ATTEMPTS, "0")
    if not attempts_text.isdigit():
        why = f"{META_ATTEMPTS} is {attempts_text!r}, not a count"
        out.poison.append((entry_id, as_bytes(fields), why))
        return
    data = {k: v for k, v in fields.items() if not k.startswith(META_PREFIX)}
    message = Message(stream, fields.get(META_ID, entry_id), entry_id, data, int(attempts_text))
    out.messages.append(message)
    if message.id != entry_id:
        out.carried.append(message)


_new = tuple.__new__  # Message(...) without its keyword handling: a third of the cost
