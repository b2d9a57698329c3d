"""`novajobs init-db`: create the tables novajobs owns (novajobs/schema.py), idempotently;
`novajobs migrate-keys`: rename the Redis keys of an older novajobs."""

from __future__ import annotations

from typing import Any

import click

from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from, with_options


def register(group: click.Group) -> None:
    group.add_command(init_db)
    group.add_command(migrate_keys)


@click.command("init-db")
@click.option("--dry-run", is_flag=True, help="Print the DDL instead of running it.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def init_db(dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Create the tables novajobs owns (daily_stats, group_activity_rank, ...) if missing.

    Safe to run any time and from several places at once; existing tables and their
    rows are left alone. Tables of other services are never created.

    Example:

    \b
      DATABASE_URL=postgresql://app@db/app novajobs init-db
    """
    from novajobs import schema
    from novajobs.output import print_json, print_line, print_table

    settings = settings_from(kw)
    if dry_run:
        for ddl in schema.OWNED_TABLES.values():
            print_line(ddl.strip() + ";")
        return
    conn = _connect(settings)
    try:
        conn.autocommit = True
        missing = set(schema.missing_tables(conn, list(schema.OWNED_TABLES)))
        schema.ensure_tables(conn)
        still = set(schema.missing_tables(conn, list(schema.OWNED_TABLES)))
    finally:
        conn.close()
    rows = [
        {"table": name, "action": "created" if name in missing - still else "exists"}
        for name in schema.OWNED_TABLES
    ]
    if as_json:
        print_json(rows)
    else:
        print_table("owned tables", ("table", "action"), [list(r.values()) for r in rows])


def _connect(settings: Any) -> Any:
    from novajobs.connections import Connections
    from novajobs.output import JobLog

    return Connections(settings, JobLog(command="init-db")).pg


@click.command("migrate-keys")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def migrate_keys(as_json: bool, **kw: Any) -> None:
    """Rename the Redis keys an older novajobs wrote to the names this version uses.

    Run records moved to hash-tagged names (job:status:{unit}, job:history:{unit}) so
    that they work on a Redis Cluster. Run it once after upgrading, on the single Redis
    the older version used (before moving to a cluster). Safe to run again.

    Example:

    \b
      REDIS_URL=redis://cache:6379/0 novajobs migrate-keys
    """
    from novajobs.connections import Connections
    from novajobs.output import JobLog, print_json, print_line
    from novajobs.records import migrate_legacy_keys

    settings = settings_from(kw)
    r = Connections(settings, JobLog(command="migrate-keys")).redis
    units = migrate_legacy_keys(r, settings.redis_prefix, settings.history_size)
    if as_json:
        print_json({"run_records": units})
    elif units:
        print_line(f"moved the run records of {len(units)} units: {', '.join(units)}")
    else:
        print_line("nothing to migrate")
