"""`novajobs dlq list|show|replay|purge`: look at and act on the dead letters of a stream.

Thin over novajobs/streams/dlq.py. Replay and purge take entry IDs, ``--all``, or
filters (error text or regex, time range, attempts), which narrow ``--all`` too; both
have ``--dry-run``; replay has ``--rate`` for a live system. Arguments are checked
before any connection.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from, with_options
from novajobs.errors import ExitCode, UsageError

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings
    from novajobs.streams.dlq import DeadLetter, Done, Selection
    from novajobs.streams.keys import StreamKeys

_COLUMNS = ("id", "first id", "attempts", "failed at", "error", "fields")


def register(group: click.Group) -> None:
    group.add_command(dlq)


@click.group()
def dlq() -> None:
    """Dead letters of drain-stream: list, show, replay or purge dlq:{STREAM}.

    Example:

    \b
      novajobs dlq list
      novajobs dlq show stream:audit:log 1700000000000-0
      novajobs dlq replay stream:audit:log --error timeout --since 2h --dry-run
    """


def _connect(settings: Settings, stream: str) -> tuple[redis.Redis, StreamKeys]:
    """The client and the stream's keys, legacy keys migrated (see streams/keys.py)."""
    from novajobs.connections import redis_client
    from novajobs.streams.keys import migrate_legacy, stream_keys

    keys = stream_keys(settings.redis_prefix, stream)
    r = redis_client(settings)
    migrate_legacy(r, keys)
    return r, keys


def _letter_row(d: DeadLetter) -> tuple[Any, ...]:
    return d.id, d.first_id, d.attempts, d.failed_at, d.error, d.fields


def _letter_json(d: DeadLetter) -> dict[str, Any]:
    return d.summary()


# -- list, show -------------------------------------------------------------------------
@dlq.command("list")
@click.argument("stream", required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, help="Entries to show.")
@click.option("--from", "start", default="-", metavar="ID", help="First entry id to show.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def list_(stream: str | None, limit: int, start: str, as_json: bool, **kw: Any) -> None:
    """Show the oldest dead letters of STREAM, or, without STREAM, each configured
    stream's figures: length, lag, pending, oldest pending age, retry set, DLQ.

    Example:

    \b
      novajobs dlq list stream:audit:log -n 50
    """
    from novajobs.output import print_json, print_line, print_table
    from novajobs.streams import dlq as letters_of

    if start != "-":
        _check_ids([start], "list")
    settings = settings_from(kw)
    if stream is None:
        _list_streams(settings, as_json)
        return
    r, keys = _connect(settings, stream)
    letters = letters_of.read(r, keys, start, "+", limit)
    if as_json:
        print_json([_letter_json(d) for d in letters])
    elif not letters:
        print_line(f"the DLQ of {stream} is empty")
    else:
        print_table(f"dead letters of {stream} ({letters_of.length(r, keys)} entries)",
                    _COLUMNS, [_letter_row(d) for d in letters])


def _list_streams(settings: Settings, as_json: bool) -> None:
    import time

    from novajobs.output import print_json, print_table
    from novajobs.streams.handlers import plan_streams
    from novajobs.streams.lag import measure

    rows = []
    for plan in plan_streams(settings):
        r, keys = _connect(settings, plan.name)
        lag = measure(r, keys, settings.stream_group, time.time())
        rows.append({"stream": plan.name, **lag.figures()})
    if as_json:
        print_json(rows)
        return
    columns = ["stream", "length", "lag", "pending", "oldest_pending_age_sec", "retry_size",
               "retry_next_due", "dlq_size", "dlq_oldest_age_sec", "dlq_dropped_total"]
    print_table("streams", columns, [[row.get(c) for c in columns] for row in rows])


@dlq.command()
@click.argument("stream")
@click.argument("entry_id", metavar="ID")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def show(stream: str, entry_id: str, as_json: bool, **kw: Any) -> int:
    """Print one dead letter of STREAM whole: its meta and every field.

    Example:

    \b
      novajobs dlq show stream:audit:log 1700000000000-0 --json
    """
    from novajobs.output import print_json, print_line, print_table
    from novajobs.streams import dlq as letters_of

    _check_ids([entry_id], "show")
    r, keys = _connect(settings_from(kw), stream)
    letter = letters_of.show(r, keys, entry_id)
    if letter is None:
        print_line(f"no dead letter {entry_id} in the DLQ of {stream}")
        return int(ExitCode.FAILED)
    if as_json:
        print_json(_letter_json(letter))
    else:
        rows = [(k, v) for k, v in _letter_json(letter).items() if k != "fields"]
        print_table(f"dead letter {entry_id} of {stream}", ("field", "value"),
                    rows + [(f"field {k}", v) for k, v in letter.fields.items()])
    return int(ExitCode.OK)


# -- replay, purge ------------------------------------------------------------------------
def _selection_options(func: Any) -> Any:
    options = [
        click.argument("ids", nargs=-1, metavar="[ID]..."),
        click.option("--all", "all_", is_flag=True, help="Every entry in the DLQ now "
                     "(narrowed by the filters)."),
        click.option("--error", "error", metavar="TEXT", help="Only errors containing TEXT."),
        click.option("--error-regex", metavar="REGEX", help="Only errors matching REGEX."),
        click.option("--since", metavar="WHEN", help="Dead-lettered at or after WHEN: an ISO "
                     "time (UTC unless it says) or a duration ago (2h, 7d)."),
        click.option("--until", metavar="WHEN", help="Dead-lettered before WHEN."),
        click.option("--min-attempts", type=click.IntRange(min=0), help="At least N attempts."),
        click.option("--max-attempts", type=click.IntRange(min=0), help="At most N attempts."),
        click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _selection(verb: str, **given: Any) -> Selection:
    from novajobs.streams.dlq import parse_selection

    return parse_selection(verb, **given)


@dlq.command()
@click.argument("stream")
@_selection_options
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="N",
              help="At most N entries a second (replaying into a live system).")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def replay(stream: str, rate: float | None, dry_run: bool, as_json: bool, **kw: Any) -> int:
    """Put dead letters back into STREAM (original fields and first id; the attempt count
    starts over), each moved atomically. Dead letters whose first id is older than the
    dedupe retention are refused (could be written twice).

    Example:

    \b
      novajobs dlq replay stream:audit:log 1700000000000-0
      novajobs dlq replay stream:audit:log --all --error-regex 'timeout|refused' --rate 100
    """
    import time

    from novajobs.streams.dlq import oldest_replayable_ms, replay_selected

    sel = _selection("replay", **_pop_selection(kw))
    settings = settings_from(kw)
    r, keys = _connect(settings, stream)
    done = replay_selected(r, keys, sel, oldest_ms=oldest_replayable_ms(settings, time.time()),
                           dry_run=dry_run, rate=rate)
    verb = "would replay" if dry_run else "replayed"
    _report(done, f"{verb} {len(done.letters) if dry_run else done.moved} entries into "
            f"{stream}", as_json, dry_run)
    return int(ExitCode.FAILED if done.missing or done.unreplayable or done.too_old
               else ExitCode.OK)


@dlq.command()
@click.argument("stream")
@_selection_options
@click.option("--yes", is_flag=True, help="Do not ask (required when not on a terminal).")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def purge(stream: str, yes: bool, dry_run: bool, as_json: bool, **kw: Any) -> int:
    """Delete dead letters of STREAM for good.

    Example:

    \b
      novajobs dlq purge stream:audit:log --all --yes
      novajobs dlq purge stream:audit:log --until 7d --error 'lacks field' --dry-run
    """
    from novajobs.streams.dlq import purge_selected

    sel = _selection("purge", **_pop_selection(kw))
    settings = settings_from(kw)
    r, keys = _connect(settings, stream)
    if not (yes or dry_run):
        what = f"{len(sel.ids)} entries" if sel.ids else "the selected entries"
        if not sys.stdin.isatty():
            raise UsageError(f"dlq purge would delete {what} of the DLQ of {stream}; add --yes")
        click.confirm(f"Delete {what} of the DLQ of {stream}?", abort=True)
    done = purge_selected(r, keys, sel, dry_run=dry_run)
    count = len(done.letters) if dry_run else done.moved
    _report(done, f"{'would delete' if dry_run else 'deleted'} {count} entries of the DLQ of "
            f"{stream}", as_json, dry_run)
    return int(ExitCode.FAILED if done.missing else ExitCode.OK)


def _report(done: Done, text: str, as_json: bool, dry_run: bool) -> None:
    from novajobs.output import print_json, print_line, print_table

    counts = {"matched": done.matched, "moved": done.moved, "missing": done.missing,
              "unreplayable": done.unreplayable, "too_old": done.too_old}
    if as_json:
        print_json({**counts, "dry_run": dry_run,
                    "entries": [_letter_json(d) for d in done.letters]})
        return
    if dry_run and done.letters:
        print_table("would move", _COLUMNS, [_letter_row(d) for d in done.letters])
    notes = [f"{n} {name.replace('_', ' ')}" for name, n in counts.items()
             if n and name in ("missing", "unreplayable", "too_old")]
    print_line(text + (f" ({', '.join(notes)})" if notes else ""))


def _pop_selection(kw: dict[str, Any]) -> dict[str, Any]:
    names = ("ids", "all_", "error", "error_regex", "since", "until", "min_attempts",
             "max_attempts")
    return {name: kw.pop(name) for name in names}


def _check_ids(ids: Sequence[str], verb: str) -> None:
    from novajobs.streams.dlq import check_ids

    check_ids(ids, verb)
