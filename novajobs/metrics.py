"""Per-run metrics pushed to a Prometheus Pushgateway (docs/operations.md, Metrics).

Grouping key: ``job`` (and ``shard`` for a shard, e.g. ``2-of-4``), so every job/shard
keeps its own "last run" picture in the Pushgateway. What is pushed:

| metric | when | meaning |
| --- | --- | --- |
| ``novajobs_last_run_timestamp_seconds`` | each run | end of the last (not skipped) run |
| ``novajobs_last_run_duration_seconds`` | each run | its duration |
| ``novajobs_last_run_outcome{outcome}`` | each run | 1, labelled with its outcome |
| ``novajobs_last_run_exit_code`` | each run | its exit code |
| ``novajobs_last_run_counter{counter}`` | each run with counters | the run's own counters |
| ``novajobs_last_success_timestamp_seconds`` | success / nothing to do | end of the run |
| ``novajobs_skipped_in_a_row`` | each run, each skip | skips since the last run (0 after a run) |
| ``novajobs_last_skip_timestamp_seconds`` | each skip | when a run was skipped (lock held) |
| ``novajobs_stream_*{stream}`` | drain-stream, promote-retries | lag figures (STREAM_GAUGES) |
| ``novajobs_jobs_queued{stream}`` | drain-stream, promote-retries | lag + pending + retries |
| ``novajobs_missed_periods`` | each scheduled report run | missed periods it found |
| ``novajobs_missed_periods_left`` | each scheduled report run | of those, left for the next run |

A successful run PUTs (replaces the whole group, so no stale series survive); any other
run POSTs (replaces only the metric families it sends), so the last-success timestamp
of an earlier run stays until the next success. One consequence: a failed run that
counted nothing leaves the counters of the run before it in place. A skipped run
leaves the last run's metrics alone (the run holding the lock reports its own) and only
bumps the skip metrics; the number of skips in a row comes from the job's run history
in Redis. A dry run pushes nothing, however it ends: it did not do the job, and an
operator's ``--dry-run`` must neither raise nor resolve an alert.

Why ~60 lines of urllib and not prometheus_client: the text format for a dozen gauges is
trivial, a run must not pay an import (cron starts novajobs every minute) or the image
a dependency for it, and prometheus_client's registry/Gauge objects would model a
long-lived process that a one-shot run is not. The real Pushgateway in the tests
rejects any malformed push, so the format is checked where it matters.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import TYPE_CHECKING

from novajobs.errors import NovajobsError, Outcome
from novajobs.retry import describe_error

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.records import RunRecord

Sample = tuple[dict[str, str], float]
Family = tuple[str, str, list[Sample]]  # name, help, samples

SUCCESS_OUTCOMES = (Outcome.SUCCESS, Outcome.NOTHING_TO_DO)  # a dry run did not do the work
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def push_run(ctx: JobContext, rec: RunRecord) -> None:
    """Push the run's metrics if a Pushgateway is configured. Never raises for a push."""
    url = ctx.settings.pushgateway_url
    if not url or ctx.dry_run:
        return
    from novajobs.httpreport import send

    try:
        if rec.outcome is Outcome.SKIPPED:
            families, method = skip_families(rec, consecutive_skips(ctx, rec)), "POST"
        else:
            families = run_families(rec)
            method = "PUT" if rec.outcome in SUCCESS_OUTCOMES else "POST"
        target = url.rstrip("/") + group_path(rec.job, rec.shard)
        send(target, render(families).encode(), method=method,
             timeout=ctx.settings.report_timeout_sec, content_type=CONTENT_TYPE)
    except NovajobsError:
        raise  # a timeout or a stop signal is the run's business, not a push failure
    except Exception as exc:
        ctx.log.warning("could not push metrics to the Pushgateway", error=describe_error(exc))
        return
    ctx.log.debug("metrics pushed", metrics=len(families), method=method)


def run_families(rec: RunRecord) -> list[Family]:
    end = _timestamp(rec.ended_at)
    families: list[Family] = [
        ("novajobs_last_run_timestamp_seconds", "End of the last run, Unix time.", [({}, end)]),
        ("novajobs_last_run_duration_seconds", "Duration of the last run.",
         [({}, rec.duration_ms / 1000)]),
        ("novajobs_last_run_outcome", "Outcome of the last run (the label), always 1.",
         [({"outcome": str(rec.outcome)}, 1)]),
        ("novajobs_last_run_exit_code", "Exit code of the last run.", [({}, rec.exit_code)]),
        ("novajobs_skipped_in_a_row", "Runs skipped (lock held) since the last run.", [({}, 0)]),
    ]
    if rec.counters:
        families.append(("novajobs_last_run_counter", "Counters of the last run.",
                         [({"counter": k}, float(v)) for k, v in sorted(rec.counters.items())]))
    families += missed_families(rec.counters)
    if rec.outcome in SUCCESS_OUTCOMES:
        families.append(("novajobs_last_success_timestamp_seconds",
                         "End of the last successful run, Unix time.", [({}, end)]))
    return families + stream_families(rec.details.get("lag") or {})


# A stream's lag figure (novajobs/streams/lag.py) -> its gauge and help.
STREAM_GAUGES = {
    "length": ("novajobs_stream_length", "Entries in the stream."),
    "lag": ("novajobs_stream_lag", "Entries not yet handed to the consumer group."),
    "pending": ("novajobs_stream_pending", "Entries handed out and not acked."),
    "oldest_pending_age_sec": ("novajobs_stream_oldest_pending_age_seconds",
                               "Age of the oldest pending entry."),
    "retry_size": ("novajobs_stream_retry_size", "Entries waiting in the retry set."),
    "retry_next_due": ("novajobs_stream_retry_next_due_timestamp_seconds",
                       "When the next retry is due, Unix time."),
    "dlq_size": ("novajobs_stream_dlq_size", "Dead letters."),
    "dlq_oldest_age_sec": ("novajobs_stream_dlq_oldest_age_seconds",
                           "Age of the oldest dead letter."),
    "dlq_dropped_total": ("novajobs_stream_dlq_dropped_total",
                          "Dead letters dropped by the DLQ cap, ever."),
    "queued": ("novajobs_jobs_queued", "Entries not done: lag + pending + retries."),
}


def stream_families(lag: dict[str, dict[str, float]]) -> list[Family]:
    """One gauge per lag figure, a sample per stream; NaN where a figure is unknown (no
    retry due, no dead letter), so a POST replaces the value an earlier run pushed."""
    return [(name, help_text, [({"stream": stream}, float(figures.get(figure, math.nan)))
                               for stream, figures in sorted(lag.items())])
            for figure, (name, help_text) in STREAM_GAUGES.items() if lag]


def missed_families(counters: dict[str, int | float]) -> list[Family]:
    """A report job's catch-up (novajobs/catchup.py), when its run looked for missed periods."""
    if "periods_missed" not in counters:
        return []
    return [
        ("novajobs_missed_periods", "Missed report periods the last run found (skipped runs).",
         [({}, float(counters["periods_missed"]))]),
        ("novajobs_missed_periods_left", "Missed report periods left for the next run.",
         [({}, float(counters.get("periods_left", 0)))]),
    ]


def skip_families(rec: RunRecord, in_a_row: int | None) -> list[Family]:
    families: list[Family] = [
        ("novajobs_last_skip_timestamp_seconds", "When a run was last skipped (lock held).",
         [({}, _timestamp(rec.ended_at))]),
    ]
    if in_a_row is not None:
        families.append(("novajobs_skipped_in_a_row",
                         "Runs skipped (lock held) since the last run.", [({}, in_a_row)]))
    return families


def consecutive_skips(ctx: JobContext, rec: RunRecord) -> int | None:
    """Skips at the head of the job's history (this one included); None if unreadable."""
    from novajobs.records import read_history

    s = ctx.settings
    try:
        history = read_history(ctx.redis, s.redis_prefix, rec.unit, s.history_size)
    except Exception as exc:
        ctx.log.warning("could not read the run history to count skips",
                        error=describe_error(exc))
        return None
    count = 0
    for run in history:
        if run.get("outcome") != str(Outcome.SKIPPED):
            break
        count += run.get("skips") or 1  # skips in a row share one history entry
    return max(count, 1)


def render(families: list[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines = []
    for name, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            head = f"{name}{{{inner}}}" if inner else name
            lines.append(f"{head} {_number(value)}")
    return "\n".join(lines) + "\n"


def group_path(job: str, shard: str | None) -> str:
    """``/metrics/job/<job>[/shard/<shard>]``; a value with '/' goes base64 (Pushgateway rule)."""
    path = "/metrics" + _segment("job", job)
    return path + _segment("shard", shard) if shard else path


def _segment(label: str, value: str) -> str:
    if value and "/" not in value:
        from urllib.parse import quote

        return f"/{label}/{quote(value, safe='')}"
    encoded = base64.urlsafe_b64encode(value.encode()).decode() or "="
    return f"/{label}@base64/{encoded}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
