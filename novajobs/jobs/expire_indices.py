"""expire-indices: delete Elasticsearch indices past their retention, one at a time.

Of the indices matching ``expire_pattern``, those older than ``expire_retention_days``
(by ``creation_date``, or by the date in the name with ``expire_name_date_format``) are
deleted, with the same filters as forcemerge-indices (``esindices``): never the write
index of an alias or data stream, never an index without a date. Also never an index
behind one of ``expire_protected_aliases`` (e.g. an alias dashboards read through).

The retention has no default: until it is set, nothing is deleted. Each index is
re-checked right before its delete (still there, no alias it did not have when listed)
and deleted on its own; a failure is logged and counted, the others still go, and the
run then exits 1. An index already gone counts as gone, not as a failure.
"""

from __future__ import annotations

import time
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.errors import JobFailed, Outcome
from novajobs.esindices import (
    Index,
    age_skip,
    client,
    count_reasons,
    error_text,
    list_indices,
    read_aliases,
    write_indices,
)


def summary(index: Index) -> dict[str, Any]:
    return {"index": index.name, "age_days": index.age_days, "size_bytes": index.size_bytes}


def run(ctx: JobContext) -> Result:
    s = ctx.settings
    if not s.expire_retention_days:
        message = ("expire_retention_days is not set: no index is deleted until it is "
                   "(e.g. NOVAJOBS_EXPIRE_RETENTION_DAYS=30)")
        ctx.log.warning(message)
        return Result(Outcome.NOTHING_TO_DO, message, {"pattern": s.expire_pattern})
    indices = list_indices(ctx, s.expire_pattern)
    aliases = read_aliases(ctx, s.expire_pattern)
    writes = write_indices(ctx, aliases)
    now = time.time()
    for index in indices:
        index.skip = classify(ctx, index, aliases.get(index.name, {}), writes, now)
    candidates = [i for i in indices if i.skip is None]
    skipped = [i for i in indices if i.skip is not None]
    ctx.count("indices", len(indices))
    ctx.count("candidates", len(candidates))
    for index in skipped:
        ctx.count(f"skipped_{index.skip}")
        level = ctx.log.info if ctx.dry_run else ctx.log.debug
        level("kept", index=index.name, reason=index.skip, age_days=index.age_days)
    details: dict[str, Any] = {
        "pattern": s.expire_pattern,
        "retention_days": s.expire_retention_days,
        "candidates": [summary(i) for i in candidates],
        "skipped": {i.name: i.skip for i in skipped},
    }
    why_not = count_reasons(skipped)
    size = sum(i.size_bytes or 0 for i in candidates)
    if ctx.dry_run:
        for index in candidates:
            ctx.log.info("would delete", index=index.name, age_days=index.age_days,
                         size_bytes=index.size_bytes)
        names = ", ".join(i.name for i in candidates) or "none"
        return Result(Outcome.DRY_RUN, f"would delete {len(candidates)} of {len(indices)} "
                      f"indices matching {s.expire_pattern} ({size} bytes): {names}{why_not}",
                      details)
    if not candidates:
        return Result(Outcome.NOTHING_TO_DO, f"no index matching {s.expire_pattern} is older "
                      f"than {s.expire_retention_days:g} days ({len(indices)} matched"
                      f"{why_not.replace('; ', ', ', 1)})", details)
    deleted, failed = delete_all(ctx, candidates, aliases)
    details.update(deleted=deleted, failed=failed)
    if failed:
        raise JobFailed(f"delete failed for {len(failed)} of {len(candidates)} indices "
                        f"({', '.join(failed)}); deleted {len(deleted)}", details)
    return Result(Outcome.SUCCESS, f"deleted {len(deleted)} indices: "
                  f"{', '.join(deleted)}{why_not}", details)


def classify(ctx: JobContext, index: Index, aliases: dict[str, Any], writes: dict[str, str],
             now: float) -> str | None:
    """The first reason to keep ``index``, or None to delete it."""
    s = ctx.settings
    if set(aliases) & set(s.expire_protected_aliases):
        return "protected_alias"
    return age_skip(index, writes, now, s.expire_retention_days, s.expire_name_date_format)


def delete_all(ctx: JobContext, candidates: list[Index],
               aliases: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Delete one index at a time; a failure is logged, counted and passed over."""
    from elasticsearch import ApiError

    deleted: list[str] = []
    failed: list[str] = []
    with ctx.progress("deleting expired indices", total=len(candidates)) as bar:
        for index in candidates:
            ctx.checkpoint()
            try:
                outcome = delete_one(ctx, index, set(aliases.get(index.name, {})))
            except ApiError as exc:
                failed.append(index.name)
                ctx.count("failed")
                ctx.log.error("delete failed", index=index.name, error=error_text(exc))
            else:
                ctx.count(outcome)
                if outcome == "deleted":
                    deleted.append(index.name)
                    ctx.count("bytes_freed", index.size_bytes or 0)
                    ctx.log.info("deleted", index=index.name, age_days=index.age_days,
                                 size_bytes=index.size_bytes)
            bar.advance()
    return deleted, failed


def delete_one(ctx: JobContext, index: Index, listed_aliases: set[str]) -> str:
    """``deleted``, ``already_gone``, or ``changed_meanwhile`` (it got a new alias since
    the listing: perhaps it takes writes again, so it is left for the next run to judge)."""
    from elasticsearch import NotFoundError

    now = read_aliases(ctx, index.name).get(index.name)
    if now is None:
        return "already_gone"
    if set(now) - listed_aliases:
        ctx.log.warning("kept: it got an alias since the listing", index=index.name,
                        aliases=sorted(now))
        return "changed_meanwhile"
    try:
        ctx.retry(lambda: client(ctx).indices.delete(index=index.name),
                  f"delete index {index.name}")
    except NotFoundError:
        return "already_gone"
    return "deleted"
