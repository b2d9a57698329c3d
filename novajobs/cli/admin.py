"""Commands around the jobs: status, history, locks, schedule, config."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click

from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from, with_options
from novajobs.conversions import text
from novajobs.errors import ExitCode, UsageError
from novajobs.registry import JOBS, get_job

# Every command below imports what it needs when it runs: `novajobs --help` stays cheap.

if TYPE_CHECKING:

    pass


def register(group: click.Group) -> None:
    for command in (status, history, locks, schedule, config):
        group.add_command(command)


@click.command()
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def status(as_json: bool, **kw: Any) -> None:
    """Show every job (and shard): its last run, how long ago, and whether it can be
    trusted: running (heartbeat seen), stale (died without a word), never run.

    One line per job, cut to the terminal's width; `history JOB` has the full detail.
    The JSON schema is documented under "Run records".

    Example:

    \b
      novajobs status --json | jq '.[] | select(.state == "stale" or .outcome == "failed")'
    """
    import shutil

    from novajobs.connections import redis_client
    from novajobs.jobstatus import job_statuses
    from novajobs.output import print_json, print_line
    from novajobs.textview import status_lines

    settings = settings_from(kw)
    rows = job_statuses(redis_client(settings), settings.redis_prefix, settings.run_heartbeat_sec)
    if as_json:
        print_json(rows)
        return
    width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
    for line in status_lines(rows, width):
        print_line(line)


@click.command()
@click.argument("job")
@click.option("--shard", metavar="I/N", help="The history of one shard of a sharded job.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, help="Entries to show.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def history(job: str, shard: str | None, limit: int, as_json: bool, **kw: Any) -> None:
    """Show the latest runs of JOB in full, newest first (skips in a row: one entry).

    Example:

    \b
      novajobs history refresh-trending -n 5
    """
    from novajobs.connections import redis_client
    from novajobs.output import print_json, print_line
    from novajobs.records import read_history
    from novajobs.textview import history_lines

    settings = settings_from(kw)
    unit = unit_name(job, shard)
    rows = read_history(redis_client(settings), settings.redis_prefix, unit, limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        print_line(f"{unit} has no recorded runs")
    for line in history_lines(rows, settings.timezone):
        print_line(line)


@click.group(invoke_without_command=True)
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
@click.pass_context
def locks(ctx: click.Context, /, as_json: bool, **kw: Any) -> None:
    """List the job locks held now (job, host, pid, age, TTL).

    Example:

    \b
      novajobs locks
      novajobs locks release refresh-suggestions --force
    """
    from novajobs.connections import redis_client
    if ctx.invoked_subcommand is not None:
        return
    from novajobs.lock import read_holder
    from novajobs.output import print_json, print_line, print_table

    settings = settings_from(kw)
    r = redis_client(settings)
    prefix = f"{settings.redis_prefix}job:lock:"
    holders = [
        h for key in r.scan_iter(match=prefix + "*", count=500) if (h := read_holder(r, key))
    ]
    rows = [{"job": text(h.key)[len(prefix) :], **h.summary()} for h in holders]
    if as_json:
        print_json(rows)
    elif not rows:
        print_line("no locks held")
    else:
        print_table("locks", list(rows[0]), [list(row.values()) for row in rows])


@locks.command("release")
@click.argument("lock")
@click.option(
    "--force", is_flag=True, help="Release without asking (required when not a terminal)."
)
@with_options(*SETTINGS_OPTIONS)
def release(lock: str, force: bool, **kw: Any) -> int:
    """Release LOCK, held by another run (e.g. on a host that died).

    LOCK is a name as `novajobs locks` lists it: a job, or job:scope for a shard
    (gc-files:2-of-3) or a stream consumer (drain-stream:pod-7). The run that held it
    finds out at its next renewal and stops before its next write.

    Example:

    \b
      novajobs locks release refresh-suggestions --force
    """
    from novajobs.connections import redis_client
    from novajobs.lock import force_release, lock_key, read_holder
    from novajobs.output import print_line

    job, _, scope = lock.partition(":")
    settings = settings_from(kw)
    r = redis_client(settings)
    key = lock_key(settings.redis_prefix, get_job(job).name, scope or None)
    holder = read_holder(r, key)
    if holder is None:
        print_line(f"{key} is not held")
        return int(ExitCode.OK)
    if not force:
        if not sys.stdin.isatty():
            raise UsageError(f"{key} is held by {holder.describe()}; add --force to release it")
        click.confirm(f"{key} is held by {holder.describe()}. Release it?", abort=True)
    if force_release(r, holder):
        print_line(f"released {key} (was held by {holder.describe()})")
        return int(ExitCode.OK)
    print_line(f"{key} changed hands meanwhile; nothing released")
    return int(ExitCode.FAILED)


@click.command()
@click.option("-n", "--count", type=click.IntRange(min=1), default=3, help="Next runs to show.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def schedule(count: int, as_json: bool, **kw: Any) -> None:
    """Show every job's schedule and its next run times (in the configured time zone).

    Example:

    \b
      novajobs schedule -n 5
    """
    from cronsim import CronSim

    from novajobs.output import print_json, print_table

    settings = settings_from(kw)
    now = datetime.now(ZoneInfo(settings.timezone))
    rows: list[dict[str, Any]] = []
    for spec in JOBS:
        it = CronSim(spec.schedule, now)
        rows.append(
            {
                "job": spec.name,
                "schedule": spec.schedule,
                "timezone": settings.timezone,
                "next_runs": [next(it).isoformat(timespec="minutes") for _ in range(count)],
                "timeout_sec": spec.timeout_sec,
                "lock_ttl_sec": spec.lock_ttl_sec,
                "sharded": spec.shardable,
            }
        )
    if as_json:
        print_json(rows)
        return
    print_table(
        f"schedule ({settings.timezone})",
        ("job", "cron", "next runs", "timeout", "lock TTL", "sharded"),
        [
            (
                r["job"],
                r["schedule"],
                ", ".join(r["next_runs"]),
                f"{r['timeout_sec']} s",
                f"{r['lock_ttl_sec']} s",
                "yes" if r["sharded"] else "",
            )
            for r in rows
        ],
    )


@click.command()
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def config(as_json: bool, **kw: Any) -> None:
    """Show the effective settings, where each came from, and their environment names.

    Secrets (passwords in URLs, keys) are redacted.

    Example:

    \b
      REDIS_URL=redis://cache:6379/1 novajobs config --config /etc/novajobs.toml
    """
    from novajobs.output import print_json, print_table
    from novajobs.settings import env_names, setting_names

    settings = settings_from(kw)
    rows = [
        {
            "name": name,
            "value": settings.redacted(name),
            "source": settings.sources[name],
            "env": env_names(name)[-1],
        }
        for name in setting_names()
    ]
    if as_json:
        print_json(rows)
        return
    print_table("settings", ("name", "value", "source", "env"), [list(r.values()) for r in rows])


def unit_name(job: str, shard: str | None) -> str:
    name = get_job(job).name
    if not shard:
        return name
    from novajobs.context import Shard

    parsed = Shard.parse(shard, completion_index=None, shard_count=0)
    return f"{name}:{parsed.label}"
