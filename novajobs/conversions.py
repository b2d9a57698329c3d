"""Two small conversions the core, the jobs and the CLI share. Imports nothing of novajobs.

Redis answers in bytes (novajobs' clients do not decode: stream fields and cache values
are passed through as written), so ids, keys and names become text here; and lists of
ids are sent to a store in batches of a bounded size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def text(value: bytes | str) -> str:
    """A Redis reply as text; bytes that are not UTF-8 are shown, not raised on."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
