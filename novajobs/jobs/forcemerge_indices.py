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
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.errors import JobFailed, NovajobsError, Outcome
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
    return {"index": index.name, "age_days": index.age_days, "segments": index.segments}


def run(ctx: JobContext) -> Result:
    s = ctx.settings
    indices = list_indices(ctx, s.forcemerge_pattern)
    writes = write_indices(ctx, read_aliases(ctx, s.forcemerge_pattern))
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
        "candidates": [summary(i) for i in candidates],
        "skipped": {i.name: i.skip for i in skipped},
    }
    why_not = count_reasons(skipped)
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


# -- reading the cluster ----------------------------------------------------------------


def segment_count(ctx: JobContext, name: str) -> int:
    """The most segments any copy (primary or replica) of any shard of ``name`` has."""
    stats = ctx.retry(
        lambda: client(ctx).indices.stats(index=name, metric="segments", level="shards"),
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
    index.skip = age_skip(index, writes, now, s.forcemerge_min_age_days,
                          s.forcemerge_name_date_format)
    if index.skip is not None:
        return
    index.segments = segment_count(ctx, index.name)
    if index.segments <= s.forcemerge_max_num_segments:
        index.skip = "already_merged"


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
                ctx.log.error("force-merge failed", index=index.name, error=error_text(exc))
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
        lambda: client(ctx).indices.forcemerge(index=index.name, max_num_segments=target,
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
            return client(ctx).tasks.get(task_id=task)

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


def pause(ctx: JobContext, seconds: float) -> None:
    """Sleep, but stop at once (via the safe point) on timeout, SIGTERM or a lost lock."""
    end = time.monotonic() + seconds
    while True:
        ctx.checkpoint()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))
