"""`novajobs init-db`: create the tables novajobs owns (novajobs/schema.py), idempotently."""

from __future__ import annotations

from typing import Any

import click

from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from, with_options


def register(group: click.Group) -> None:
    group.add_command(init_db)


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
