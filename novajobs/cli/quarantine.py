"""`novajobs quarantine list|restore|purge`: the objects gc-orphans set aside.

Thin over novajobs/quarantine.py. Restore never overwrites an object that is back at
its key; purge deletes for good and asks first (``--yes`` when not on a terminal).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from, with_options
from novajobs.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.quarantine import Quarantined
    from novajobs.settings import Settings


def register(group: click.Group) -> None:
    group.add_command(quarantine_group)


@click.group("quarantine")
def quarantine_group() -> None:
    """Objects gc-orphans quarantined: list them, put them back, or delete them for good.

    Example:

    \b
      novajobs quarantine list --bucket nova-files --since 2d
      novajobs quarantine restore --bucket nova-files files/ab/cd/abcd1234
      novajobs quarantine purge --older-than 30d --yes
    """


BUCKET = click.Option(["--bucket"], metavar="BUCKET",
                      help="Original bucket (default: every one of orphan_buckets).")
PREFIX = click.Option(["--prefix"], default="", metavar="KEY_PREFIX",
                      help="Only original keys starting with this.")
SINCE = click.Option(["--since"], metavar="TIME",
                     help="Quarantined at or after: ISO time or age (2h, 3d).")
UNTIL = click.Option(["--until"], metavar="TIME",
                     help="Quarantined before: ISO time or age.")
DRY_RUN = click.Option(["--dry-run"], is_flag=True, help="Say what would be done; change nothing.")


def _context(settings: Settings) -> JobContext:
    from novajobs.context import JobContext

    return JobContext(settings, "quarantine")


def _buckets(settings: Settings, bucket: str | None) -> list[str]:
    if bucket:
        return [bucket]
    if not settings.orphan_buckets:
        raise UsageError("give --bucket, or set orphan_buckets")
    return list(settings.orphan_buckets)


def _window(settings: Settings, since: str | None, until: str | None,
            ) -> tuple[datetime | None, datetime | None]:
    from novajobs.dates import parse_instant

    now = datetime.now(UTC)
    return (parse_instant(since, "--since", settings.timezone, now) if since else None,
            parse_instant(until, "--until", settings.timezone, now) if until else None)


@quarantine_group.command("list")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=50, help="Objects to show.")
@with_options(BUCKET, PREFIX, SINCE, UNTIL, *SETTINGS_OPTIONS, JSON_OPTION)
def list_(bucket: str | None, prefix: str, since: str | None, until: str | None, limit: int,
          as_json: bool, **kw: Any) -> None:
    """Show quarantined objects (original bucket and key, size, when), oldest key first.

    Example:

    \b
      novajobs quarantine list --bucket nova-files --prefix files/ab/ -n 100 --json
    """
    from itertools import islice

    from novajobs.output import print_json, print_line, print_table
    from novajobs.quarantine import listing

    settings = settings_from(kw)
    start, end = _window(settings, since, until)
    with _context(settings) as ctx:
        items = list(islice(listing(ctx, _buckets(settings, bucket), prefix, start, end),
                            limit))
    if as_json:
        print_json([q.as_dict() for q in items])
    elif not items:
        print_line("the quarantine holds no such object")
    else:
        print_table(f"quarantined objects (first {limit})",
                    ("bucket", "key", "bytes", "quarantined at"),
                    [(q.bucket, q.key, q.size, q.at.isoformat(timespec="seconds"))
                     for q in items])


@quarantine_group.command()
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@with_options(BUCKET, PREFIX, SINCE, UNTIL, DRY_RUN, *SETTINGS_OPTIONS, JSON_OPTION)
def restore(keys: tuple[str, ...], bucket: str | None, prefix: str, since: str | None,
            until: str | None, dry_run: bool, as_json: bool, **kw: Any) -> int:
    """Put quarantined objects back at their keys: the KEYs given, or all matching
    --prefix and/or --since/--until. An object that is at its key again is left as it is
    (the quarantined copy is kept).

    Example:

    \b
      novajobs quarantine restore --bucket nova-files --since 3h
    """
    from novajobs.output import print_json, print_line
    from novajobs.quarantine import listing, move_out

    if not keys and not prefix and not since and not until:
        raise UsageError("quarantine restore: give KEYs, --prefix or --since/--until")
    settings = settings_from(kw)
    start, end = _window(settings, since, until)
    wanted, not_found = set(keys), set(keys)
    counts = {"restored": 0, "exists": 0, "would_restore": 0}
    with _context(settings) as ctx:
        for item in listing(ctx, _buckets(settings, bucket), prefix, start, end):
            if wanted and item.key not in wanted:
                continue
            not_found.discard(item.key)
            outcome = "would_restore" if dry_run else move_out(ctx, item)
            counts[outcome] += 1
            if outcome == "exists":
                click.echo(f"novajobs: s3://{item.bucket}/{item.key} exists again; its "
                           "quarantined copy is kept", err=True)
    counts["not_found"] = len(not_found)
    if as_json:
        print_json(counts)
    else:
        print_line(", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))
    return int(ExitCode.FAILED if counts["exists"] or not_found else ExitCode.OK)


@quarantine_group.command()
@click.option("--older-than", metavar="DURATION",
              help="Quarantined longer ago than this (default: quarantine_retention).")
@click.option("--yes", is_flag=True, help="Do not ask (required when not on a terminal).")
@with_options(BUCKET, PREFIX, DRY_RUN, *SETTINGS_OPTIONS, JSON_OPTION)
def purge(older_than: str | None, yes: bool, bucket: str | None, prefix: str, dry_run: bool,
          as_json: bool, **kw: Any) -> int:
    """Delete quarantined objects for good once they have been there longer than the
    retention (gc-orphans also does this at the end of each run).

    Example:

    \b
      novajobs quarantine purge --older-than 30d --dry-run
    """
    from novajobs.dates import DURATION_HELP, parse_duration
    from novajobs.output import print_json, print_line
    from novajobs.quarantine import listing
    from novajobs.quarantine import purge as purge_items

    settings = settings_from(kw)
    age = older_than or settings.quarantine_retention
    try:
        seconds = parse_duration(age)
    except ValueError:
        raise UsageError(f"--older-than {age!r}: expected {DURATION_HELP}") from None
    cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
    with _context(settings) as ctx:
        items: list[Quarantined] = list(listing(ctx, _buckets(settings, bucket), prefix,
                                                until=cutoff))
        size = sum(q.size for q in items)
        if dry_run:
            result = {"would_delete": len(items), "bytes": size}
        else:
            if not yes:
                if not sys.stdin.isatty():
                    raise UsageError(f"quarantine purge would delete {len(items)} objects "
                                     f"({size} bytes) quarantined before {cutoff:%F %T}; "
                                     "add --yes")
                click.confirm(f"Delete {len(items)} quarantined objects for good?", abort=True)
            deleted, failed = purge_items(ctx, items)
            result = {"deleted": deleted, "failed": failed, "bytes": size}
    if as_json:
        print_json(result)
    else:
        print_line(", ".join(f"{what.replace('_', ' ')} {n}" for what, n in result.items()))
    return int(ExitCode.FAILED if result.get("failed") else ExitCode.OK)
