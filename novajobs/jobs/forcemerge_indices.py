"""forcemerge-indices: force-merge old, finished Elasticsearch indices, one at a time.

Candidates are the indices matching a pattern that are older than a minimum age (from
the index's ``creation_date``, or from a date in its name) and still have a shard copy
with more than ``max_num_segments`` segments. Skipped, with the reason counted: closed
indices, the write index of an alias or data stream (Elasticsearch warns against merging
an index that still takes writes), indices too young or without a date, and indices
already merged.

A merge can take far longer than an HTTP request should stay open, so it is started as
a task (``wait_for_completion=false``) and the task is polled. Between polls the run
checks its safe points: at the run's timeout, on SIGTERM or a lost lock it stops
waiting (Elasticsearch finishes that merge in the background) with the usual exit code.
Re-running is safe: a merged index is skipped as "already merged".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.dates import date_in_name
from novajobs.errors import JobFailed, NovajobsError, Outcome

_EXPAND = "open,closed"  # list closed indices too, to say why they are skipped


@dataclass
class Index:
    name: str
    open: bool
    created_ms: int | None
    age_days: float | None = None
    segments: int | None = None  # most segments of any shard copy
    skip: str | None = None  # why it is not merged

    def summary(self) -> dict[str, Any]:
        return {"index": self.name, "age_days": self.age_days, "segments": self.segments}


def run(ctx: JobContext) -> Result:
    s = ctx.settings
    indices = list_indices(ctx, s.forcemerge_pattern)
    writes = write_indices(ctx, s.forcemerge_pattern)
    now = time.time()
    for index in indices:
        classify(ctx, index, writes, now)
    candidates = [i for i in indices if i.skip is None]
    skipped = [i for i in indices if i.skip is not None]
    ctx.count("indices", len(indices))
    ctx.count("candidates", len(candidates))
    for index in skipped:
        ctx.count(f"skipped_{index.skip}")
        level = ctx.log.info if ctx.dry_run else ctx.log.debug
        level("skipped", index=index.name, reason=index.skip, age_days=index.age_days,
              segments=index.segments)
    details: dict[str, Any] = {
        "pattern": s.forcemerge_pattern,
        "candidates": [i.summary() for i in candidates],
        "skipped": {i.name: i.skip for i in skipped},
    }
    why_not = _reasons(skipped)
    if ctx.dry_run:
        for index in candidates:
            ctx.log.info("would force-merge", index=index.name, age_days=index.age_days,
                         segments=index.segments, max_num_segments=s.forcemerge_max_num_segments)
        names = ", ".join(i.name for i in candidates) or "none"
        return Result(Outcome.DRY_RUN, f"would force-merge {len(candidates)} of {len(indices)} "
                      f"indices matching {s.forcemerge_pattern}: {names}{why_not}", details)
    if not candidates:
        return Result(Outcome.NOTHING_TO_DO, f"no index matching {s.forcemerge_pattern} needs "
                      f"a force-merge ({len(indices)} matched{why_not.replace('; ', ', ', 1)})",
                      details)
    merged, failed = merge_all(ctx, candidates)
    details.update(merged=merged, failed=failed)
    if failed:
        raise JobFailed(f"force-merge failed for {len(failed)} of {len(candidates)} indices "
                        f"({', '.join(failed)}); merged {len(merged)}")
    return Result(Outcome.SUCCESS, f"force-merged {len(merged)} indices: "
                  f"{', '.join(merged)}{why_not}", details)


def _reasons(skipped: list[Index]) -> str:
    counts: dict[str, int] = {}
    for index in skipped:
        assert index.skip is not None
        counts[index.skip] = counts.get(index.skip, 0) + 1
    if not counts:
        return ""
    parts = (f"{n} {reason.replace('_', ' ')}" for reason, n in counts.items())
    return "; skipped: " + ", ".join(parts)


# -- reading the cluster ----------------------------------------------------------------


def _es(ctx: JobContext) -> Any:
    """The client, with a request timeout that never outlives the run's time budget."""
    client = ctx.conns.elasticsearch
    left = ctx.guard.remaining()
    if left is None:
        return client
    return client.options(request_timeout=max(1.0, min(ctx.settings.http_timeout_sec, left)))


def list_indices(ctx: JobContext, pattern: str) -> list[Index]:
    from elasticsearch import NotFoundError

    try:
        rows = ctx.retry(
            lambda: _es(ctx).cat.indices(index=pattern, format="json", expand_wildcards=_EXPAND,
                                         h="index,status,creation.date"),
            "list Elasticsearch indices",
        )
    except NotFoundError:  # a pattern without wildcards naming a missing index
        rows = []
    found = [Index(name=row["index"], open=row.get("status") != "close",
                   created_ms=int(row["creation.date"]) if row.get("creation.date") else None)
             for row in rows]
    return sorted(found, key=lambda i: i.name)


def write_indices(ctx: JobContext, pattern: str) -> dict[str, str]:
    """Indices that still take writes -> why: the write index of an alias (explicit
    ``is_write_index``, or the only index of an alias without the flag) or data stream."""
    from elasticsearch import NotFoundError

    try:
        by_index = ctx.retry(
            lambda: _es(ctx).indices.get_alias(index=pattern, expand_wildcards=_EXPAND),
            "read Elasticsearch aliases",
        )
    except NotFoundError:
        by_index = {}
    members: dict[str, list[tuple[str, bool | None]]] = {}
    for index, body in dict(by_index).items():
        for alias, props in (body.get("aliases") or {}).items():
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
            lambda: _es(ctx).indices.get_data_stream(name="*", expand_wildcards="all"),
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


def segment_count(ctx: JobContext, name: str) -> int:
    """The most segments any copy (primary or replica) of any shard of ``name`` has."""
    stats = ctx.retry(
        lambda: _es(ctx).indices.stats(index=name, metric="segments", level="shards"),
        f"read the segments of {name}",
    )
    shards = stats["indices"][name]["shards"]
    counts = [copy["segments"]["count"] for copies in shards.values() for copy in copies]
    return max(counts, default=0)


def classify(ctx: JobContext, index: Index, writes: dict[str, str], now: float) -> None:
    """Set ``index.skip`` to the first reason not to merge it (cheapest checks first)."""
    s = ctx.settings
    if not index.open:
        index.skip = "closed"
        return
    if index.name in writes:
        index.skip = "write_index"
        return
    born = _born(index, s.forcemerge_name_date_format)
    if born is None:
        index.skip = "no_date"
        return
    index.age_days = round((now - born) / 86400, 2)
    if index.age_days < s.forcemerge_min_age_days:
        index.skip = "too_young"
        return
    index.segments = segment_count(ctx, index.name)
    if index.segments <= s.forcemerge_max_num_segments:
        index.skip = "already_merged"


def _born(index: Index, name_format: str) -> float | None:
    """Unix time the index's data starts: the date in its name, or its creation date."""
    if name_format:
        date = date_in_name(index.name, name_format)
        return date.timestamp() if date else None
    return index.created_ms / 1000 if index.created_ms is not None else None


# -- merging ------------------------------------------------------------------------------


class MergeFailed(Exception):
    """Elasticsearch ran the merge and reported a failure."""


def merge_all(ctx: JobContext, candidates: list[Index]) -> tuple[list[str], list[str]]:
    """Merge one index at a time; a failed index is logged, counted and passed over."""
    from elasticsearch import ApiError

    merged: list[str] = []
    failed: list[str] = []
    with ctx.progress("force-merging indices", total=len(candidates)) as bar:
        for n, index in enumerate(candidates):
            if n and ctx.settings.forcemerge_delay_sec:
                pause(ctx, ctx.settings.forcemerge_delay_sec)
            started = time.monotonic()
            try:
                after = merge_one(ctx, index)
            except (ApiError, MergeFailed) as exc:
                failed.append(index.name)
                ctx.count("failed")
                ctx.log.error("force-merge failed", index=index.name, error=_error_text(exc))
            else:
                merged.append(index.name)
                ctx.count("merged")
                ctx.log.info("force-merged", index=index.name, segments_before=index.segments,
                             segments_after=after,
                             elapsed_ms=round((time.monotonic() - started) * 1000))
            bar.advance()
    return merged, failed


def merge_one(ctx: JobContext, index: Index) -> int:
    """Merge ``index`` and wait for it; returns its segment count afterwards."""
    target = ctx.settings.forcemerge_max_num_segments
    # Re-read: another run or ILM may have merged it since the listing.
    index.segments = segment_count(ctx, index.name)
    if index.segments <= target:
        return index.segments
    ctx.checkpoint()
    answer = ctx.retry(
        lambda: _es(ctx).indices.forcemerge(index=index.name, max_num_segments=target,
                                            wait_for_completion=False),
        f"start the force-merge of {index.name}",
    )
    task = answer.get("task")
    ctx.log.info("force-merge started", index=index.name, task=task,
                 segments=index.segments, max_num_segments=target)
    if task is None:  # the cluster merged synchronously
        _check_shards(dict(answer))
        return segment_count(ctx, index.name)
    try:
        known = wait_for_task(ctx, task)
    except NovajobsError:
        ctx.log.warning("stopped waiting; Elasticsearch finishes this merge in the background",
                        index=index.name, task=task)
        raise
    after = segment_count(ctx, index.name)
    if not known and after > target:
        raise MergeFailed(f"task {task} is unknown to the tasks API and the index still has "
                          f"{after} segments in a shard")
    return after


def wait_for_task(ctx: JobContext, task: str) -> bool:
    """Poll the merge task until it completes. False if the tasks API does not know it
    (the caller then judges by segment count); raises MergeFailed if it failed."""
    while True:
        status = task_status(ctx, task)
        if status is None:
            return False
        if status.get("completed"):
            if status.get("error"):
                raise MergeFailed(_reason(status["error"]))
            _check_shards(status.get("response") or {})
            return True
        pause(ctx, ctx.settings.forcemerge_poll_sec)


def task_status(ctx: JobContext, task: str) -> dict[str, Any] | None:
    import warnings

    from elasticsearch import NotFoundError
    from elasticsearch.exceptions import GeneralAvailabilityWarning

    def get() -> Any:
        with warnings.catch_warnings():
            # The client labels the tasks API "technical preview"; it has been stable
            # since Elasticsearch 5 and is how the reference says to follow a merge.
            warnings.simplefilter("ignore", GeneralAvailabilityWarning)
            return _es(ctx).tasks.get(task_id=task)

    try:
        return dict(ctx.retry(get, f"poll task {task}"))
    except NotFoundError:
        return None


def _check_shards(response: dict[str, Any]) -> None:
    shards = response.get("_shards") or {}
    if shards.get("failed"):
        failures = shards.get("failures") or [{}]
        raise MergeFailed(f"{shards['failed']} shard(s) failed: {_reason(failures[0])}")


def _reason(error: Any) -> str:
    """The innermost "reason" of an Elasticsearch error or shard failure."""
    while isinstance(error, dict) and (error.get("reason") or error.get("error")):
        error = error.get("reason") or error.get("error")
    return str(error)


def _error_text(exc: Exception) -> str:
    from elasticsearch import ApiError

    if isinstance(exc, ApiError):
        return f"{exc.meta.status} {exc.message}"
    return str(exc)


def pause(ctx: JobContext, seconds: float) -> None:
    """Sleep, but stop at once (via the safe point) on timeout, SIGTERM or a lost lock."""
    end = time.monotonic() + seconds
    while True:
        ctx.checkpoint()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))
