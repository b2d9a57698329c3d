"""Settings: one typed, frozen object built from defaults < TOML file < environment < flags.

Each field names its environment variables (``NOVAJOBS_<NAME>`` always works; the
older names such as ``JOB_TRENDING_TOPK`` are aliases) and how it is checked. The
whole object is validated once, before any connection is made; the first problem
becomes a ``ConfigError`` naming the setting and where its value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import socket
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novajobs import redact
from novajobs.dates import DURATION_HELP, check_scheduled_time, name_date_regex, parse_duration
from novajobs.errors import ConfigError, UsageError
from novajobs.validators import (
    Validator,
    at_least_one,
    both,
    ca_file_or_empty,
    email_addresses,
    file_or_empty,
    fraction,
    host_port,
    http_url_or_empty,
    int_between,
    k8s_quantity,
    libpq_tls_files,
    names_in,
    no_credentials,
    non_empty,
    non_negative,
    one_of,
    pairs_of,
    parsed_by,
    positive,
    redis_url_options,
    text,
    timezone_name,
    url_with_scheme,
)


def _registered_jobs() -> list[str]:
    from novajobs.registry import JOBS

    return [spec.name for spec in JOBS]


duration = parsed_by(parse_duration, f"must be {DURATION_HELP}")
job_names = names_in(_registered_jobs, "job")
name_date_format = parsed_by(name_date_regex, empty_ok=True)  # "" = use creation_date


def setting(
    default: Any,
    *,
    env: tuple[str, ...] = (),
    secret: bool = False,
    scrub: bool | None = None,
    check: Validator | None = None,
    help: str = "",
) -> Any:
    """``secret``: shown as **** by `config`; ``scrub`` (default: ``secret``): its value
    is also masked wherever it appears in anything novajobs prints or stores."""
    scrub = secret if scrub is None else scrub
    meta = {"env": env, "secret": secret, "scrub": scrub, "check": check, "help": help}
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    # --- connections --------------------------------------------------------------
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        env=("REDIS_URL",),
        check=both(url_with_scheme("redis", "rediss", "unix"), redis_url_options),
        help="Redis for locks, run records and the caches: one server or any node of a cluster",
    )
    redis_mode: str = setting(
        "auto",
        check=one_of("auto", "cluster", "single"),
        help="auto: ask the node (INFO) whether it is a Redis Cluster; cluster/single: don't ask",
    )
    tls_ca_file: str = setting(
        "",
        check=ca_file_or_empty,
        help="CA bundle (PEM) verifying rediss://, https:// ClickHouse and Elasticsearch, and "
        "S3 with minio_secure; '' = the drivers' default CAs (PostgreSQL: sslrootcert in its URL)",
    )
    redis_tls_cert_file: str = setting(
        "", check=file_or_empty, help="client certificate (PEM) for rediss://; '' = none"
    )
    redis_tls_key_file: str = setting(
        "", check=file_or_empty, help="its private key, if not in the certificate file"
    )
    redis_prefix: str = setting(
        "", help="prepended to every Redis key novajobs reads or writes (multi-tenant, tests)"
    )
    redis_pool_size: int = setting(
        10, env=("JOB_REDIS_POOL_SIZE",), check=positive, help="Redis connections at most"
    )
    redis_timeout_sec: float = setting(5.0, check=positive, help="socket timeout per command")
    connect_timeout_sec: float = setting(5.0, check=positive, help="to open any connection")
    http_timeout_sec: float = setting(
        10.0, check=positive,
        help="per request to S3 and Elasticsearch (a silent store: tries x this to exit 69)",
    )
    database_url: str = setting(
        "postgresql://127.0.0.1:5432/postgres",
        env=("DATABASE_URL",),
        check=both(url_with_scheme("postgresql", "postgres"), libpq_tls_files),
        help="PostgreSQL (libpq URI; TLS: ?sslmode=verify-full&sslrootcert=/path/ca.pem)",
    )
    clickhouse_url: str = setting(
        "http://localhost:8123",
        env=("CLICKHOUSE_URL",),
        check=url_with_scheme("http", "https", "chdb"),
        help="http(s)://user:pass@host:port/db, or chdb:///path?database=db (embedded)",
    )
    ch_timeout_ms: int = setting(
        30_000, env=("JOB_CH_TIMEOUT_MS",), check=positive, help="per ClickHouse query"
    )
    minio_endpoint: str = setting(
        "127.0.0.1:9000", env=("MINIO_ENDPOINT",), check=host_port, help="S3/MinIO host:port"
    )
    # An identifier rather than a credential: hidden by `config`, not scrubbed from logs
    # (the demo's key is "novajobs", a word every log line may contain).
    minio_access_key: str = setting(
        "", env=("MINIO_ACCESS_KEY",), secret=True, scrub=False, help="S3 key"
    )
    minio_secret_key: str = setting("", env=("MINIO_SECRET_KEY",), secret=True, help="S3 secret")
    minio_secure: bool = setting(False, env=("MINIO_SECURE",), help="HTTPS to S3")
    minio_region: str = setting("us-east-1", env=("MINIO_REGION",), help="S3 signing region")
    neo4j_uri: str = setting(
        "bolt://127.0.0.1:7687",
        env=("NEO4J_URI",),
        check=both(url_with_scheme("bolt", "neo4j", "bolt+s", "neo4j+s", "bolt+ssc", "neo4j+ssc"),
                   no_credentials),
        help="Neo4j (Bolt)",
    )
    neo4j_username: str = setting("neo4j", env=("NEO4J_USERNAME",), help="Neo4j user")
    neo4j_password: str = setting("", env=("NEO4J_PASSWORD",), secret=True, help="Neo4j password")
    elasticsearch_url: str = setting(
        "http://127.0.0.1:9200",
        env=("ELASTICSEARCH_URL",),
        check=url_with_scheme("http", "https"),
        help="Elasticsearch",
    )
    elasticsearch_api_key: str = setting(
        "", env=("ELASTICSEARCH_API_KEY",), secret=True, help="Elasticsearch API key (optional)"
    )

    # --- the run contract ---------------------------------------------------------
    timezone: str = setting("UTC", check=timezone_name, help="for dates, days and schedules")
    log_format: str = setting(
        "auto", check=one_of("auto", "rich", "json"), help="auto: rich on a terminal, else JSON"
    )
    log_file: str = setting(
        "",
        help="append the log (JSON lines) to this file instead of stderr (directory created, "
        "reopened after logrotate moves it); '' = stderr",
    )
    log_level: str = setting(
        "info", check=one_of("debug", "info", "warning", "error"), help="least level logged"
    )
    history_size: int = setting(100, check=positive, help="run records kept per job")
    run_heartbeat_sec: float = setting(
        5.0, check=positive,
        help="a running run says it is alive and looks for stop requests this often; "
        "status calls it stale after 3 silent beats",
    )
    run_log_lines: int = setting(200, check=positive, help="last log lines kept per run")
    run_log_bytes: int = setting(65536, check=positive, help="at most this much of them")
    run_log_retention: str = setting(
        "7d", check=duration, help="how long a run's log lines are kept in Redis"
    )
    retry_attempts: int = setting(
        3, check=positive, help="tries for a transient connection error"
    )
    retry_max_wait_sec: float = setting(5.0, check=positive, help="cap of the retry backoff")
    shard_count: int = setting(
        0, check=non_negative, help="shards of a sharded job under --shard auto"
    )
    stop_grace_sec: float = setting(
        5.0,
        check=positive,
        help="after SIGTERM/SIGINT, time to reach a safe point before the run is stopped "
        "where it is (critical sections excepted)",
    )
    lock_ttl_sec: float = setting(
        0.0, check=non_negative, help="lock TTL for every job; 0 = each job's own (registry)"
    )

    # --- refresh-trending ---------------------------------------------------------
    trending_interval_sec: int = setting(
        60, env=("JOB_TRENDING_INTERVAL_SEC",), check=positive, help="TTL is 1.5x this"
    )
    trending_window_hours: int = setting(
        1, env=("JOB_TRENDING_WINDOW_HOURS",), check=positive, help="hours of events scored"
    )
    trending_topk: int = setting(50, env=("JOB_TRENDING_TOPK",), check=positive, help="posts kept")

    # --- refresh-suggestions ------------------------------------------------------
    suggestion_interval_sec: int = setting(
        600, env=("JOB_SUGGESTION_INTERVAL_SEC",), check=positive, help="TTL is 2x this"
    )
    suggestion_batch_size: int = setting(
        100,
        env=("JOB_SUGGESTION_BATCH_SIZE",),
        check=non_negative,
        help="active users refreshed per run; 0 = all of them",
    )
    suggestions_per_user: int = setting(
        20, env=("JOB_SUGGESTIONS_PER_USER",), check=positive, help="suggestions kept per user"
    )
    suggestion_active_days: int = setting(
        7, env=("JOB_SUGGESTION_ACTIVE_DAYS",), check=positive,
        help="active = a post event in the last N days",
    )
    suggestion_chunk_size: int = setting(
        1000, check=positive, help="users per ClickHouse query and Redis pipeline"
    )

    # --- clean-token-blacklist ----------------------------------------------------
    token_blacklist_pattern: str = setting(
        "auth:block:token:*", help="SCAN MATCH pattern of the token blacklist (prefix added)"
    )
    token_blacklist_scan_count: int = setting(
        1000, check=positive, help="SCAN COUNT hint, and keys per pipelined read"
    )

    # --- drain-stream, promote-retries, dlq ---------------------------------------
    stream_handlers: tuple[str, ...] = setting(
        ("stream:audit:log=audit-log",),
        check=pairs_of(text, "stream:audit:log=audit-log"),
        help="stream=handler pairs: the streams drain-stream consumes, and with what",
    )
    stream_priorities: tuple[str, ...] = setting(
        (),
        check=pairs_of(int_between(1, 10), "stream:audit:log=1"),
        help="stream=N, 1 highest .. 10 lowest (default 5): higher streams are served first",
    )
    stream_group: str = setting("novajobs", help="consumer group (created if missing)")
    stream_consumer: str = setting(
        socket.gethostname(),
        help="consumer name (default: the host/pod name); drain-stream locks per consumer",
    )
    drain_max_messages: int = setting(10_000, check=positive, help="messages per run")
    drain_max_seconds: float = setting(45.0, check=positive, help="reading time per run")
    drain_concurrency: int = setting(10, check=positive, help="handler calls at once")
    drain_message_timeout_sec: float = setting(
        10.0, check=positive, help="per handler call; an overrun counts as a failure"
    )
    drain_block_ms: int = setting(
        1000, check=positive, help="XREADGROUP BLOCK when the streams are empty; < redis timeout"
    )
    drain_failure_limit: int = setting(
        100, check=positive,
        help="stop the run (exit 1) after this many failed handler calls in a row",
    )
    stream_claim_idle_sec: float = setting(
        60.0, check=positive, help="reclaim entries pending this long (dead consumers)"
    )
    stream_max_retries: int = setting(
        3, check=non_negative, help="retries after the first failure, then the DLQ"
    )
    stream_retry_initial_sec: float = setting(10.0, check=positive, help="first retry delay")
    stream_retry_multiplier: float = setting(2.0, check=at_least_one, help="backoff growth")
    stream_retry_max_sec: float = setting(3600.0, check=positive, help="backoff cap")
    stream_retry_jitter: float = setting(
        0.1, check=fraction, help="delay * random(1-j, 1+j), then capped"
    )
    stream_promote_batch: int = setting(
        500, check=positive, help="due retries moved per atomic script call"
    )
    stream_dedupe_retention_days: int = setting(
        30, check=positive, help="how long the audit-log handler remembers handled entry ids"
    )
    stream_trim: bool = setting(
        True, help="after each drain, XTRIM MINID what every consumer group is done with; "
        "off for streams that readers outside consumer groups also read"
    )
    stream_dlq_max_len: int = setting(
        100_000, check=positive, help="dead letters kept per stream; the oldest beyond are "
        "dropped and counted (dlq-dropped:{stream}, alert)"
    )
    stream_dlq_max_age: str = setting(
        "14d", check=duration, help="dead letters older than this are dropped and counted "
        "(when dead-lettered); at most stream_dedupe_retention_days - 1 day"
    )

    # --- gc-files -----------------------------------------------------------------
    gc_grace: str = setting(
        "24h",
        check=duration,
        help="a marked file (status 2, ref_count 0) must be unchanged this long to be deleted",
    )
    gc_page_size: int = setting(
        1000, check=int_between(1, 10_000), help="rows locked and objects deleted per transaction"
    )
    gc_max_failures: int = setting(
        100,
        check=non_negative,
        help="object deletes that may fail in a run before it stops and fails (exit 1)",
    )
    gc_limit: int = setting(
        0, check=non_negative, help="files deleted at most per run (bounds one run's work); 0 = all"
    )

    # --- PostgreSQL jobs: create-partitions, daily-stats, group-activity-rank,
    # --- check-message-gaps -------------------------------------------------------
    partition_tables: tuple[str, ...] = setting(
        ("chat_messages", "chat_inbox"),
        env=("JOB_PARTITION_TABLES",),
        check=lambda v: None if v else "must name at least one table",
        help="range-partitioned tables to keep monthly partitions for ([schema.]table, exact)",
    )
    partition_months_ahead: int = setting(
        3, check=non_negative, help="partitions from the current month through this many ahead"
    )
    partition_timezone: str = setting(
        "UTC", check=timezone_name, help="month boundaries of timestamptz partitions"
    )
    pg_lock_timeout_sec: float = setting(
        5.0, check=positive, help="longest wait for a table lock (DDL) before giving up"
    )
    rank_top_n: int = setting(100, check=positive, help="channels kept per week")
    rank_weight_messages: float = setting(
        1.0, check=non_negative, help="score = messages * this + active members * the next"
    )
    rank_weight_members: float = setting(
        10.0, check=non_negative, help="weight of each distinct sender in the week's score"
    )
    catchup_max_periods: int = setting(
        31,
        check=non_negative,
        help="missed days (daily-stats) or weeks (group-activity-rank) filled per run, "
        "oldest first; the rest the next run fills",
    )
    scheduled_time: str = setting(
        "",
        check=check_scheduled_time,
        help="the time a report run was scheduled for (its 'now'): ISO with offset, or the "
        "Kubernetes Job name its CronJob gave it (set by the manifests); '' = the clock",
    )
    gaps_window_sec: int = setting(
        600, check=positive, help="recent time checked for seq gaps (the schedule's interval)"
    )
    gaps_overlap_sec: int = setting(
        120, check=non_negative, help="added to the window so consecutive runs miss nothing"
    )
    gaps_settle_sec: int = setting(
        30, check=non_negative, help="newest messages not checked yet (may still be committing)"
    )
    gaps_report_limit: int = setting(
        1000, check=positive, help="gaps listed in the result and log (all are counted)"
    )

    # --- deployment and observability: metrics.py, checkins.py, deploy.py --------------
    # Reporting is best effort: a dead Pushgateway or ping endpoint never fails a run.
    pushgateway_url: str = setting(
        "", check=http_url_or_empty(), help="Prometheus Pushgateway for per-run metrics; '' = off"
    )
    healthcheck_url: str = setting(
        "",
        secret=True,  # a ping URL is a credential: anyone holding it can ping the check
        check=http_url_or_empty("job", "unit"),
        help="healthchecks.io-style ping URL, {job}/{unit} filled in per run; '' = off",
    )
    report_timeout_sec: float = setting(
        5.0, check=positive, help="per Pushgateway push and per health-check ping"
    )
    # Only `novajobs render-deploy` reads these (crontab.example, k8s-cronjobs/).
    k8s_image: str = setting("", help="image of the CronJobs; '' = novajobs:<version>")
    k8s_namespace: str = setting("novajobs", help="namespace of the CronJobs")
    k8s_secret: str = setting(
        "novajobs", help="Secret holding the connection settings (envFrom, required)"
    )
    k8s_configmap: str = setting(
        "novajobs", help="ConfigMap with the other settings (envFrom, optional)"
    )
    k8s_cpu_request: str = setting("100m", check=k8s_quantity)
    k8s_cpu_limit: str = setting("1", check=k8s_quantity, help="'' = no CPU limit")
    k8s_memory_request: str = setting("256Mi", check=k8s_quantity)
    k8s_memory_limit: str = setting("512Mi", check=k8s_quantity)
    k8s_default_shards: int = setting(
        4, check=int_between(1, 1000), help="Indexed-Job shards (pods) of a shardable job"
    )
    k8s_pods: tuple[str, ...] = setting(
        ("refresh-suggestions=1", "drain-stream=2"),
        check=pairs_of(int_between(1, 1000), "gc-files=8"),
        help="job=N pods per run: shards of a shardable job, or consumers of a job locked "
        "per consumer (drain-stream); 1 = one pod",
    )

    # --- the web console: novajobs/console/ ------------------------------------------
    console_bind: str = setting(
        "127.0.0.1:8787", check=host_port, help="where `novajobs console` listens (host:port)"
    )
    console_token: str = setting(
        "",
        secret=True,
        help="needed for every console action, and for everything off loopback; '' = "
        "a random one, printed at start (loopback only)",
    )
    console_read_only: bool = setting(False, help="the console shows, and refuses every action")
    k8s_console: bool = setting(
        False, help="render-deploy also writes the console's Deployment and Service"
    )

    # --- alerts: alerts.py --------------------------------------------------------
    # Sent by the runner when a check finds a problem or a job fails; best effort.
    alert_webhook_url: str = setting(
        "",
        secret=True,  # Slack-style webhook URLs carry their token in the path
        check=http_url_or_empty(),
        help="POST a Slack-compatible JSON alert here; '' = no webhook",
    )
    alert_smtp_host: str = setting("", help="SMTP server for alert emails; '' = no email")
    alert_smtp_port: int = setting(
        25, check=int_between(1, 65535), help="usually 25, 587 with starttls, 465 with ssl"
    )
    alert_smtp_tls: str = setting(
        "none",
        check=one_of("none", "starttls", "ssl"),
        help="starttls: upgrade the connection (587); ssl: TLS from the start (465)",
    )
    alert_smtp_username: str = setting("", help="log in with this user; '' = no AUTH")
    alert_smtp_password: str = setting("", secret=True, help="for alert_smtp_username")
    alert_smtp_ca_file: str = setting(
        "", help="CA bundle (PEM) to verify the SMTP server; '' = the system's CAs"
    )
    alert_email_from: str = setting("", help="sender address; '' = novajobs@<this host>")
    alert_email_to: tuple[str, ...] = setting(
        (), check=email_addresses, help="recipients, comma-separated"
    )
    alert_on_failure: tuple[str, ...] = setting(
        ("*",),
        check=job_names,
        help="jobs whose failures (failed, unavailable, timeout, lock lost, config) alert",
    )
    alert_on_problem: tuple[str, ...] = setting(
        ("*",), check=job_names, help="jobs whose 'problem found' outcome alerts; * = all"
    )
    alert_cooldown_sec: int = setting(
        3600,
        check=non_negative,
        help="at most one alert per job (or shard) and kind in this time; 0 = every run",
    )
    alert_timeout_sec: float = setting(10.0, check=positive, help="per webhook POST / SMTP talk")

    # --- check-consistency: jobs/check_consistency.py -----------------------------
    consistency_tolerance_percent: float = setting(
        0.1,
        check=non_negative,
        help="largest difference of the user counts, in % of the larger one, that is fine",
    )
    consistency_sample_size: int = setting(
        0, check=non_negative, help="ids sampled on each side and looked up on the other; 0 = off"
    )
    consistency_lookup_batch: int = setting(
        1000, check=positive, help="sampled ids per lookup query (UNWIND on Neo4j, = ANY on PG)"
    )

    # --- forcemerge-indices: jobs/forcemerge_indices.py ---------------------------
    forcemerge_pattern: str = setting(
        "logs-*", check=non_empty, help="indices to consider, Elasticsearch syntax (a-*,-a-keep)"
    )
    forcemerge_min_age_days: float = setting(
        7.0, check=non_negative, help="only indices at least this old (fractions allowed)"
    )
    forcemerge_name_date_format: str = setting(
        "",
        check=name_date_format,
        help="age from this date in the index name (e.g. %Y.%m.%d); '' = creation_date",
    )
    forcemerge_max_num_segments: int = setting(
        1, check=positive, help="merge shards down to this many segments"
    )
    forcemerge_delay_sec: float = setting(0.0, check=non_negative, help="pause between merges")
    forcemerge_poll_sec: float = setting(
        10.0, check=positive, help="how often a running merge task is polled"
    )

    # --- archives: archive-partitions, restore-partition, archive-audit-logs --------------
    archive_bucket: str = setting(
        "novajobs-archive", check=non_empty, help="S3 bucket of the archives (must exist)"
    )
    archive_prefix: str = setting("", help="key prefix of every archive object, e.g. 'prod/'")
    archive_compression_level: int = setting(
        6, check=int_between(1, 9), help="gzip level of the archives (1 fastest, 9 smallest)"
    )
    archive_part_size_mb: int = setting(
        16, check=int_between(5, 1024), help="multipart upload part size; memory ~3 parts"
    )
    archive_retention_months: tuple[str, ...] = setting(
        (),
        check=pairs_of(int_between(1, 1200), "chat_messages=12"),
        help="table=months: archive-partitions archives monthly partitions whose month is "
        "more than this many months back; none = off (archives nothing)",
    )
    archive_keep_detached: bool = setting(
        False, help="after a verified archive keep the detached partition instead of dropping it"
    )
    audit_archive_retention_days: int = setting(
        0,
        check=non_negative,
        help="archive, then delete, audit_logs rows older than this; 0 = off (deletes nothing)",
    )
    audit_archive_batch_rows: int = setting(
        10_000, check=int_between(1, 1_000_000), help="audit_logs rows per archive object"
    )

    # --- gc-orphans, quarantine: jobs/gc_orphans.py, quarantine.py --------------------
    orphan_buckets: tuple[str, ...] = setting(
        (), help="buckets gc-orphans checks for objects without a file_metadata row; none = off"
    )
    orphan_grace: str = setting(
        "24h", check=duration, help="an object without a row must be this old to be an orphan"
    )
    orphan_settle_sec: float = setting(
        10.0,
        check=non_negative,
        help="after moving orphans, look their rows up once more this much later",
    )
    orphan_batch_size: int = setting(
        1000, check=int_between(1, 10_000), help="orphans re-checked and moved per batch"
    )
    orphan_sample_size: int = setting(
        20, check=non_negative, help="rows without an object named in the run record"
    )
    quarantine_bucket: str = setting(
        "", help="bucket orphans are moved to; '' = each bucket's own quarantine_prefix"
    )
    quarantine_prefix: str = setting(
        "novajobs-quarantine/", check=non_empty, help="key prefix of quarantined objects"
    )
    quarantine_retention: str = setting(
        "30d", check=duration, help="quarantined objects older than this are purged for good"
    )

    # --- expire-indices: jobs/expire_indices.py --------------------------------------
    expire_pattern: str = setting(
        "logs-*", check=non_empty, help="indices expire-indices considers (a-*,-a-keep)"
    )
    expire_retention_days: float = setting(
        0.0,
        check=non_negative,
        help="delete matching indices older than this many days; 0 = off (deletes nothing)",
    )
    expire_name_date_format: str = setting(
        "",
        check=name_date_format,
        help="age from this date in the index name (e.g. %Y.%m.%d); '' = creation_date",
    )
    expire_protected_aliases: tuple[str, ...] = setting(
        (), help="never delete an index behind one of these aliases, comma-separated"
    )
    expire_snapshot_repository: str = setting(
        "",
        help="snapshot each index into this Elasticsearch repository (verified) before "
        "deleting it; '' = delete without a snapshot",
    )

    # Where each value came from ("default", "file:...", "env:NAME", "flag").
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def redacted(self, name: str) -> str:
        """The value of a setting as it may be shown or logged."""
        value = getattr(self, name)
        if _field(name).metadata["secret"]:
            return redact.MASK if value else ""
        if isinstance(value, tuple):
            return ",".join(redact.redact_url(v) for v in value)
        return redact.redact_url(value) if isinstance(value, str) else str(value)

    def secret_values(self) -> list[str]:
        """What must never be printed: secret settings, and the passwords and credential
        parameters of every URL-valued setting."""
        found: list[str] = []
        for f in _settings_fields():
            value = getattr(self, f.name)
            if f.metadata["scrub"] and isinstance(value, str) and value:
                found.append(value)
            elif isinstance(value, str) and "://" in value:
                found += redact.url_secrets(value)
        return found


def setting_names() -> list[str]:
    return [f.name for f in _settings_fields()]


def env_names(name: str) -> tuple[str, ...]:
    """Environment variables that set ``name``, the canonical one first."""
    return (f"NOVAJOBS_{name.upper()}", *_field(name).metadata["env"])


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build and validate the settings. Raises ConfigError with one line on the first problem.

    ``config_file`` falls back to ``$NOVAJOBS_CONFIG``; ``overrides`` are the flags.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = config_file or environ.get("NOVAJOBS_CONFIG")
    if path:
        for name, value in _read_toml(Path(path)).items():
            values[name] = _coerce(name, value, f"file:{path}")
            sources[name] = f"file:{path}"
    for name in setting_names():
        for var in env_names(name):
            if var in environ:
                values[name] = _coerce(name, environ[var], f"env:{var}")
                sources[name] = f"env:{var}"
                break
    for name, value in (overrides or {}).items():
        try:  # a bad value given on the command line is a usage error (exit 2)
            _known(name, "flag")
            values[name] = _coerce(name, value, "flag")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        sources[name] = "flag"
    for f in _settings_fields():
        sources.setdefault(f.name, "default")
        check = f.metadata["check"]
        value = values.get(f.name, f.default)
        complaint = check(value) if check else None
        if complaint:
            error = UsageError if sources[f.name] == "flag" else ConfigError
            raise error(f"setting {f.name} ({_origin(f.name, sources)}) {complaint}")
    settings = Settings(**values, sources=sources)
    redact.remember(settings.secret_values())
    return settings


def parse_assignment(text: str) -> tuple[str, str]:
    """``--set name=value`` -> (name, value)."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_").lower()
    if not sep or not name:
        raise UsageError(f"--set {text!r}: expected NAME=VALUE, e.g. --set trending_topk=20")
    try:
        _known(name, "flag --set")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return name, value


def _origin(name: str, sources: Mapping[str, str]) -> str:
    source = sources[name]
    return {"default": "the default", "flag": "a flag"}.get(source, source.replace(":", " ", 1))


def _settings_fields() -> Iterator[dataclasses.Field[Any]]:
    return (f for f in dataclasses.fields(Settings) if f.name != "sources")


def _field(name: str) -> dataclasses.Field[Any]:
    return Settings.__dataclass_fields__[name]


def _known(name: str, where: str) -> None:
    if name not in Settings.__dataclass_fields__ or name == "sources":
        close = difflib.get_close_matches(name, setting_names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown setting {name!r} in {where}{hint}")


def _read_toml(path: Path) -> dict[str, Any]:
    """Read the config file; tables flatten with '_' ([trending] topk -> trending_topk)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}); TOML files are UTF-8"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    flat: dict[str, Any] = {}

    def walk(prefix: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}".replace("-", "_").lower()
            if isinstance(value, dict):
                walk(name + "_", value)
            else:
                _known(name, f"config file {path}")
                flat[name] = value

    walk("", data)
    return flat


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a raw value (a string from env/flags, or a TOML value) into the field's type."""
    kind = _field_type(name)
    where = f"setting {name} ({source.replace(':', ' ', 1)})"
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ConfigError(f"{where}: {value!r} is not a boolean (true/false)")
    if kind in (int, float):
        if isinstance(value, bool) or (isinstance(value, float) and kind is int):
            raise ConfigError(f"{where}: {value!r} is not {_article(kind)}")
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not {_article(kind)}") from None
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(i.strip() for i in items if i.strip())
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a string")
    return value


def _article(kind: type) -> str:
    return "an integer" if kind is int else "a number"


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _field_type(name: str) -> type:
    hint = _type_hints()[name]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint  # type: ignore[no-any-return]
