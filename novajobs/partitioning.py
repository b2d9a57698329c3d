"""Monthly range partitions: reading a partitioned table from the catalog, and month
bounds in the literal its key needs. Shared by create-partitions (ahead of time) and
archive-partitions / restore-partition (hot/cold migration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    import psycopg

KEY_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")

PARENT_SQL = """
SELECT c.relkind, n.nspname, c.relname, pt.partstrat, pt.partnatts,
       a.attname, a.atttypid::regtype::text AS key_type
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
WHERE c.oid = to_regclass(%(name)s)
"""

PARTITIONS_SQL = """
SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = to_regclass(%(name)s)
"""

# Columns a moved row is copied through (generated columns are recomputed, not copied).
COLUMNS_SQL = """
SELECT attname FROM pg_attribute
WHERE attrelid = to_regclass(%(name)s) AND attnum > 0 AND NOT attisdropped
  AND attgenerated = ''
ORDER BY attnum
"""

@dataclass
class Parent:
    schema: str
    table: str
    key: str
    key_type: str
    partitions: set[str] = field(default_factory=set)  # names in the parent's schema
    default: str | None = None  # the DEFAULT partition's name, if any
    columns: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Month:
    start: date
    end: date

    @property
    def suffix(self) -> str:
        return self.start.strftime("%Y_%m")


class TableProblem(Exception):
    """A configured table is not what create-partitions can work on."""


def months_ahead(today: date, ahead: int) -> list[Month]:
    """The current month and ``ahead`` more."""
    out = []
    year, month = today.year, today.month
    for _ in range(ahead + 1):
        nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
        out.append(Month(date(year, month, 1), date(nyear, nmonth, 1)))
        year, month = nyear, nmonth
    return out


def bound_literal(day: date, key_type: str, tz: str) -> str:
    """A month start as the literal the partition key's type needs."""
    if key_type == "date":
        return day.isoformat()
    if key_type == "timestamp without time zone":
        return f"{day.isoformat()} 00:00:00"
    start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
    return start.isoformat(sep=" ")


def split_name(name: str) -> tuple[str, ...]:
    parts = tuple(name.split("."))
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise TableProblem(f"table {name!r} is not a valid name ([schema.]table)")
    return parts


def inspect_parent(conn: psycopg.Connection[Any], name: str) -> Parent:
    """Look the configured table up and check it is range-partitioned on a timestamp."""
    from psycopg import sql

    quoted = sql.Identifier(*split_name(name)).as_string(conn)
    row = conn.execute(PARENT_SQL, {"name": quoted}).fetchone()
    if row is None:
        raise TableProblem(f"table {name!r} does not exist")
    relkind, schema, table, strategy, natts, key, key_type = row
    if relkind not in ("r", "p"):
        raise TableProblem(f"{name!r} is not a table")
    if relkind == "r":
        raise TableProblem(
            f"table {name!r} is not partitioned (expected PARTITION BY RANGE on a timestamp)"
        )
    if strategy != "r":
        kind = {"l": "LIST", "h": "HASH"}.get(strategy, strategy)
        raise TableProblem(f"table {name!r} is partitioned by {kind}, not by RANGE")
    if natts != 1 or key is None or key_type not in KEY_TYPES:
        raise TableProblem(
            f"table {name!r} is range-partitioned on {key or 'an expression'} "
            f"({key_type or 'several columns'}), not on one timestamp or date column"
        )
    parent = Parent(schema, table, key, key_type)
    qualified = sql.Identifier(schema, table).as_string(conn)
    for part_schema, part, is_default in conn.execute(PARTITIONS_SQL, {"name": qualified}):
        if is_default:
            parent.default = part
        if part_schema == schema:
            parent.partitions.add(part)
    parent.columns = [r[0] for r in conn.execute(COLUMNS_SQL, {"name": qualified})]
    return parent
