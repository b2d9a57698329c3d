"""Tables novajobs itself owns, created idempotently by `novajobs init-db`.

Tables other services own (users, chat_messages, file_metadata, ...) are only read;
their DDL lives with the demo data (scripts/demo_data.py), never here.
"""

from __future__ import annotations

from typing import Any

# name -> idempotent DDL (CREATE ... IF NOT EXISTS). Order matters: dependencies first.
OWNED_TABLES: dict[str, str] = {}


def ensure_tables(conn: Any, names: list[str] | None = None) -> list[str]:
    """Create the owned tables that are missing (all, or ``names``) in one transaction.

    Returns the names that were asked for."""
    wanted = list(OWNED_TABLES) if names is None else names
    with conn.transaction():
        for name in wanted:
            conn.execute(OWNED_TABLES[name])
    return wanted
