"""The one list of jobs. It feeds the CLI, `novajobs schedule` and the deployment files.

Importing this module must stay cheap (no drivers): cron starts novajobs every minute.
Adding a job: one module under ``novajobs/jobs/`` with a ``run(ctx, **params)``
function, one ``JobSpec`` below, and the rest of the checklist in docs/development.md
("Adding a job"; tests/test_layout.py checks the registry against the modules).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novajobs.errors import UsageError

if TYPE_CHECKING:
    from novajobs.context import Result
    from novajobs.settings import Settings

JobFunc = Callable[..., "Result"]


@dataclass(frozen=True)
class Option:
    """A job-specific command-line option.

    With ``setting`` the value overrides that setting (as a flag); otherwise it is passed
    to the job function as the keyword ``param`` (default: the flag's name).
    """

    flag: str
    help: str
    type: type = str
    setting: str | None = None
    param: str | None = None
    multiple: bool = False
    metavar: str | None = None
    argument: bool = False  # a positional argument (nargs=-1 when multiple) instead of a flag

    @property
    def dest(self) -> str:
        return self.param or self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class JobSpec:
    name: str
    summary: str  # one line, shown in `novajobs --help`
    description: str  # what it reads and writes, for `novajobs JOB --help`
    example: str  # ends every help text
    module: str
    schedule: str  # default cron expression (5 fields) in the configured time zone; "" = by hand
    timeout_sec: int
    lock_ttl_sec: int = 60
    shardable: bool = False
    destructive: bool = False  # takes --dry-run
    options: tuple[Option, ...] = ()
    # A setting whose value scopes the lock: job:lock:{job}:{value} (e.g. one per consumer).
    lock_scope: str | None = None
    # A report job: its scheduled run computes the period of its scheduled time (the
    # CronJob passes it in) and fills missed periods (novajobs/catchup.py).
    catchup: bool = False

    def load(self) -> JobFunc:
        func: JobFunc = importlib.import_module(self.module).run
        return func

    def check_params(self, settings: Settings, params: dict[str, Any]) -> None:
        """Refuse, with one UsageError line, parameters the job does not take or whose
        values are wrong: the runner calls this before the lock, the record and any
        connection. A job checks its values in its module's optional
        ``check_params(settings, **params)`` (usually the parsers ``run`` uses too)."""
        module = importlib.import_module(self.module)
        taken = list(inspect.signature(module.run).parameters)[1:]  # after ctx
        unknown = sorted(set(params) - set(taken))
        if unknown:
            known = ", ".join(taken) or "none"
            raise UsageError(f"{self.name} takes no parameter {unknown[0]!r} (it takes: {known})")
        check = getattr(module, "check_params", None)
        if check is not None:
            check(settings, **params)


NO_CATCHUP = Option("--no-catchup", "compute only the scheduled period; report missed "
                    "ones without filling them", bool)

JOBS: tuple[JobSpec, ...] = (
    JobSpec(
        name="refresh-trending",
        summary="Cache the top trending posts of the last hours (ClickHouse -> Redis).",
        description=(
            "Scores each post of the last window hours in ClickHouse as "
            "views*0.1 + likes*2 + comments*3 + shares*5 (ties: lower post id first) and "
            "writes the top K as one JSON array to nova:cache:trending:{window}h, replacing "
            "the value and its TTL (1.5x the refresh interval) in one atomic SET."
        ),
        example="novajobs refresh-trending --top-k 50 --window-hours 1",
        module="novajobs.jobs.refresh_trending",
        schedule="* * * * *",
        timeout_sec=50,
        lock_ttl_sec=30,
        options=(
            Option("--top-k", "posts to keep", int, setting="trending_topk"),
            Option("--window-hours", "hours of events to score", int,
                   setting="trending_window_hours"),
        ),
    ),
    JobSpec(
        name="refresh-suggestions",
        summary="Cache friends-of-friends suggestions for active users (ClickHouse -> Redis).",
        description=(
            "For a batch of active users (a post event in the last active-days; those "
            "with no or the oldest cache first, so successive runs reach everyone), "
            "ranks the followees of their followees by mutual connections, minus the "
            "user and whom they already follow, and writes the top N as JSON to "
            "nova:cache:suggested_users:{user_id} with a TTL of 2x the refresh interval, "
            "through Redis pipelines."
        ),
        example="novajobs refresh-suggestions --batch-size 500   # or: --user 42",
        module="novajobs.jobs.refresh_suggestions",
        schedule="*/10 * * * *",
        timeout_sec=540,
        shardable=True,
        options=(
            Option("--user", "refresh only this user id (active or not)", int,
                   metavar="ID"),
            Option("--batch-size", "active users this run; 0 = all", int,
                   setting="suggestion_batch_size"),
        ),
    ),
    JobSpec(
        name="create-partitions",
        summary="Create the monthly range partitions of chat tables ahead of time (PostgreSQL).",
        description=(
            "For each table in partition_tables (chat_messages, chat_inbox), makes sure the "
            "partitions {table}_{yyyy_mm} from the current month through N months ahead "
            "exist (CREATE TABLE IF NOT EXISTS ... PARTITION OF ... FOR VALUES FROM/TO the "
            "month starts in partition_timezone), each in its own short transaction with "
            "lock_timeout set. Rows of a new month already in the DEFAULT partition stop "
            "that month (exit 1) unless --move-default-rows moves them in the same "
            "transaction. A table that is missing or not range-partitioned on a timestamp "
            "is reported and the others are still handled (exit 78)."
        ),
        example="novajobs create-partitions --months 3 --dry-run",
        module="novajobs.jobs.create_partitions",
        schedule="0 2 * * *",
        timeout_sec=600,
        destructive=True,
        options=(
            Option("--months", "months ahead of the current one", int,
                   setting="partition_months_ahead", metavar="N"),
            Option("--table", "only this table (repeatable; default: partition_tables)",
                   multiple=True, metavar="[SCHEMA.]TABLE"),
            Option("--move-default-rows", "move rows of a new month out of the DEFAULT "
                   "partition into it (locks the table while moving)", bool),
        ),
    ),
    JobSpec(
        name="daily-stats",
        summary="Compute one day's (or a range's) platform numbers into daily_stats.",
        description=(
            "Per day in the configured time zone: total users (created by the end of the "
            "day), active users (distinct audit_logs.user_id), messages (chat_messages), "
            "storage added (sum of file_metadata.size created that day) and API QPS peak "
            "(the busiest second of audit_logs); upserted on stat_date. A --from/--to "
            "range is one set-wise query; days without data get zeros; a re-run over the "
            "same data changes nothing. Without --date/--from it also fills the days "
            "missing since the table's first (catchup_max_periods per run, oldest first). "
            "Needs `novajobs init-db` once."
        ),
        example="novajobs daily-stats --from 2025-11-01 --to 2025-11-30 --json",
        module="novajobs.jobs.daily_stats",
        schedule="0 1 * * *",
        timeout_sec=3600,
        options=(
            Option("--date", "one day, YYYY-MM-DD (default: yesterday)", param="on",
                   metavar="DATE"),
            Option("--from", "first day of a backfill", param="from_date", metavar="DATE"),
            Option("--to", "last day of a backfill (default: yesterday)", param="to_date",
                   metavar="DATE"),
            NO_CATCHUP,
        ),
        catchup=True,
    ),
    JobSpec(
        name="group-activity-rank",
        summary="Rank the week's most active channels into group_activity_rank.",
        description=(
            "For one ISO week (Monday to Monday in the configured time zone; default last "
            "week): per channel the message count and distinct senders, score = messages "
            "* rank_weight_messages + senders * rank_weight_members; the top N by score "
            "(ties: lower channel id) with their rank replace the week's rows in one "
            "transaction. Without --week it also fills the weeks with messages but no "
            "ranking since the table's first (catchup_max_periods per run, oldest first). "
            "Needs `novajobs init-db` once."
        ),
        example="novajobs group-activity-rank --week 2025-48",
        module="novajobs.jobs.group_activity_rank",
        schedule="0 2 * * 1",
        timeout_sec=3600,
        options=(
            Option("--week", "ISO week YYYY-WW (default: last week)", metavar="YYYY-WW"),
            Option("--top", "channels to keep", int, setting="rank_top_n", metavar="N"),
            NO_CATCHUP,
        ),
        catchup=True,
    ),
    JobSpec(
        name="check-message-gaps",
        summary="Find missing seq numbers per channel in recent chat_messages (exit 3 if any).",
        description=(
            "Over the last window (gaps_window_sec + gaps_overlap_sec, ending "
            "gaps_settle_sec ago) or --since/--until, lists every gap in each channel's seq, "
            "including the one between the last message before the window and the first in "
            "it: channel, missing range, count. Exit 3 when there is any gap. Uses the "
            "(channel_id, seq) index and a created_at range."
        ),
        example="novajobs check-message-gaps --since 2h --json",
        module="novajobs.jobs.check_message_gaps",
        schedule="*/10 * * * *",
        timeout_sec=540,
        options=(
            Option("--since", "start: ISO time (local to timezone if naive) or age (15m, 2h, "
                   "1d)", metavar="TIME"),
            Option("--until", "end: ISO time, 'now' or age (default: now - settle)",
                   metavar="TIME"),
        ),
    ),
    JobSpec(
        name="check-consistency",
        summary="Compare PostgreSQL users with Neo4j :User nodes (exit 3 beyond tolerance).",
        description=(
            "Counts PostgreSQL users and Neo4j (:User) nodes and prints both and their "
            "difference; a difference above the tolerance (in % of the larger count) is a "
            "problem: exit 3 and an alert. --sample N also draws N random ids from each "
            "side, looks them up on the other in batches and names the missing ones (their "
            "share is held to the same tolerance). An unreachable Neo4j exits 69, not 3."
        ),
        example="novajobs check-consistency --sample 1000 --tolerance 0.5",
        module="novajobs.jobs.check_consistency",
        schedule="0 5 * * *",
        timeout_sec=900,
        options=(
            Option("--sample", "also look up N random ids of each side on the other", int,
                   setting="consistency_sample_size", metavar="N"),
            Option("--tolerance", "allowed difference in % of the larger count", float,
                   setting="consistency_tolerance_percent", metavar="PERCENT"),
        ),
    ),
    JobSpec(
        name="gc-files",
        summary="Delete marked files from S3 and file_metadata (sharded, race-safe).",
        description=(
            "Deletes the objects of file_metadata rows with status = 2 and ref_count = 0 "
            "unchanged for the grace period, then the rows, page by page (keyset on id): "
            "each page's rows are locked (FOR UPDATE SKIP LOCKED) and re-checked, their "
            "objects removed with S3 multi-object deletes, and only the rows whose objects "
            "are gone deleted, in one transaction. A file referenced again meanwhile is "
            "never deleted; an object already missing counts as deleted. A shard I/N owns "
            "the rows with id % N == I-1."
        ),
        example="novajobs gc-files --dry-run --limit 100   # or: --shard auto (Indexed Job)",
        module="novajobs.jobs.gc_files",
        schedule="0 4 * * *",
        timeout_sec=3300,
        lock_ttl_sec=60,
        shardable=True,
        destructive=True,
        options=(
            Option("--limit", "delete at most N files this run; 0 = all", int,
                   setting="gc_limit", metavar="N"),
            Option("--grace", "only files marked longer ago than this (e.g. 24h, 90m)",
                   setting="gc_grace", metavar="DURATION"),
        ),
    ),
    # --- PostgreSQL jobs --------------------------------------------------------------
    JobSpec(
        name="forcemerge-indices",
        summary="Force-merge old Elasticsearch indices that still have many segments.",
        description=(
            "For the indices matching the pattern that are older than the minimum age "
            "(creation_date, or the date in the name with --date-format) and have a shard "
            "with more than max_num_segments segments, starts a force-merge task and waits "
            "for it, one index at a time (with --delay between). Skips closed indices, the "
            "write index of an alias or data stream, and merged indices. At the timeout it "
            "stops waiting (the merge goes on in Elasticsearch) and exits 124."
        ),
        example="novajobs forcemerge-indices --pattern 'logs-*' --min-age-days 7 --dry-run",
        module="novajobs.jobs.forcemerge_indices",
        schedule="0 3 * * *",
        timeout_sec=4 * 3600,
        destructive=True,
        options=(
            Option("--pattern", "indices to consider (a-*,b-*,-a-keep)",
                   setting="forcemerge_pattern", metavar="PATTERN"),
            Option("--min-age-days", "only indices at least this old", float,
                   setting="forcemerge_min_age_days", metavar="DAYS"),
            Option("--date-format", "read the age from this date in the name, e.g. %Y.%m.%d",
                   setting="forcemerge_name_date_format", metavar="FORMAT"),
            Option("--max-num-segments", "segments per shard to merge down to", int,
                   setting="forcemerge_max_num_segments", metavar="N"),
            Option("--delay", "seconds to pause between two merges", float,
                   setting="forcemerge_delay_sec", metavar="SECONDS"),
        ),
    ),
    JobSpec(
        name="archive-partitions",
        summary="Move monthly partitions past their retention to S3 (verified), then drop them.",
        description=(
            "For each table of archive_retention_months (table=months; none by default: off "
            "until set), every monthly partition whose month is older than the retention is "
            "detached (CONCURRENTLY unless there is a default partition), streamed with COPY "
            "into one gzip'd S3 object (multipart, memory flat), described by a manifest "
            "(range, columns and types, rows, bytes, SHA-256), read back and verified, then "
            "dropped (or kept detached: archive_keep_detached) in the transaction that "
            "verified it. A crash at any step is completed by the next run. A partition "
            "still being written to, the default partition and a table not partitioned by "
            "month are refused with one line; the other tables go on."
        ),
        example="novajobs archive-partitions -s archive_retention_months=chat_messages=6 --dry-run",
        module="novajobs.jobs.archive_partitions",
        schedule="30 2 * * *",
        timeout_sec=4 * 3600,
        lock_ttl_sec=120,
        destructive=True,
        options=(
            Option("--table", "only this table of archive_retention_months (repeatable)",
                   multiple=True, metavar="[SCHEMA.]TABLE"),
        ),
    ),
    JobSpec(
        name="archive-audit-logs",
        summary="Archive audit_logs rows past their retention to S3, then delete them.",
        description=(
            "Rows of audit_logs older than audit_archive_retention_days (no default: off "
            "until set) go in keyset batches, each one gzip'd COPY object in archive_bucket "
            "named after its first and last id (a re-run overwrites, never duplicates), read "
            "back and verified, then deleted in a transaction that locks and re-reads the "
            "batch first and records the object in novajobs_audit_archive. Nothing is "
            "deleted that is not in a verified archive; a crash loses or doubles no row. "
            "Needs `novajobs init-db` once."
        ),
        example="novajobs archive-audit-logs --retention-days 180 --dry-run",
        module="novajobs.jobs.archive_audit_logs",
        schedule="15 1 * * *",
        timeout_sec=3 * 3600,
        destructive=True,
        options=(
            Option("--retention-days", "archive rows older than this many days", int,
                   setting="audit_archive_retention_days", metavar="DAYS"),
            Option("--batch-rows", "rows per archive object", int,
                   setting="audit_archive_batch_rows", metavar="N"),
        ),
    ),
    JobSpec(
        name="gc-orphans",
        summary="Quarantine S3 objects that no file_metadata row names (sharded, race-safe).",
        description=(
            "Lists each bucket of orphan_buckets beside its file_metadata rows (both in key "
            "order, merged: memory flat). Objects without a row older than orphan_grace are "
            "looked up again, copied into the quarantine if unchanged, deleted, and put back "
            "at once if a row appeared meanwhile. Live rows whose object is missing are "
            "counted and sampled in the record (--mark-missing: also listed in "
            "novajobs_missing_objects), never deleted. Quarantined objects older than "
            "quarantine_retention are purged. A shard I/N owns the keys whose CRC-32 % N is "
            "I-1. See `novajobs quarantine`."
        ),
        example="novajobs gc-orphans --dry-run   # or: --shard auto (Indexed Job)",
        module="novajobs.jobs.gc_orphans",
        schedule="0 5 * * *",
        timeout_sec=3300,
        shardable=True,
        destructive=True,
        options=(
            Option("--grace", "only objects older than this (e.g. 24h, 2d)",
                   setting="orphan_grace", metavar="DURATION"),
            Option("--mark-missing", "also record live rows without an object in "
                   "novajobs_missing_objects (needs init-db)", bool),
        ),
    ),
    JobSpec(
        name="expire-indices",
        summary="Delete Elasticsearch indices older than a retention (never a write index).",
        description=(
            "Deletes the indices matching the pattern that are older than "
            "expire_retention_days (creation_date, or the date in the name with "
            "--date-format), one at a time, with forcemerge-indices' filters: never the "
            "write index of an alias or data stream, never an index behind one of "
            "expire_protected_aliases. Each index is re-checked right before its delete; a "
            "failure is counted and the others still go (exit 1). With "
            "expire_snapshot_repository each index is made read-only and snapshotted first, "
            "and deleted only once the snapshot is verified (restorable). The retention has "
            "no default: until it is set nothing is deleted. --dry-run lists ages and sizes."
        ),
        example="novajobs expire-indices --retention-days 30 --dry-run",
        module="novajobs.jobs.expire_indices",
        schedule="30 3 * * *",
        timeout_sec=3600,
        destructive=True,
        options=(
            Option("--pattern", "indices to consider (a-*,b-*,-a-keep)",
                   setting="expire_pattern", metavar="PATTERN"),
            Option("--retention-days", "delete indices older than this", float,
                   setting="expire_retention_days", metavar="DAYS"),
            Option("--date-format", "read the age from this date in the name, e.g. %Y.%m.%d",
                   setting="expire_name_date_format", metavar="FORMAT"),
            Option("--snapshot-repository", "snapshot each index into this repository "
                   "(verified) before deleting it", setting="expire_snapshot_repository",
                   metavar="NAME"),
        ),
    ),
    # --- Redis jobs -------------------------------------------------------------------
    JobSpec(
        name="clean-token-blacklist",
        summary="Expire or delete token-blacklist entries that have no TTL (Redis SCAN).",
        description=(
            "SCANs token_blacklist_pattern (auth:block:token:*) with pipelined TTL and value "
            "reads. Entries with a TTL are left to Redis. An entry without one whose value "
            "(Unix expiry, or JSON with exp) is past is deleted; one still valid gets "
            "EXPIREAT its expiry; an unreadable one is reported, and deleted only with "
            "--delete-unreadable. Each change re-checks the entry first (Lua), so one "
            "rewritten meanwhile is left alone. Counts scanned, with TTL, repaired, deleted, "
            "unreadable."
        ),
        example="novajobs clean-token-blacklist --dry-run",
        module="novajobs.jobs.clean_token_blacklist",
        schedule="17 * * * *",
        timeout_sec=1800,
        lock_ttl_sec=60,
        destructive=True,
        options=(
            Option("--pattern", "SCAN MATCH pattern of the blacklist keys",
                   setting="token_blacklist_pattern", metavar="GLOB"),
            Option("--scan-count", "SCAN COUNT hint (keys per round trip)", int,
                   setting="token_blacklist_scan_count", metavar="N"),
            Option("--delete-unreadable", "also delete entries without TTL whose value "
                   "holds no expiry", bool),
        ),
    ),
    JobSpec(
        name="drain-stream",
        summary="Consume Redis streams with handlers; retry with backoff, then dead-letter.",
        description=(
            "Reads the streams of stream_handlers (or the STREAM arguments) through consumer "
            "group stream_group as consumer stream_consumer, higher stream_priorities first, "
            "entries left pending by dead consumers first (XAUTOCLAIM). Runs their handlers "
            "with bounded concurrency and a per-message timeout, within --max-messages and "
            "--max-seconds. Success: XACK. Failure: retry:{stream} (due time, exponential "
            "backoff) and XACK; past stream_max_retries, or undecodable: dlq:{stream}. "
            "SIGTERM: stops reading, lets running handlers finish, acks them; the rest stays "
            "pending. Several runs (pods) may share a group; the lock is per consumer."
        ),
        example="novajobs drain-stream stream:audit:log --max-messages 5000 --concurrency 8",
        module="novajobs.jobs.drain_stream",
        schedule="* * * * *",
        timeout_sec=60,
        lock_ttl_sec=30,
        lock_scope="stream_consumer",
        options=(
            Option("STREAM", "streams to drain (default: all of stream_handlers)",
                   param="streams", multiple=True, argument=True),
            Option("--max-messages", "entries to take this run", int,
                   setting="drain_max_messages", metavar="N"),
            Option("--max-seconds", "seconds to keep reading", float,
                   setting="drain_max_seconds", metavar="S"),
            Option("--concurrency", "handler calls at once", int,
                   setting="drain_concurrency", metavar="N"),
            Option("--message-timeout", "seconds per handler call", float,
                   setting="drain_message_timeout_sec", metavar="S"),
            Option("--consumer", "consumer name (default: host name)",
                   setting="stream_consumer", metavar="NAME"),
        ),
    ),
    JobSpec(
        name="promote-retries",
        summary="Move due retries from retry:{stream} back into their streams (atomic).",
        description=(
            "For each stream of stream_handlers (or the STREAM arguments), moves the entries "
            "of the sorted set retry:{stream} whose due time has come back into the stream, "
            "stream_promote_batch at a time, each batch in one Lua script: nothing is lost "
            "or duplicated if the run dies halfway. Reports how many were promoted and how "
            "many are scheduled later."
        ),
        example="novajobs promote-retries stream:audit:log",
        module="novajobs.jobs.promote_retries",
        schedule="* * * * *",
        timeout_sec=50,
        lock_ttl_sec=30,
        options=(
            Option("STREAM", "streams whose retries to promote (default: stream_handlers)",
                   param="streams", multiple=True, argument=True),
        ),
    ),
)


def check_flag(flag: str, value: object) -> None:
    """For a job's check_params: a flag's value is True or False (from Python too)."""
    if not isinstance(value, bool):
        raise UsageError(f"{flag} {value!r}: expected True or False")


# Jobs run by hand only, with the same run contract (lock, record, exit codes): no
# schedule, so no crontab line or CronJob.
ON_DEMAND: tuple[JobSpec, ...] = (
    JobSpec(
        name="restore-partition",
        summary="Bring one archived month back from S3 into its table (verified, attached).",
        description=(
            "Reads the manifest of TABLE's month YYYY-MM, recreates the partition's table "
            "like the parent, COPYs the archive into it, checks rows and SHA-256 of what S3 "
            "sent and of what the table holds against the manifest, and attaches it for the "
            "month, all in one transaction: on any mismatch or overlap nothing is left "
            "behind. A partition archive-partitions kept detached is checked and attached. "
            "The archive stays in S3."
        ),
        example="novajobs restore-partition chat_messages 2025-01",
        module="novajobs.jobs.restore_partition",
        schedule="",
        timeout_sec=4 * 3600,
        lock_ttl_sec=120,
        destructive=True,
        options=(
            Option("TABLE", "the partitioned table", param="table", argument=True),
            Option("MONTH", "the month, YYYY-MM", param="month", argument=True),
        ),
    ),
)


# Every job the CLI and the runner know: the scheduled ones, then those run by hand.
ALL_JOBS: tuple[JobSpec, ...] = (*JOBS, *ON_DEMAND)


def get_job(name: str) -> JobSpec:
    for spec in ALL_JOBS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in ALL_JOBS)
    raise UsageError(f"unknown job {name!r}; jobs: {known}")

