"""Prometheus alerting rules for the metrics novajobs pushes (see novajobs/metrics.py).

Rendered with the deployment files from the same registry: the freshness threshold of
each job is twice the longest gap of its own schedule. Prometheus must scrape the
Pushgateway with ``honor_labels: true`` so the pushed ``job``/``shard`` labels are kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from novajobs import yamltext
from novajobs.errors import Outcome

if TYPE_CHECKING:
    from novajobs.deploy import Plan

SKIPS_ALERT_AT = 3  # one skip is normal (an overlap, a second cron host); three is a stuck lock
FAILED = [o for o in Outcome if not o.ok and o not in (
    Outcome.RUNNING, Outcome.SKIPPED, Outcome.PROBLEM_FOUND)]
WHERE = "{{ $labels.job }}{{ if $labels.shard }} shard {{ $labels.shard }}{{ end }}"


def render_rules(plans: list[Plan], *, header: str) -> str:
    groups = [
        {"name": "novajobs", "rules": [_failed(), _problem_found(), _skipped(),
                                       _missed_periods(), _rows_without_object(),
                                       _default_rows_not_archived()]},
        {"name": "novajobs-freshness", "rules": [_stale(p.spec.name, p.interval_sec)
                                                 for p in plans]},
        {"name": "novajobs-never-reported", "rules": [_never_reported(p.spec.name,
                                                                      p.interval_sec)
                                                      for p in plans]},
        {"name": "novajobs-streams", "rules": stream_rules()},
    ]
    return header + yamltext.dump({"groups": groups})


def _failed() -> dict[str, Any]:
    outcomes = "|".join(str(o) for o in FAILED)
    return {
        "alert": "NovajobsJobFailed",
        "expr": f'novajobs_last_run_outcome{{outcome=~"{outcomes}"}} == 1',
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"novajobs {WHERE} failed ({{{{ $labels.outcome }}}})",
            "description": "The last run of {{ $labels.job }} ended {{ $labels.outcome }}. "
            "See `novajobs history {{ $labels.job }}` and the run's log lines (run_id). "
            "Resolves when a later run ends otherwise.",
        },
    }


def _problem_found() -> dict[str, Any]:
    return {
        "alert": "NovajobsCheckFoundProblem",
        "expr": f'novajobs_last_run_outcome{{outcome="{Outcome.PROBLEM_FOUND}"}} == 1',
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"novajobs check {WHERE} found a problem",
            "description": "The check ran and found what it looks for (an inconsistency, "
            "message gaps); its result and log lines say what.",
        },
    }


def _skipped() -> dict[str, Any]:
    return {
        "alert": "NovajobsJobKeepsBeingSkipped",
        "expr": f"novajobs_skipped_in_a_row >= {SKIPS_ALERT_AT}",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"novajobs {WHERE} skipped {{{{ $value }}}} times in a row",
            "description": "Every run finds the job's lock held: a run is stuck or a lock "
            "is left over. `novajobs locks` shows the holder; "
            "`novajobs locks release {{ $labels.job }}` frees it.",
        },
    }


def _missed_periods() -> dict[str, Any]:
    return {
        "alert": "NovajobsMissedPeriods",
        "expr": "novajobs_missed_periods > 0",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"novajobs {WHERE} found {{{{ $value }}}} missed report periods",
            "description": "The schedule skipped runs of {{ $labels.job }} (a host or cluster "
            "was down, or the CronJob stopped after too many missed starts), so its table "
            "had holes. The run fills up to catchup_max_periods of them, oldest first; "
            "novajobs_missed_periods_left counts the rest, which the next runs fill; the "
            "run's log lines name them. Resolves after a run that finds none.",
        },
    }


def _rows_without_object() -> dict[str, Any]:
    return {
        "alert": "NovajobsRowsWithoutObject",
        "expr": 'novajobs_last_run_counter{job="gc-orphans",counter="rows_without_object"} > 0',
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"{{{{ $value }}}} file_metadata rows point at no object ({WHERE})",
            "description": "gc-orphans found live file_metadata rows whose object is not in "
            "the bucket (files users would fail to download). The run record names a sample "
            "(`novajobs history gc-orphans --json`); `gc-orphans --mark-missing` lists them "
            "all in novajobs_missing_objects. novajobs never deletes them. Resolves after a "
            "run that finds none.",
        },
    }


def _default_rows_not_archived() -> dict[str, Any]:
    return {
        "alert": "NovajobsRowsNeverArchived",
        "expr": 'novajobs_last_run_counter{job="archive-partitions",'
                'counter="default_rows_not_archived"} > 0',
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "{{ $value }} rows past the retention sit in a default partition",
            "description": "archive-partitions never archives a default partition, so these "
            "rows stay in PostgreSQL for good until they are moved into monthly partitions "
            "(docs/jobs.md, archive-partitions: a few statements in one transaction); the "
            "next archive run then archives those months. The run's log names the table. "
            "Resolves after a run that finds none.",
        },
    }


def _stale(job: str, interval_sec: int) -> dict[str, Any]:
    limit = 2 * interval_sec
    return {
        "alert": "NovajobsJobStale",
        "expr": f'time() - novajobs_last_success_timestamp_seconds{{job="{job}"}} > {limit}',
        "labels": {"severity": "warning", "job": job},  # one rule per job: keep them distinct
        "annotations": {
            "summary": f"novajobs {WHERE} has not succeeded for over {human(limit)}",
            "description": f"No successful run of {job} for more than twice its schedule's "
            f"interval ({human(interval_sec)}). Check NovajobsJobFailed, "
            "NovajobsJobKeepsBeingSkipped and whether the CronJob runs at all.",
        },
    }


def _never_reported(job: str, interval_sec: int) -> dict[str, Any]:
    """A job with no run pushed at all: "last success too old" needs a first report, so a
    crontab line that never starts novajobs (a wrong PATH, a shell redirect into a missing
    directory) would otherwise stay silent forever."""
    limit = 2 * interval_sec
    return {
        "alert": "NovajobsJobNeverReported",
        "expr": f'absent(novajobs_last_run_timestamp_seconds{{job="{job}"}})',
        "for": human(limit),
        "labels": {"severity": "warning", "job": job},
        "annotations": {
            "summary": f"novajobs {job} has reported no run for {human(limit)}",
            "description": f"The Pushgateway has no run of {job} for more than twice its "
            f"schedule's interval ({human(interval_sec)}): it never ran, or every run died "
            "before reporting (or the Pushgateway lost its data). Check that cron or the "
            "CronJob starts it: its log file, `novajobs status`, `kubectl get jobs`.",
        },
    }


# -- streams (drain-stream and promote-retries push the same gauges: max by stream) -------
STREAM_LAG_ALERT = 10_000  # entries not yet handed out, for 15 minutes
STREAM_PENDING_ALERT_SEC = 900  # oldest pending entry (reclaimed after stream_claim_idle_sec)
RETRY_OVERDUE_ALERT_SEC = 600  # promote-retries runs every minute


def stream_rules() -> list[dict[str, Any]]:
    def rule(name: str, expr: str, summary: str, description: str, wait: str | None = None
             ) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": name, "expr": expr}
        if wait:
            out["for"] = wait
        return {**out, "labels": {"severity": "warning"},
                "annotations": {"summary": summary, "description": description}}

    where = "stream {{ $labels.stream }}"
    return [
        rule("NovajobsDeadLettersGrowing",
             "max by (stream) (novajobs_stream_dlq_size) > 0 and max by (stream) "
             "(novajobs_stream_dlq_size - min_over_time(novajobs_stream_dlq_size[1h])) > 0",
             f"dead letters of {where} are growing ({{{{ $value }}}} in the last hour)",
             "Entries fail past their retries, or are poison. `novajobs dlq list "
             "{{ $labels.stream }}` shows them; fix the cause, then `novajobs dlq replay`."),
        rule("NovajobsStreamLagging",
             f"max by (stream) (novajobs_stream_lag) > {STREAM_LAG_ALERT}",
             f"{where} has {{{{ $value }}}} entries not yet handed out",
             "drain-stream does not keep up: more pods (k8s_pods), a larger "
             "drain_max_messages or drain_concurrency, or a slow handler.", "15m"),
        rule("NovajobsStreamPendingStuck",
             "max by (stream) (novajobs_stream_oldest_pending_age_seconds) > "
             f"{STREAM_PENDING_ALERT_SEC}",
             f"{where} has an entry pending for {{{{ $value | humanizeDuration }}}}",
             "An entry was handed out and never acked, and no run reclaims it: is "
             "drain-stream running? See `novajobs dlq list` and the drain-stream history."),
        rule("NovajobsRetriesOverdue",
             "time() - min by (stream) (novajobs_stream_retry_next_due_timestamp_seconds) > "
             f"{RETRY_OVERDUE_ALERT_SEC}",
             f"retries of {where} are overdue by {{{{ $value | humanizeDuration }}}}",
             "Due retries are not moved back into the stream: is promote-retries running?"),
        rule("NovajobsDeadLettersDropped",
             "max by (stream) (novajobs_stream_dlq_dropped_total "
             "- min_over_time(novajobs_stream_dlq_dropped_total[1h])) > 0",
             f"the DLQ cap dropped {{{{ $value }}}} dead letters of {where}",
             "The DLQ was over stream_dlq_max_len or dead letters were older than "
             "stream_dlq_max_age: those are gone. Replay or purge dead letters sooner, or "
             "raise the cap."),
    ]


def human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
