"""create-partitions: monthly range partitions, made ahead of time (docs/jobs.md).

For each configured table, the partitions ``{table}_{yyyy_mm}`` from the current month
through ``partition_months_ahead`` months ahead must exist, bounded by month starts in
``partition_timezone``. Several months ahead, like pg_partman's premake, so one failed
night is harmless.

- Identifiers go through ``psycopg.sql`` only; a table name from the config is looked up
  as one quoted identifier, so ``x; DROP TABLE users`` is just a table that does not exist.
- A table that is missing or not range-partitioned on one timestamp/date column is one
  clear error line; the other tables are still handled, and the run ends with exit 78.
- Rows of a new month already sitting in the DEFAULT partition make the CREATE fail; we
  count them first and say so (exit 1), or with ``--move-default-rows`` move them into the
  new partition in the same transaction. The default partition itself is never dropped.
- Each partition is its own short transaction with ``lock_timeout`` set. Two runs at
  once (``--no-lock``) both succeed: losing the CREATE race counts as "exists".
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from novajobs.context import JobContext, Result
from novajobs.errors import ConfigError, JobFailed, Outcome, UsageError
from novajobs.partitioning import (
    Month,
    Parent,
    TableProblem,
    bound_literal,
    inspect_parent,
    months_ahead,
    split_name,
)
from novajobs.pgfence import pg_transaction
from novajobs.pgsession import pg_session
from novajobs.registry import check_flag

if TYPE_CHECKING:
    import psycopg

    from novajobs.settings import Settings

PG_NAME_MAX = 63  # NAMEDATALEN - 1: PostgreSQL silently truncates longer identifiers

# Is the name taken, and by a partition of this parent? (Read again right before each
# CREATE: a concurrent run may have made it since we listed the partitions.)
NAME_STATE_SQL = """
SELECT to_regclass(%(part)s) IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_inherits
               WHERE inhrelid = to_regclass(%(part)s) AND inhparent = to_regclass(%(parent)s))
"""


def create_ddl(parent: Parent, name: str, lo: str, hi: str) -> Any:
    from psycopg import sql

    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {part} PARTITION OF {parent} FOR VALUES FROM ({lo}) TO ({hi})"
    ).format(
        part=sql.Identifier(parent.schema, name),
        parent=sql.Identifier(parent.schema, parent.table),
        lo=sql.Literal(lo),
        hi=sql.Literal(hi),
    )


def range_filter(parent: Parent, lo: str, hi: str) -> Any:
    from psycopg import sql

    return sql.SQL("{key} >= {lo} AND {key} < {hi}").format(
        key=sql.Identifier(parent.key), lo=sql.Literal(lo), hi=sql.Literal(hi)
    )


def count_default_rows(conn: psycopg.Connection[Any], parent: Parent, lo: str, hi: str) -> int:
    from psycopg import sql

    if parent.default is None:
        return 0
    query = sql.SQL("SELECT count(*) FROM {default} WHERE {cond}").format(
        default=sql.Identifier(parent.schema, parent.default), cond=range_filter(parent, lo, hi)
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def move_default_rows(conn: psycopg.Connection[Any], parent: Parent, lo: str, hi: str) -> int:
    """Inside the caller's transaction: take the month's rows out of the DEFAULT partition
    into a temporary table; the caller creates the partition and calls ``reinsert_rows``."""
    from psycopg import sql

    cols = sql.SQL(", ").join(sql.Identifier(c) for c in parent.columns)
    table = sql.Identifier(parent.schema, parent.table)
    default = sql.Identifier(parent.schema, parent.default or "")
    # Parent first, then default: the order every INSERT takes them in, so no deadlock;
    # nothing can add rows to the month between the DELETE and the CREATE.
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(default))
    conn.execute(
        sql.SQL("CREATE TEMP TABLE novajobs_moved ON COMMIT DROP AS SELECT {} FROM {} LIMIT 0")
        .format(cols, default)
    )
    cur = conn.execute(
        sql.SQL(
            "WITH moved AS (DELETE FROM {default} WHERE {cond} RETURNING {cols}) "
            "INSERT INTO novajobs_moved SELECT {cols} FROM moved"
        ).format(default=default, cond=range_filter(parent, lo, hi), cols=cols)
    )
    return cur.rowcount


def reinsert_rows(conn: psycopg.Connection[Any], parent: Parent) -> None:
    from psycopg import sql

    cols = sql.SQL(", ").join(sql.Identifier(c) for c in parent.columns)
    conn.execute(
        sql.SQL(
            "INSERT INTO {table} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM novajobs_moved"
        ).format(table=sql.Identifier(parent.schema, parent.table), cols=cols)
    )


class PartitionRun:
    """One run over the configured tables; collects what happened for the result."""

    def __init__(self, ctx: JobContext, conn: psycopg.Connection[Any], move: bool) -> None:
        self.ctx, self.conn, self.move = ctx, conn, move
        self.rows: list[dict[str, Any]] = []
        self.ddl: list[str] = []
        self.problems: list[str] = []  # configuration: exit 78
        self.failures: list[str] = []  # data or locks: exit 1
        self.skipped_notice = False
        conn.add_notice_handler(self._on_notice)

    def _on_notice(self, diag: Any) -> None:
        # CREATE TABLE IF NOT EXISTS only says "already exists, skipping" as a NOTICE.
        if diag.sqlstate == "42P07":
            self.skipped_notice = True

    def handle_table(self, name: str, months: list[Month]) -> None:
        try:
            parent = inspect_parent(self.conn, name)
            for month in months:
                self.handle_month(parent, month)
        except TableProblem as exc:
            self.problems.append(str(exc))
            self.ctx.log.error(str(exc), table=name)
            self.ctx.count("tables_misconfigured")

    def handle_month(self, parent: Parent, month: Month) -> None:
        name = f"{parent.table}_{month.suffix}"
        if len(name.encode()) > PG_NAME_MAX:
            raise TableProblem(f"partition name {name!r} is longer than {PG_NAME_MAX} bytes")
        tz = self.ctx.settings.partition_timezone
        lo, hi = (bound_literal(d, parent.key_type, tz) for d in (month.start, month.end))
        row = {"table": parent.label, "partition": name, "from": lo, "to": hi}
        taken, attached = self._name_state(parent, name)
        if name in parent.partitions or attached:
            self._note(row, "exists", "partitions_existing")
            return
        if taken:
            raise TableProblem(f"{parent.schema}.{name} exists but is not a partition of "
                               f"{parent.label}; the month {month.suffix} is not covered")
        statement = create_ddl(parent, name, lo, hi).as_string(self.conn)
        in_default = count_default_rows(self.conn, parent, lo, hi)
        if in_default and not self.move:
            self._conflict(row, parent, in_default)
            return
        if self.ctx.dry_run:
            self.ddl.append(statement)
            action = f"would create (moving {in_default} rows)" if in_default else "would create"
            self._note(row, action, "partitions_would_create", ddl=statement)
            return
        self._create(parent, row, statement, (lo, hi), move=in_default > 0)

    def _create(
        self, parent: Parent, row: dict[str, Any], statement: str, bounds: tuple[str, str],
        *, move: bool,
    ) -> None:
        import psycopg

        name, (lo, hi) = row["partition"], bounds
        self.ctx.checkpoint()
        self.skipped_notice = False
        try:
            with pg_transaction(self.ctx, f"create partition {name}"):
                moved = move_default_rows(self.conn, parent, lo, hi) if move else 0
                self.conn.execute(create_ddl(parent, name, lo, hi))
                if moved:
                    reinsert_rows(self.conn, parent)
        except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            # A concurrent run created it between our check and our CREATE.
            if self._name_state(parent, name)[1]:
                self._note(row, "exists", "partitions_existing")
                return
            raise
        except psycopg.errors.CheckViolation:  # rows reached the default since we counted
            self._conflict(row, parent, count_default_rows(self.conn, parent, lo, hi))
            return
        except psycopg.errors.InvalidObjectDefinition as exc:  # overlaps another partition
            detail = str(exc).splitlines()[0]
            raise TableProblem(f"{parent.label} {name}: {detail}") from None
        except psycopg.errors.LockNotAvailable:
            message = (f"{parent.label} {name}: table lock not granted within "
                       f"{self.ctx.settings.pg_lock_timeout_sec:g} s (a long transaction holds it)")
            self.failures.append(message)
            self.ctx.log.error(message, table=parent.label, partition=name)
            self.ctx.count("partitions_failed")
            return
        if self.skipped_notice:
            self._note(row, "exists", "partitions_existing")
            return
        parent.partitions.add(name)
        self.ddl.append(statement)
        action = f"created (moved {moved} rows from the default)" if moved else "created"
        self._note(row, action, "partitions_created", ddl=statement)
        if moved:
            self.ctx.count("rows_moved", moved)

    def _name_state(self, parent: Parent, name: str) -> tuple[bool, bool]:
        """(a relation has this name, it is a partition of ``parent``)."""
        from psycopg import sql

        params = {
            "part": sql.Identifier(parent.schema, name).as_string(self.conn),
            "parent": sql.Identifier(parent.schema, parent.table).as_string(self.conn),
        }
        row = self.conn.execute(NAME_STATE_SQL, params).fetchone()
        return (bool(row[0]), bool(row[1])) if row else (False, False)

    def _conflict(self, row: dict[str, Any], parent: Parent, count: int) -> None:
        message = (
            f"{parent.label}: the default partition {parent.default} holds {count} rows in "
            f"[{row['from']}, {row['to']}); {row['partition']} not created "
            "(re-run with --move-default-rows to move them into it)"
        )
        self.failures.append(message)
        self._note(row, f"conflict: {count} rows in the default partition", "partitions_blocked")
        self.ctx.log.error(message, table=parent.label, partition=row["partition"], rows=count)

    def _note(self, row: dict[str, Any], action: str, counter: str, **fields: Any) -> None:
        row["action"] = action
        self.rows.append(row)
        self.ctx.count(counter)
        self.ctx.log.info(f"{row['partition']}: {action}", table=row["table"], **fields)


def check_params(
    settings: Settings, table: tuple[str, ...] = (), move_default_rows: bool = False
) -> None:
    if isinstance(table, str) or not all(isinstance(t, str) for t in table):
        raise UsageError(f"--table {table!r}: expected a list of [schema.]table names")
    for name in table:
        try:
            split_name(name)
        except TableProblem as exc:
            raise UsageError(f"--table: {exc}") from None
    check_flag("--move-default-rows", move_default_rows)


def run(ctx: JobContext, table: tuple[str, ...] = (), move_default_rows: bool = False) -> Result:
    s = ctx.settings
    tables = table or s.partition_tables
    today = datetime.now(ZoneInfo(s.partition_timezone)).date()
    months = months_ahead(today, s.partition_months_ahead)
    with pg_session(ctx, lock_timeout_sec=s.pg_lock_timeout_sec) as conn:
        job = PartitionRun(ctx, conn, move_default_rows)
        for name in tables:
            job.handle_table(name, months)
    details = {"listing": "partitions", "partitions": job.rows, "ddl": job.ddl,
               "months": [m.suffix for m in months]}
    if job.problems:  # the other tables were still handled: say what was done
        raise ConfigError("; ".join(job.problems), details)
    if job.failures:
        raise JobFailed("; ".join(job.failures), details)
    created = ctx.counters["partitions_created"]
    if ctx.dry_run:
        return Result(Outcome.DRY_RUN, f"would create {len(job.ddl)} partitions", details)
    outcome = Outcome.SUCCESS if created else Outcome.NOTHING_TO_DO
    existing = ctx.counters["partitions_existing"]
    return Result(outcome, f"{created} partitions created, {existing} already existed", details)
