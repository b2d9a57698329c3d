"""`novajobs dlq list|replay|purge`: look at and act on ``dlq:{stream}``.

Thin over novajobs/streams/queues.py: replay moves entries back atomically (Lua),
purge of "all" trims up to the newest entry present when it starts, so entries
dead-lettered meanwhile are not deleted unseen.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from, with_options
from novajobs.errors import ExitCode, UsageError

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings

_ENTRY_ID = re.compile(r"[0-9]+(-[0-9]+)?")


def register(group: click.Group) -> None:
    group.add_command(dlq)


@click.group()
def dlq() -> None:
    """Dead-letter queues of drain-stream: list, replay or purge dlq:{STREAM}.

    Example:

    \b
      novajobs dlq list
      novajobs dlq list stream:audit:log -n 5 --json
      novajobs dlq replay stream:audit:log --all
    """


def _redis(settings: Settings) -> redis.Redis:
    from novajobs.connections import Connections
    from novajobs.output import JobLog

    return Connections(settings, JobLog()).redis


def _ids(ids: Sequence[str], all_: bool, verb: str) -> list[str]:
    if bool(ids) == all_:
        raise UsageError(f"dlq {verb}: give entry IDs or --all (not both)")
    bad = [i for i in ids if not _ENTRY_ID.fullmatch(i)]
    if bad:
        raise UsageError(f"dlq {verb}: {bad[0]!r} is not a stream entry id (e.g. 1700000000000-0)")
    return list(ids)


@dlq.command("list")
@click.argument("stream", required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, help="Entries to show.")
@click.option("--from", "start", default="-", metavar="ID", help="First entry id to show.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def list_(stream: str | None, limit: int, start: str, as_json: bool, **kw: Any) -> None:
    """Show the oldest dead letters of STREAM (error, attempts, fields), or, without
    STREAM, how many each configured stream has in its DLQ and retry set.

    Example:

    \b
      novajobs dlq list stream:audit:log -n 50
    """
    import time
    from dataclasses import asdict

    from novajobs.output import print_json, print_line, print_table
    from novajobs.streams.handlers import plan_streams
    from novajobs.streams.queues import dlq_length, list_dlq, pending_retries

    settings = settings_from(kw)
    r, prefix = _redis(settings), settings.redis_prefix
    if stream is None:
        rows = []
        for plan in plan_streams(settings):
            due, later = pending_retries(r, prefix, plan.name, time.time())
            rows.append({"stream": plan.name, "dead_letters": dlq_length(r, prefix, plan.name),
                         "retries_due": due, "retries_later": later})
        if as_json:
            print_json(rows)
        else:
            print_table("dead-letter queues", list(rows[0]) if rows else ["stream"],
                        [list(row.values()) for row in rows])
        return
    letters = list_dlq(r, prefix, stream, limit, start)
    if as_json:
        print_json([asdict(letter) for letter in letters])
    elif not letters:
        print_line(f"dlq:{stream} is empty")
    else:
        print_table(
            f"dlq:{stream} ({dlq_length(r, prefix, stream)} entries)",
            ("id", "first id", "attempts", "failed at", "error", "fields"),
            [(d.id, d.first_id, d.attempts, d.failed_at, d.error, d.fields) for d in letters],
        )


@dlq.command()
@click.argument("stream")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Replay every entry in the DLQ now.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def replay(stream: str, ids: tuple[str, ...], all_: bool, as_json: bool, **kw: Any) -> int:
    """Put dead letters back into STREAM (original fields and first id; the attempt count
    starts over), each moved atomically.

    Example:

    \b
      novajobs dlq replay stream:audit:log 1700000000000-0
      novajobs dlq replay stream:audit:log --all
    """
    from dataclasses import asdict

    from novajobs.output import print_json, print_line
    from novajobs.streams.queues import replay_dlq

    wanted = _ids(ids, all_, "replay")
    settings = settings_from(kw)
    result = replay_dlq(_redis(settings), settings.redis_prefix, stream, wanted)
    if as_json:
        print_json(asdict(result))
    else:
        print_line(f"replayed {result.replayed} entries into {stream}"
                   + (f"; {result.missing} not found" if result.missing else "")
                   + (f"; {result.unreplayable} without fields kept" if result.unreplayable
                      else ""))
    return int(ExitCode.FAILED if result.missing or result.unreplayable else ExitCode.OK)


@dlq.command()
@click.argument("stream")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Delete every entry in the DLQ now.")
@click.option("--yes", is_flag=True, help="Do not ask (required when not on a terminal).")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def purge(stream: str, ids: tuple[str, ...], all_: bool, yes: bool, as_json: bool,
          **kw: Any) -> None:
    """Delete dead letters of STREAM for good.

    Example:

    \b
      novajobs dlq purge stream:audit:log --all --yes
    """
    from novajobs.output import print_json, print_line
    from novajobs.streams.queues import dlq_length, purge_dlq

    wanted = _ids(ids, all_, "purge")
    settings = settings_from(kw)
    r = _redis(settings)
    what = f"{len(wanted)} entries" if wanted else (
        f"all {dlq_length(r, settings.redis_prefix, stream)} entries")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"dlq purge would delete {what} of dlq:{stream}; add --yes")
        click.confirm(f"Delete {what} of dlq:{stream}?", abort=True)
    deleted = purge_dlq(r, settings.redis_prefix, stream, wanted)
    if as_json:
        print_json({"deleted": deleted})
    else:
        print_line(f"deleted {deleted} entries of dlq:{stream}")
