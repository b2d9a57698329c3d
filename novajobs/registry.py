"""The one list of jobs. It feeds the CLI, `novajobs schedule` and the deployment files.

Importing this module must stay cheap (no drivers): cron starts novajobs every minute.
Adding a job = one module under ``novajobs/jobs/`` with a ``run(ctx, **params)``
function + one ``JobSpec`` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novajobs.errors import UsageError

if TYPE_CHECKING:
    from novajobs.context import JobContext, Result

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
    schedule: str  # default cron expression (5 fields) in the configured time zone
    timeout_sec: int
    stores: tuple[str, ...]
    lock_ttl_sec: int = 60
    shardable: bool = False
    destructive: bool = False  # takes --dry-run
    options: tuple[Option, ...] = ()

    def load(self) -> JobFunc:
        func: JobFunc = importlib.import_module(self.module).run
        return func


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
        stores=("clickhouse", "redis"),
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
        stores=("clickhouse", "redis"),
        shardable=True,
        options=(
            Option("--user", "refresh only this user id (active or not)", int,
                   metavar="ID"),
            Option("--batch-size", "active users this run; 0 = all", int,
                   setting="suggestion_batch_size"),
        ),
    ),
)


def get_job(name: str) -> JobSpec:
    for spec in JOBS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in JOBS)
    raise UsageError(f"unknown job {name!r}; jobs: {known}")

