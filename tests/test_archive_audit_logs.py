"""archive-audit-logs against real PostgreSQL and SeaweedFS: what is archived, what is
deleted, what is kept, and the leftovers of a run that died."""

from __future__ import annotations

import contextlib
import gzip
import io
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.sql
import pytest

from novajobs.errors import Outcome
from novajobs.pgsession import exclusive_run
from novajobs.runner import RunOptions, run_job
from novajobs.schema import ensure_tables

# Values COPY text must escape: tab, newline, backslash, carriage return, NULL, unicode.
AWKWARD = ["login", "a\tb", "line1\nline2", "back\\slash", "cr\rlf", None, "émoji 🚀", ""]


@pytest.fixture
def audit(pg: Any, pg_tables: Any, minio_client: Any, redis_server: None) -> Any:
    """audit_logs with 250 rows older than 30 days (ids 1..250) and 50 recent ones."""
    pg_tables("audit_logs")
    ensure_tables(pg, ["novajobs_audit_archive"])
    pg.execute("""
        INSERT INTO audit_logs (user_id, action, created_at)
        SELECT n, (%s::text[])[1 + n %% 8], now() - interval '40 days' + n * interval '1 minute'
        FROM generate_series(1, 250) AS n
    """, [AWKWARD])
    pg.execute("""
        INSERT INTO audit_logs (user_id, action, created_at)
        SELECT n, 'recent', now() - interval '1 day'
        FROM generate_series(251, 300) AS n
    """)
    return pg


@pytest.fixture
def aa_settings(make_settings: Any, names: dict[str, str]) -> Any:
    def make(**overrides: Any) -> Any:
        values = {"archive_bucket": names["bucket"], "audit_archive_retention_days": 30,
                  "audit_archive_batch_rows": 100, **overrides}
        return make_settings(**values)

    return make


def rows(pg: Any) -> list[tuple[Any, ...]]:
    sql = "SELECT id, user_id, action, created_at FROM audit_logs ORDER BY id"
    return pg.execute(sql).fetchall()


def objects(minio_client: Any, bucket: str) -> dict[str, bytes]:
    out = {}
    for obj in minio_client.list_objects(bucket, recursive=True):
        response = minio_client.get_object(bucket, obj.object_name)
        out[obj.object_name] = gzip.decompress(response.read())
        response.close()
        response.release_conn()
    return out


def load_back(pg: Any, data: bytes) -> list[tuple[Any, ...]]:
    """COPY an archive's content into a scratch table: what a restore would see."""
    pg.execute("CREATE TEMP TABLE back (LIKE audit_logs)")
    with pg.cursor() as cur, cur.copy("COPY back FROM STDIN") as copy:
        copy.write(data)
    got = pg.execute("SELECT id, user_id, action, created_at FROM back ORDER BY id").fetchall()
    pg.execute("DROP TABLE back")
    return got


def test_old_rows_go_to_verified_objects_and_only_they_are_deleted(audit, minio_client, names,
                                                                   aa_settings):
    before = rows(audit)

    rec = run_job("archive-audit-logs", aa_settings())

    assert rec.outcome is Outcome.SUCCESS and rec.exit_code == 0, rec.error
    assert rec.counters["rows_archived"] == 250 and rec.counters["batches_archived"] == 3
    assert [r[0] for r in rows(audit)] == list(range(251, 301))
    archives = objects(minio_client, names["bucket"])
    assert sorted(archives) == ["audit_logs/00000000000000000001-00000000000000000100.copy.gz",
                                "audit_logs/00000000000000000101-00000000000000000200.copy.gz",
                                "audit_logs/00000000000000000201-00000000000000000250.copy.gz"]
    restored = load_back(audit, b"".join(archives[k] for k in sorted(archives)))
    assert restored == before[:250]  # every awkward value exactly as it was
    recorded = audit.execute("SELECT object_key, first_id, last_id, row_count "
                             "FROM novajobs_audit_archive ORDER BY first_id").fetchall()
    assert [(r[1], r[2], r[3]) for r in recorded] == [(1, 100, 100), (101, 200, 100),
                                                     (201, 250, 50)]

    again = run_job("archive-audit-logs", aa_settings())
    assert again.outcome is Outcome.NOTHING_TO_DO
    assert len(objects(minio_client, names["bucket"])) == 3


def test_dry_run_and_unset_retention_change_nothing(audit, minio_client, names, aa_settings):
    before = rows(audit)

    dry = run_job("archive-audit-logs", aa_settings(), RunOptions(dry_run=True))
    off = run_job("archive-audit-logs", aa_settings(audit_archive_retention_days=0))

    assert dry.outcome is Outcome.DRY_RUN and dry.details["eligible_rows"] == 250
    assert dry.counters == {"would_archive_rows": 250}
    assert off.outcome is Outcome.NOTHING_TO_DO and "is not set" in off.message
    assert rows(audit) == before and objects(minio_client, names["bucket"]) == {}


def test_leftovers_of_a_dead_run_are_replaced_not_kept_beside(audit, minio_client, names,
                                                              aa_settings):
    bucket = names["bucket"]
    # A run with another batch size died after uploading, before committing.
    stale = gzip.compress(b"whatever a dead run wrote\n")
    for key in ("audit_logs/00000000000000000001-00000000000000000070.copy.gz",
                "audit_logs/00000000000000000071-00000000000000000140.copy.gz"):
        minio_client.put_object(bucket, key, io.BytesIO(stale), len(stale))

    rec = run_job("archive-audit-logs", aa_settings())

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["leftovers_removed"] == 2
    archives = objects(minio_client, bucket)
    assert len(archives) == 3 and gzip.decompress(stale) not in archives.values()
    lines = b"".join(archives.values()).splitlines()
    assert len(lines) == 250 == len({line.split(b"\t")[0] for line in lines})  # each row once


@contextlib.contextmanager
def first_batch_archived(settings: Any) -> Iterator[tuple[Any, Any, Any, str]]:
    """A run's context with the first batch uploaded and verified, not yet deleted:
    (ctx, archiver, batch, digest)."""
    from novajobs.context import JobContext
    from novajobs.jobs.archive_audit_logs import CUTOFF_SQL, Archiver

    with JobContext(settings, "archive-audit-logs") as ctx:
        ctx.pg.autocommit = True
        cutoff = ctx.pg.execute(CUTOFF_SQL, {"days": 30}).fetchone()[0]
        job = Archiver(ctx, ctx.pg, cutoff)
        batch = job.next_batch(0)
        yield ctx, job, batch, job.archive(batch)


def test_a_run_killed_after_its_upload_is_redone_under_the_same_key(audit, minio_client, names,
                                                                    aa_settings):
    # A run uploaded and verified the first batch, then died before its delete committed.
    with first_batch_archived(aa_settings()) as (_, job, batch, _):
        dead_key = job.key(batch)
    assert list(objects(minio_client, names["bucket"])) == [dead_key]

    rec = run_job("archive-audit-logs", aa_settings())

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["leftovers_removed"] == 1 and rec.counters["rows_archived"] == 250
    archives = objects(minio_client, names["bucket"])
    assert dead_key in archives and len(archives) == 3  # the same name again, no second copy
    lines = b"".join(archives.values()).splitlines()
    assert len(lines) == 250 == len({line.split(b"\t")[0] for line in lines})
    recorded = audit.execute("SELECT object_key FROM novajobs_audit_archive ORDER BY first_id"
                             ).fetchall()
    assert [k for (k,) in recorded] == sorted(archives)


def test_a_batch_changed_after_its_upload_is_not_deleted(audit, minio_client, names,
                                                         aa_settings):
    with first_batch_archived(aa_settings()) as (ctx, job, batch, digest):
        audit.execute("UPDATE audit_logs SET action = 'edited' WHERE id = 7")
        assert job.delete(batch, digest) is False
        assert ctx.counters["batches_changed"] == 1

    assert len(rows(audit)) == 300
    assert audit.execute("SELECT count(*) FROM novajobs_audit_archive").fetchone() == (0,)
    rec = run_job("archive-audit-logs", aa_settings())  # the next run archives it as it is now
    assert rec.counters["rows_archived"] == 250
    archives = objects(minio_client, names["bucket"])
    assert b"\tedited\t" in b"".join(archives.values())


def test_missing_table_or_bucket_is_a_config_error(pg, pg_tables, minio_client, names,
                                                   redis_server, aa_settings):
    pg_tables("audit_logs")

    no_table = run_job("archive-audit-logs", aa_settings())
    ensure_tables(pg, ["novajobs_audit_archive"])
    no_bucket = run_job("archive-audit-logs", aa_settings(archive_bucket="no-such-bucket"))

    assert no_table.exit_code == 78 and "novajobs init-db" in no_table.error
    assert no_bucket.exit_code == 78 and no_bucket.error.startswith(
        "S3 bucket no-such-bucket (archive_bucket) does not exist")


def test_a_second_run_at_once_is_kept_out_by_postgres(audit, aa_settings, env):
    with (psycopg.connect(env["DATABASE_URL"], autocommit=True) as other,
          exclusive_run(other, "archive-audit-logs")):  # a run of this deployment
        rec = run_job("archive-audit-logs", aa_settings(), RunOptions(use_lock=False))

    assert rec.outcome is Outcome.SKIPPED and rec.exit_code == 75, rec.error
    assert "PostgreSQL advisory lock 'novajobs:archive-audit-logs:t_" in rec.error
    assert len(rows(audit)) == 300


def test_a_run_in_another_schema_of_the_database_does_not_keep_it_out(audit, aa_settings, env,
                                                                       names):
    """Advisory locks are database-wide; the job's is per schema, so a deployment whose
    tables live in another schema of the same database runs beside this one."""
    elsewhere = psycopg.sql.Identifier(names["schema"] + "_b")
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as other:
        other.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(elsewhere))
        try:
            other.execute(psycopg.sql.SQL("SET search_path TO {}").format(elsewhere))
            with exclusive_run(other, "archive-audit-logs"):  # the other deployment's run
                rec = run_job("archive-audit-logs", aa_settings(), RunOptions(use_lock=False))
        finally:
            other.execute(psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(elsewhere))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert [r[0] for r in rows(audit)] == list(range(251, 301))  # the 250 old ones archived


def test_s3_unreachable_is_exit_69_and_deletes_nothing(audit, aa_settings):
    rec = run_job("archive-audit-logs", aa_settings(minio_endpoint="127.0.0.1:9",
                                                    retry_attempts=1))

    assert rec.outcome is Outcome.UNAVAILABLE and rec.exit_code == 69
    assert len(rows(audit)) == 300
