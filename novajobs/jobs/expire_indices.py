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

With ``expire_snapshot_repository`` each index is first made read-only
(``index.blocks.write``), then snapshotted on its own into that repository
(``novajobs-expire-<index>-<creation ms>``: a re-run after a crash finds the same
snapshot and uses it) and deleted only once Elasticsearch reports that snapshot
``SUCCESS`` with the index in it and no shard failed. The snapshot is the restore path:
``POST _snapshot/<repository>/<snapshot>/_restore``.
"""

from __future__ import annotations

import time
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.errors import ConfigError, JobFailed, Outcome
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

SNAPSHOT_PREFIX = "novajobs-expire-"
SNAPSHOT_POLL_SEC = 1.0
RUNNING = ("IN_PROGRESS", "STARTED", "INIT")


def summary(index: Index) -> dict[str, Any]:
    return {"index": index.name, "age_days": index.age_days, "size_bytes": index.size_bytes}


def run(ctx: JobContext) -> Result:
    s = ctx.settings
    if not s.expire_retention_days:
        return ctx.not_configured("expire_retention_days", "no index is deleted", "30",
                                  pattern=s.expire_pattern)
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
    repository = s.expire_snapshot_repository
    if repository:
        require_repository(ctx, repository)
        details["repository"] = repository
    elif candidates:
        ctx.log.warning("expire_snapshot_repository is not set: indices are deleted without "
                        "a snapshot to restore them from")
    if ctx.dry_run:
        verb = f"would snapshot into {repository}, then delete" if repository else (
            "would delete")
        for index in candidates:
            ctx.log.info(verb, index=index.name, age_days=index.age_days,
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
    if s.expire_snapshot_repository:
        details["snapshots"] = {i.name: snapshot_name(i) for i in candidates
                                if i.name in deleted}
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
    if s.expire_snapshot_repository and not index.open:
        return "closed"  # Elasticsearch cannot snapshot a closed index
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
            except (ApiError, SnapshotFailed) as exc:
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
        if ctx.settings.expire_snapshot_repository:
            snapshot(ctx, index)
        ctx.retry(lambda: client(ctx).indices.delete(index=index.name),
                  f"delete index {index.name}")
    except NotFoundError:
        return "already_gone"
    return "deleted"


class SnapshotFailed(Exception):
    """The index's snapshot did not succeed: the index is kept."""


def snapshot_name(index: Index) -> str:
    """One name per index (and per incarnation of that name): a re-run finds it."""
    return f"{SNAPSHOT_PREFIX}{index.name}-{index.created_ms or 0}"


def require_repository(ctx: JobContext, repository: str) -> None:
    from elasticsearch import NotFoundError

    try:
        ctx.retry(lambda: client(ctx).snapshot.get_repository(name=repository),
                  f"read snapshot repository {repository}")
    except NotFoundError:
        raise ConfigError(f"snapshot repository {repository!r} (expire_snapshot_repository) "
                          "does not exist; register it first (PUT _snapshot/<name>)") from None


def snapshot(ctx: JobContext, index: Index) -> None:
    """Block writes to ``index``, snapshot it on its own and wait for a verified
    ``SUCCESS``; an earlier run's snapshot of it is used if it succeeded."""
    es, repository, name = client(ctx), ctx.settings.expire_snapshot_repository, \
        snapshot_name(index)
    ctx.checkpoint()
    ctx.retry(lambda: es.indices.put_settings(index=index.name,
                                              settings={"index.blocks.write": True}),
              f"block writes to {index.name}")
    found = read_snapshot(ctx, repository, name)
    if found is not None and found.get("state") not in RUNNING and not verified(found, index):
        ctx.retry(lambda: es.snapshot.delete(repository=repository, snapshot=name),
                  f"delete the failed snapshot {name}")
        found = None
    if found is None:
        ctx.retry(lambda: es.snapshot.create(
            repository=repository, snapshot=name, indices=index.name,
            include_global_state=False, wait_for_completion=False),
            f"snapshot {index.name} into {repository}")
        ctx.count("snapshots_taken")
    while found is None or found.get("state") in RUNNING:
        if found is not None:
            ctx.guard.sleep(SNAPSHOT_POLL_SEC)
            ctx.checkpoint()
        found = read_snapshot(ctx, repository, name) or {"state": "MISSING"}
    if not verified(found, index):
        shards = found.get("shards") or {}
        raise SnapshotFailed(f"snapshot {repository}/{name} ended {found.get('state')} "
                             f"({shards.get('failed', '?')} shard(s) failed); {index.name} kept "
                             "(read-only)")
    ctx.log.info("snapshot verified", index=index.name, repository=repository, snapshot=name)


def read_snapshot(ctx: JobContext, repository: str, name: str) -> dict[str, Any] | None:
    from elasticsearch import NotFoundError

    try:
        body = ctx.retry(lambda: client(ctx).snapshot.get(repository=repository,
                                                          snapshot=name),
                         f"read snapshot {repository}/{name}")
    except NotFoundError:
        return None
    found = body.get("snapshots") or []
    return dict(found[0]) if found else None


def verified(found: dict[str, Any], index: Index) -> bool:
    shards = found.get("shards") or {}
    return (found.get("state") == "SUCCESS" and index.name in (found.get("indices") or [])
            and not shards.get("failed") and shards.get("successful") == shards.get("total"))
