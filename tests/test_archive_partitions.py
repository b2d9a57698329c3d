"""archive-partitions and restore-partition against real PostgreSQL 15 and SeaweedFS:
what is archived, verified, dropped and brought back, what is refused, and every state
a crash can leave behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import threading
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from support import wait_for

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job
from novajobs_dev import demo_data

ROWS_PER_MONTH = 300


def month(offset: int) -> date:
    """The first day of the month ``offset`` months from the current one (UTC)."""
    today = datetime.now(UTC).date()
    index = today.year * 12 + today.month - 1 + offset
    return date(index // 12, index % 12 + 1, 1)


def label(offset: int) -> str:
    return f"{month(offset):%Y-%m}"


def part(table: str, offset: int) -> str:
    return f"{table}_{month(offset):%Y_%m}"


@pytest.fixture
def chat(pg: Any, pg_tables: Any, minio_client: Any, redis_server: None) -> Any:
    """chat_messages and chat_inbox partitioned by month from 6 months ago to now, with
    ROWS_PER_MONTH rows in each month."""
    pg_tables("chat_messages", "chat_inbox")
    for table in ("chat_messages", "chat_inbox"):
        demo_data.create_month_partitions(pg, table, month(-6), month(0))
    for offset in range(-6, 1):
        pg.execute("""
            INSERT INTO chat_messages (id, channel_id, sender_id, seq, created_at)
            SELECT %(base)s + n, n %% 7, n %% 11, n, %(start)s::timestamptz + n * interval '1 hour'
            FROM generate_series(1, %(rows)s) AS n
        """, {"base": (offset + 10) * 10_000, "start": month(offset), "rows": ROWS_PER_MONTH})
    pg.execute("INSERT INTO chat_inbox SELECT sender_id, id, created_at FROM chat_messages")
    return pg


@pytest.fixture
def ap_settings(make_settings: Any, names: dict[str, str]) -> Any:
    def make(**overrides: Any) -> Any:
        values = {"archive_bucket": names["bucket"],
                  "archive_retention_months": "chat_messages=3,chat_inbox=4", **overrides}
        return make_settings(**values)

    return make


def partitions(pg: Any, table: str) -> list[str]:
    return [r[0] for r in pg.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1", [table])]


def table_rows(pg: Any, table: str) -> list[tuple[Any, ...]]:
    return pg.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()


def manifest(minio_client: Any, bucket: str, schema: str, table: str, offset: int) -> Any:
    key = f"partitions/{schema}.{table}/{label(offset)}/manifest.json"
    response = minio_client.get_object(bucket, key)
    try:
        return json.loads(response.read())
    finally:
        response.close()
        response.release_conn()


def body(minio_client: Any, bucket: str, key: str) -> bytes:
    response = minio_client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def keys(minio_client: Any, bucket: str) -> list[str]:
    return sorted(o.object_name for o in minio_client.list_objects(bucket, recursive=True))


def test_old_months_are_archived_verified_dropped_and_restored_identically(
        chat, minio_client, names, ap_settings):
    before = {t: table_rows(chat, t) for t in ("chat_messages", "chat_inbox")}

    rec = run_job("archive-partitions", ap_settings())

    assert rec.outcome is Outcome.SUCCESS and rec.exit_code == 0, rec.error
    # chat_messages keeps 3 months back (-3..0), chat_inbox 4 (-4..0).
    assert partitions(chat, "chat_messages") == [part("chat_messages", o) for o in range(-3, 1)]
    assert partitions(chat, "chat_inbox") == [part("chat_inbox", o) for o in range(-4, 1)]
    assert rec.counters["partitions_archived"] == 5
    assert rec.counters["rows_archived"] == 5 * ROWS_PER_MONTH
    assert chat.execute("SELECT to_regclass(%s)", [part("chat_messages", -6)]).fetchone() == (
        None,)  # dropped, not just detached
    m = manifest(minio_client, names["bucket"], names["schema"], "chat_messages", -6)
    assert (m["rows"], m["month"], m["partition"]) == (ROWS_PER_MONTH, label(-6),
                                                      part("chat_messages", -6))
    assert m["columns"] == [["id", "bigint"], ["channel_id", "bigint"], ["sender_id", "bigint"],
                            ["seq", "bigint"], ["created_at", "timestamp with time zone"]]
    assert len(keys(minio_client, names["bucket"])) == 10  # 5 months x (manifest + data)
    stored = minio_client.stat_object(names["bucket"], m["data_key"])
    data = gzip.decompress(body(minio_client, names["bucket"], m["data_key"]))
    assert (len(data), hashlib.sha256(data).hexdigest(), data.count(b"\n")) == (
        m["raw_bytes"], m["sha256"], m["rows"])
    assert stored.size == m["object_bytes"] and m["key"] == "created_at"
    assert (m["from"], m["to"]) == (f"{month(-6)} 00:00:00+00", f"{month(-5)} 00:00:00+00")

    for table, offset in (("chat_messages", -6), ("chat_messages", -4), ("chat_inbox", -5)):
        back = run_job("restore-partition", ap_settings(), table=table, month=label(offset))
        assert back.outcome is Outcome.SUCCESS, back.error
        assert back.counters == {"rows_restored": ROWS_PER_MONTH}
    assert part("chat_messages", -6) in partitions(chat, "chat_messages")
    restored = table_rows(chat, "chat_messages")
    assert set(restored) <= set(before["chat_messages"])
    gone = {r for r in before["chat_messages"] if r[4] < datetime.combine(
        month(-3), datetime.min.time(), UTC)} - set(restored)
    assert len(gone) == ROWS_PER_MONTH  # only -5 is still archived
    again = run_job("restore-partition", ap_settings(), table="chat_messages", month=label(-6))
    assert again.outcome is Outcome.NOTHING_TO_DO


def make_kinds(pg: Any) -> None:
    """A table with every column type the chat tables use and many more, partitioned by
    month, with 4 rows in month -3 (awkward values, NULLs, infinities, a float that
    needs all its digits)."""
    pg.execute("""
        CREATE TABLE kinds (
            id bigint, small smallint, n int, amount numeric(12, 3), ratio double precision,
            flag boolean, label text, code varchar(8), doc jsonb, raw bytea, tags text[],
            uid uuid, at timestamptz, plain timestamp, day date, span interval
        ) PARTITION BY RANGE (day)""")
    demo_data.create_month_partitions(pg, "kinds", month(-3), month(0))
    pg.execute("""
        INSERT INTO kinds VALUES
        (1, -3, 42, 12345.678, 1e-300, true, E'tab\\there\\nnew line \\\\ back', 'é',
         '{"a": [1, null, "x"], "b": {"c": true}}', '\\x00ff10', ARRAY['x', NULL, 'y,z'],
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2001-02-03 04:05:06.789+05:30',
         '2001-02-03 04:05:06', %(day)s, '1 year 2 days 03:04:05'),
        (2, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         %(day)s, NULL),
        (3, 0, 0, -0.001, '-Infinity', false, '', '', '[]', '', '{}', NULL, 'infinity',
         '-infinity', %(last)s, '-1 microsecond'),
        (4, 1, 1, 0.5, 0.30000000000000004, true, 'x', 'y', '{}', '\\x01', '{a}', NULL,
         '2000-01-01 00:00:00.000001+00', '1999-12-31 23:59:59.999999', %(day)s, '1 mon')
    """, {"day": month(-3), "last": date.fromordinal(month(-2).toordinal() - 1)})


def test_every_column_type_survives_the_round_trip(pg, minio_client, names, redis_server,
                                                   ap_settings):
    make_kinds(pg)
    before = pg.execute("SELECT k::text FROM kinds k ORDER BY id").fetchall()

    rec = run_job("archive-partitions", ap_settings(archive_retention_months="kinds=2"))
    assert rec.counters["partitions_archived"] == 1, rec.error
    assert pg.execute("SELECT count(*) FROM kinds").fetchone() == (0,)
    back = run_job("restore-partition", ap_settings(), table="kinds", month=label(-3))

    assert back.outcome is Outcome.SUCCESS, back.error
    assert pg.execute("SELECT k::text FROM kinds k ORDER BY id").fetchall() == before


def session_options(env: dict[str, str], **gucs: str) -> str:
    """The test's DATABASE_URL with these settings for every session it opens (as a
    role's or database's defaults, or PGTZ, would give)."""
    extra = "".join(f"%20-c{name}%3D{value.replace(' ', '%5C%20')}"
                    for name, value in gucs.items())
    return env["DATABASE_URL"] + extra


def test_the_round_trip_does_not_depend_on_the_sessions_time_zone_or_styles(
        pg, env, minio_client, names, redis_server, ap_settings):
    """Archive and restore run where the sessions print values differently (time zone,
    date and interval styles, float digits, bytea format): the rows come back the same
    and every checksum still matches."""
    make_kinds(pg)
    before = pg.execute("SELECT k::text FROM kinds k ORDER BY id").fetchall()
    archiving = session_options(env, TimeZone="America/New_York", DateStyle="SQL,DMY",
                                extra_float_digits="-3", bytea_output="escape")
    restoring = session_options(env, TimeZone="Asia/Kolkata", DateStyle="German",
                                IntervalStyle="iso_8601", extra_float_digits="0")

    rec = run_job("archive-partitions", ap_settings(archive_retention_months="kinds=2",
                                                    database_url=archiving))
    back = run_job("restore-partition", ap_settings(database_url=restoring), table="kinds",
                   month=label(-3))

    assert rec.counters["partitions_archived"] == 1, rec.error
    assert back.outcome is Outcome.SUCCESS, back.error
    assert pg.execute("SELECT k::text FROM kinds k ORDER BY id").fetchall() == before


def test_dry_run_and_no_retention_change_nothing(chat, minio_client, names, ap_settings):
    before = partitions(chat, "chat_messages")

    dry = run_job("archive-partitions", ap_settings(), RunOptions(dry_run=True))
    off = run_job("archive-partitions", ap_settings(archive_retention_months=""))

    assert dry.outcome is Outcome.DRY_RUN and dry.counters["partitions_would_archive"] == 5
    planned = {(r["partition"], r["action"]) for r in dry.details["partitions"]}
    assert (part("chat_messages", -6), "would detach, archive, drop") in planned
    assert all(r["rows_estimate"] >= 0 and r["bytes"] > 0 for r in dry.details["partitions"])
    assert off.outcome is Outcome.NOTHING_TO_DO and "is not set" in off.message
    assert partitions(chat, "chat_messages") == before and keys(minio_client, names["bucket"]) == []


def test_tables_not_partitioned_by_month_are_refused_and_the_others_go_on(
        chat, minio_client, names, ap_settings):
    chat.execute("CREATE TABLE plain (id bigint, created_at timestamptz)")
    chat.execute("CREATE TABLE listed (kind text, created_at timestamptz) PARTITION BY LIST (kind)")
    chat.execute("CREATE TABLE quarterly (id bigint, created_at timestamptz) "
                 "PARTITION BY RANGE (created_at)")
    chat.execute("CREATE TABLE quarterly_q1 PARTITION OF quarterly "
                 "FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-04-01 00:00+00')")
    retention = "plain=1,listed=1,quarterly=1,chat_messages=3"

    rec = run_job("archive-partitions", ap_settings(archive_retention_months=retention))

    assert rec.outcome is Outcome.CONFIG_ERROR and rec.exit_code == 78
    assert "table 'plain' is not partitioned" in rec.error
    assert "table 'listed' is partitioned by LIST, not by RANGE" in rec.error
    assert (f"table {names['schema']}.quarterly is not range-partitioned by month: "
            f"{names['schema']}.quarterly_q1 is FOR VALUES FROM") in rec.error
    assert rec.counters["tables_refused"] == 3 and rec.counters["partitions_archived"] == 3
    assert partitions(chat, "chat_messages") == [part("chat_messages", o) for o in range(-3, 1)]


def test_a_partition_receiving_writes_is_refused_then_archived_with_its_new_rows(
        chat, env, minio_client, names, ap_settings):
    settings = ap_settings(archive_retention_months="chat_messages=3")
    # A backfill writes straight into an old month's partition and has not committed yet.
    with psycopg.connect(env["DATABASE_URL"]) as writer:
        writer.execute(f"INSERT INTO {part('chat_messages', -5)} VALUES (1, 1, 1, 1, %s)",
                       [datetime.combine(month(-5), datetime.min.time(), UTC)])
        rec = run_job("archive-partitions", settings)
        writer.commit()

    assert rec.outcome is Outcome.SUCCESS and rec.exit_code == 0, rec.error
    actions = {r["partition"]: r["action"] for r in rec.details["partitions"]}
    assert actions[part("chat_messages", -5)].startswith("refused: receiving writes (pid")
    # DETACH CONCURRENTLY of the other months waits for that transaction too.
    assert rec.counters["partitions_busy"] == 3 and "partitions_archived" not in rec.counters
    assert part("chat_messages", -5) in partitions(chat, "chat_messages")

    later = run_job("archive-partitions", settings)
    assert later.counters["partitions_archived"] == 3, later.error
    m = manifest(minio_client, names["bucket"], names["schema"], "chat_messages", -5)
    assert m["rows"] == ROWS_PER_MONTH + 1


def test_a_long_transaction_on_the_parent_leaves_the_detach_to_the_next_run(
        chat, env, minio_client, names, ap_settings):
    settings = ap_settings(archive_retention_months="chat_messages=3", pg_lock_timeout_sec=0.3)
    before = table_rows(chat, "chat_messages")
    with psycopg.connect(env["DATABASE_URL"]) as reader:  # DETACH CONCURRENTLY waits for it
        reader.execute("SELECT count(*) FROM chat_messages")
        rec = run_job("archive-partitions", settings)
        reader.rollback()

    assert rec.outcome is Outcome.SUCCESS and rec.counters["partitions_busy"] == 3, rec.error
    assert "partitions_archived" not in rec.counters
    # The first detach went half-way (pending: the parent no longer shows that month, the
    # table still holds it); the others were not started (one pending detach per parent).
    pending = chat.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                           "c.oid = i.inhrelid WHERE i.inhdetachpending").fetchall()
    assert pending == [(part("chat_messages", -6),)]
    assert chat.execute(f"SELECT count(*) FROM {part('chat_messages', -6)}").fetchone() == (
        ROWS_PER_MONTH,)
    assert len(table_rows(chat, "chat_messages")) == len(before) - ROWS_PER_MONTH
    later = run_job("archive-partitions", settings)
    assert later.counters["partitions_archived"] == 3, later.error
    assert partitions(chat, "chat_messages") == [part("chat_messages", o) for o in range(-3, 1)]


def test_the_default_partition_is_never_archived(chat, minio_client, names, ap_settings):
    chat.execute("CREATE TABLE chat_messages_default PARTITION OF chat_messages DEFAULT")
    chat.execute(f"DROP TABLE {part('chat_messages', -6)}")
    chat.execute("INSERT INTO chat_messages VALUES (7, 1, 1, 1, %s)",
                 [datetime.combine(month(-6), datetime.min.time(), UTC)])

    rec = run_job("archive-partitions", ap_settings(archive_retention_months="chat_messages=3"))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["default_rows_not_archived"] == 1
    assert rec.counters["partitions_archived"] == 2  # -5 and -4, detached without CONCURRENTLY
    assert "chat_messages_default" in partitions(chat, "chat_messages")

    # The docs' way out: move the month's rows into a partition of its own; then it goes.
    lo, hi = (f"{month(o)} 00:00+00" for o in (-6, -5))
    with chat.transaction():
        chat.execute("ALTER TABLE chat_messages DETACH PARTITION chat_messages_default")
        chat.execute(f"CREATE TABLE {part('chat_messages', -6)} PARTITION OF chat_messages "
                     f"FOR VALUES FROM ('{lo}') TO ('{hi}')")
        chat.execute(f"""WITH moved AS (DELETE FROM chat_messages_default
                                        WHERE created_at >= '{lo}' AND created_at < '{hi}'
                                        RETURNING *)
                         INSERT INTO {part('chat_messages', -6)} SELECT * FROM moved""")
        chat.execute("ALTER TABLE chat_messages ATTACH PARTITION chat_messages_default DEFAULT")
    later = run_job("archive-partitions", ap_settings(archive_retention_months="chat_messages=3"))
    assert later.counters["partitions_archived"] == 1, later.error
    assert "default_rows_not_archived" not in later.counters
    assert manifest(minio_client, names["bucket"], names["schema"], "chat_messages", -6)[
        "rows"] == 1


# -- what a crash leaves behind -----------------------------------------------------------


def test_a_run_completes_every_state_a_crash_can_leave(chat, minio_client, names,
                                                       ap_settings, env):
    bucket, schema = names["bucket"], names["schema"]
    retention = {"archive_retention_months": "chat_messages=3"}
    # -6: marked, still attached (died before the detach)
    marker = json.dumps({"parent": f"{schema}.chat_messages", "month": label(-6),
                         "from": "x", "to": "y", "state": "detaching"})
    comment(chat, part("chat_messages", -6), "novajobs-archive " + marker)
    # -5: detached and marked (died before the archive), plus an upload that never finished
    bounds = chat.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = "
                          "%s", [part("chat_messages", -5)]).fetchone()[0]
    lo, hi = bounds.split("'")[1], bounds.split("'")[3]
    chat.execute(f"ALTER TABLE chat_messages DETACH PARTITION {part('chat_messages', -5)}")
    marker5 = json.dumps({"parent": f"{schema}.chat_messages", "month": label(-5),
                          "from": lo, "to": hi, "state": "detaching"})
    comment(chat, part("chat_messages", -5), "novajobs-archive " + marker5)
    stale = f"partitions/{schema}.chat_messages/{label(-5)}/data-deadbeef.copy.gz"
    junk = gzip.compress(b"half an archive\n")
    minio_client.put_object(bucket, stale, io.BytesIO(junk), len(junk))
    # -4: a detach CONCURRENTLY cancelled half-way (pending)
    leave_detach_pending(chat, env, part("chat_messages", -4))

    rec = run_job("archive-partitions", ap_settings(**retention))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["partitions_archived"] == 3
    assert partitions(chat, "chat_messages") == [part("chat_messages", o) for o in range(-3, 1)]
    for offset in (-6, -5, -4):
        assert chat.execute("SELECT to_regclass(%s)", [part("chat_messages", offset)]
                            ).fetchone() == (None,)
        assert manifest(minio_client, bucket, schema, "chat_messages", offset)["rows"] == (
            ROWS_PER_MONTH)
    assert stale not in keys(minio_client, bucket) and rec.counters["stale_objects_removed"] == 1


def comment(pg: Any, table: str, text: str) -> None:
    from psycopg import sql

    pg.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(table),
                                                           sql.Literal(text)))


def leave_detach_pending(pg: Any, env: dict[str, str], name: str) -> None:
    """Start DETACH ... CONCURRENTLY while an old snapshot holds it up, and cancel it:
    the partition is left "detach pending", as after a crash in its second phase."""
    with psycopg.connect(env["DATABASE_URL"]) as reader, \
            psycopg.connect(env["DATABASE_URL"], autocommit=True) as detacher:
        reader.execute("SELECT count(*) FROM chat_messages")  # holds a snapshot and a lock
        pid = detacher.info.backend_pid
        errors: list[Exception] = []

        def detach() -> None:
            try:
                detacher.execute(f"ALTER TABLE chat_messages DETACH PARTITION {name} "
                                 "CONCURRENTLY")
            except psycopg.errors.QueryCanceled as exc:
                errors.append(exc)

        thread = threading.Thread(target=detach)
        thread.start()
        wait_for(lambda: pg.execute("SELECT inhdetachpending FROM pg_inherits WHERE "
                                    "inhrelid = %s::regclass", [name]).fetchone() == (True,),
                 10, "the pending detach")
        pg.execute("SELECT pg_cancel_backend(%s)", [pid])
        thread.join(10)
        reader.rollback()
    assert errors and pg.execute("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = "
                                 "%s::regclass", [name]).fetchone() == (True,)


def test_an_archive_left_undropped_is_checked_not_uploaded_again(chat, minio_client, names,
                                                                 ap_settings):
    kept = run_job("archive-partitions", ap_settings(archive_keep_detached=True,
                                                     archive_retention_months="chat_messages=5"))
    assert kept.counters["partitions_kept_detached"] == 1 and kept.counters["rows_archived"] == (
        ROWS_PER_MONTH)
    name = part("chat_messages", -6)
    assert chat.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone() == (True,)
    assert name not in partitions(chat, "chat_messages")
    objects = keys(minio_client, names["bucket"])

    idle = run_job("archive-partitions", ap_settings(archive_keep_detached=True,
                                                     archive_retention_months="chat_messages=5"))
    drop = run_job("archive-partitions", ap_settings(archive_retention_months="chat_messages=5"))

    assert idle.outcome is Outcome.NOTHING_TO_DO
    assert drop.counters["partitions_archived"] == 1 and "rows_archived" not in drop.counters
    assert drop.details["partitions"][0]["action"] == "checked against its archive, dropped"
    assert keys(minio_client, names["bucket"]) == objects
    assert chat.execute("SELECT to_regclass(%s)", [name]).fetchone() == (None,)


def test_a_kept_detached_table_is_attached_again_by_restore(chat, minio_client, names,
                                                            ap_settings):
    before = table_rows(chat, "chat_messages")
    run_job("archive-partitions", ap_settings(archive_keep_detached=True,
                                              archive_retention_months="chat_messages=5"))

    back = run_job("restore-partition", ap_settings(), table="chat_messages", month=label(-6))

    assert back.outcome is Outcome.SUCCESS, back.error
    assert table_rows(chat, "chat_messages") == before
    marker = chat.execute("SELECT obj_description(%s::regclass, 'pg_class')",
                          [part("chat_messages", -6)]).fetchone()
    assert marker == (None,)


# -- restore's refusals --------------------------------------------------------------------


def test_restore_dry_run_says_what_it_would_do_and_changes_nothing(chat, minio_client,
                                                                  names, ap_settings):
    run_job("archive-partitions", ap_settings(archive_retention_months="chat_messages=4"))
    run_job("archive-partitions", ap_settings(archive_retention_months="chat_messages=3",
                                              archive_keep_detached=True))
    objects = keys(minio_client, names["bucket"])

    copy = run_job("restore-partition", ap_settings(), RunOptions(dry_run=True),
                   table="chat_messages", month=label(-6))
    attach = run_job("restore-partition", ap_settings(), RunOptions(dry_run=True),
                     table="chat_messages", month=label(-4))

    assert copy.outcome is Outcome.DRY_RUN and copy.exit_code == 0, copy.error
    assert copy.message.startswith(f"would restore {ROWS_PER_MONTH} rows from s3://")
    assert attach.message.startswith("would attach the kept detached table")
    assert partitions(chat, "chat_messages") == [part("chat_messages", o) for o in range(-3, 1)]
    assert chat.execute("SELECT to_regclass(%s)", [part("chat_messages", -6)]).fetchone() == (
        None,)
    assert keys(minio_client, names["bucket"]) == objects


def test_restore_refuses_what_it_cannot_do_and_leaves_nothing_behind(chat, minio_client, names,
                                                                     ap_settings, cli):
    run_job("archive-partitions", ap_settings(archive_retention_months="chat_messages=4"))
    name = part("chat_messages", -6)

    no_archive = run_job("restore-partition", ap_settings(), table="chat_messages",
                         month="1999-01")
    bad_month = cli("restore-partition", "chat_messages", "2025-13")
    no_args = cli("restore-partition")
    # A partition covering the month exists again (e.g. made by hand): ATTACH would overlap.
    chat.execute(f"CREATE TABLE other_{name} PARTITION OF chat_messages "
                 f"FOR VALUES FROM ('{month(-6)} 00:00+00') TO ('{month(-5)} 00:00+00')")
    overlap = run_job("restore-partition", ap_settings(), table="chat_messages",
                      month=label(-6))

    assert no_archive.exit_code == 2 and "no archive of" in no_archive.error
    assert bad_month.returncode == 2 and len(bad_month.stderr.strip().splitlines()) == 1
    assert "'2025-13' is not a month (YYYY-MM)" in bad_month.stderr
    assert no_args.returncode == 2 and "needs TABLE and YYYY-MM" in no_args.stderr
    assert overlap.exit_code == 1 and "cannot attach" in overlap.error
    assert chat.execute("SELECT to_regclass(%s)", [name]).fetchone() == (None,)  # rolled back


def test_restore_of_a_damaged_archive_fails_and_restores_nothing(chat, minio_client, names,
                                                                 ap_settings):
    run_job("archive-partitions", ap_settings(archive_retention_months="chat_messages=5"))
    m = manifest(minio_client, names["bucket"], names["schema"], "chat_messages", -6)
    body = gzip.compress(b"1\t1\t1\t1\t2001-01-01 00:00:00+00\n")
    minio_client.put_object(names["bucket"], m["data_key"], io.BytesIO(body), len(body))

    back = run_job("restore-partition", ap_settings(), table="chat_messages", month=label(-6))

    assert back.outcome is Outcome.FAILED and "manifest says 300 rows" in back.error
    assert chat.execute("SELECT to_regclass(%s)", [part("chat_messages", -6)]).fetchone() == (
        None,)


def test_a_copy_stopped_halfway_leaves_a_connection_that_rolls_back(chat, make_settings):
    """The reader cancels and drains the COPY it did not finish (a safe point raised
    mid-stream), so the transaction around it rolls back and the session goes on."""
    from novajobs.context import JobContext
    from novajobs.pgarchive import Slot, copy_out

    schema = chat.execute("SELECT current_schema()").fetchone()[0]
    slot = Slot(schema, part("chat_messages", -6), "", "", label(-6), attached=True)
    with JobContext(make_settings(), "archive-partitions") as ctx:
        conn = ctx.pg
        conn.autocommit = True
        with pytest.raises(RuntimeError, match="stop here"), conn.transaction():
            rows = copy_out(conn, slot, ["id", "created_at"])
            assert [next(rows) for _ in range(10)]
            rows.close()
            raise RuntimeError("stop here")
        assert conn.execute("SELECT count(*) FROM chat_messages").fetchone() == (
            7 * ROWS_PER_MONTH,)
        missing = Slot(schema, "no_such_table", "", "", label(-6), attached=True)
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(copy_out(conn, missing, ["id"]))
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_stream_larger_than_a_part_goes_up_in_parts_and_reads_back_whole(
        minio_client, names, make_settings, redis_server):
    """The multipart path with several parts (the chat fixtures fit in one): random hex
    (gzip halves it) of about 12 MiB compressed, in 5 MiB parts, read back whole."""
    import os

    from novajobs.context import JobContext
    from novajobs.s3archive import read_digest, upload_stream

    lines = [os.urandom(4096).hex().encode() + b"\n" for _ in range(3000)]  # 23 MiB
    with JobContext(make_settings(), "archive-partitions") as ctx:
        sent = upload_stream(ctx, names["bucket"], "big.copy.gz", iter(lines), level=1,
                             part_size=5 << 20)
        back = read_digest(ctx, names["bucket"], "big.copy.gz")

    assert sent == back and sent.rows == 3000 and sent.raw_bytes == sum(map(len, lines))
    assert sent.sha256 == hashlib.sha256(b"".join(lines)).hexdigest()
    stat = minio_client.stat_object(names["bucket"], "big.copy.gz")
    parts = -(-sent.object_bytes // (5 << 20))
    assert parts >= 2 and stat.etag.endswith(f"-{parts}") and stat.size == sent.object_bytes
