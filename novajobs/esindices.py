"""Choosing Elasticsearch indices by pattern, age and role: the filters forcemerge-indices
and expire-indices share (one definition of "old", "write index" and "date in the name").

Age comes from the index's ``creation_date``, or with a name format such as ``%Y.%m.%d``
from the first valid date in the name. An index that still takes writes (the write
index of an alias, the only index of an alias without the flag, the last backing index
of a data stream) is never a candidate of either job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novajobs.dates import date_in_name

if TYPE_CHECKING:
    from novajobs.context import JobContext

EXPAND = "open,closed"  # list closed indices too, to say why they are skipped (or expire them)

@dataclass
class Index:
    name: str
    open: bool
    created_ms: int | None
    size_bytes: int | None = None
    age_days: float | None = None
    segments: int | None = None  # most segments of any shard copy (forcemerge)
    skip: str | None = None  # why the job leaves it alone


def client(ctx: JobContext) -> Any:
    """The client, with a request timeout that never outlives the run's time budget."""
    es = ctx.elasticsearch
    left = ctx.guard.remaining()
    if left is None:
        return es
    return es.options(request_timeout=max(1.0, min(ctx.settings.http_timeout_sec, left)))


def list_indices(ctx: JobContext, pattern: str) -> list[Index]:
    """The indices matching ``pattern`` (open and closed), by name."""
    from elasticsearch import NotFoundError

    try:
        rows = ctx.retry(
            lambda: client(ctx).cat.indices(index=pattern, format="json", expand_wildcards=EXPAND,
                                            h="index,status,creation.date,store.size",
                                            bytes="b"),
            "list Elasticsearch indices",
        )
    except NotFoundError:  # a pattern without wildcards naming a missing index
        rows = []
    found = [Index(name=row["index"], open=row.get("status") != "close",
                   created_ms=_int(row.get("creation.date")),
                   size_bytes=_int(row.get("store.size")))
             for row in rows]
    return sorted(found, key=lambda i: i.name)


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


def read_aliases(ctx: JobContext, pattern: str) -> dict[str, dict[str, Any]]:
    """Index -> {alias: properties} for the indices matching ``pattern``."""
    from elasticsearch import NotFoundError

    try:
        by_index = ctx.retry(
            lambda: client(ctx).indices.get_alias(index=pattern, expand_wildcards=EXPAND),
            "read Elasticsearch aliases",
        )
    except NotFoundError:
        return {}
    return {index: dict(body.get("aliases") or {}) for index, body in dict(by_index).items()}


def write_indices(ctx: JobContext, aliases: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Indices that still take writes -> why: the write index of an alias (explicit
    ``is_write_index``, or the only index of an alias without the flag) or data stream.
    ``aliases`` is ``read_aliases()`` of the pattern."""
    members: dict[str, list[tuple[str, bool | None]]] = {}
    for index, by_alias in aliases.items():
        for alias, props in by_alias.items():
            members.setdefault(alias, []).append((index, props.get("is_write_index")))
    writes: dict[str, str] = {}
    for alias, entries in members.items():
        flagged = [index for index, flag in entries if flag is True]
        implicit = [index for index, flag in entries if flag is None] if len(entries) == 1 else []
        for index in flagged or implicit:
            writes[index] = f"alias {alias}"
    for stream, index in data_stream_write_indices(ctx).items():
        writes[index] = f"data stream {stream}"
    return writes


def data_stream_write_indices(ctx: JobContext) -> dict[str, str]:
    """Data stream -> its write index (the last backing index)."""
    from elasticsearch import ApiError

    try:
        body = ctx.retry(
            lambda: client(ctx).indices.get_data_stream(name="*", expand_wildcards="all"),
            "list Elasticsearch data streams",
        )
    except ApiError as exc:
        if exc.meta.status not in (400, 403, 404):
            raise
        # A cluster (or stand-in) without data streams, or a user who may not see them.
        ctx.log.warning("cannot list data streams; their write indices are not known",
                        error=str(exc.message))
        return {}
    return {ds["name"]: ds["indices"][-1]["index_name"]
            for ds in body.get("data_streams", []) if ds.get("indices")}


def age_skip(index: Index, writes: dict[str, str], now: float, min_age_days: float,
             name_format: str) -> str | None:
    """The shared filters, in order: ``write_index``, ``no_date``, ``too_young``; sets
    ``index.age_days``. None: old enough and not a write index."""
    if index.name in writes:
        return "write_index"
    born = born_at(index, name_format)
    if born is None:
        return "no_date"
    index.age_days = round((now - born) / 86400, 2)
    if index.age_days < min_age_days:
        return "too_young"
    return None


def born_at(index: Index, name_format: str) -> float | None:
    """Unix time the index's data starts: the date in its name, or its creation date."""
    if name_format:
        date = date_in_name(index.name, name_format)
        return date.timestamp() if date else None
    return index.created_ms / 1000 if index.created_ms is not None else None


def count_reasons(skipped: list[Index]) -> str:
    """``"; skipped: 2 too young, 1 write index"`` (or "")."""
    counts: dict[str, int] = {}
    for index in skipped:
        assert index.skip is not None
        counts[index.skip] = counts.get(index.skip, 0) + 1
    if not counts:
        return ""
    parts = (f"{n} {reason.replace('_', ' ')}" for reason, n in counts.items())
    return "; skipped: " + ", ".join(parts)


def error_text(exc: Exception) -> str:
    from elasticsearch import ApiError

    if isinstance(exc, ApiError):
        return f"{exc.meta.status} {exc.message}"
    return str(exc)
