"""gc-orphans and `novajobs quarantine` against real PostgreSQL and SeaweedFS: what is
quarantined, what is kept, what is reported, and restore/purge."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from minio.deleteobjects import DeleteObject

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job
from novajobs.schema import ensure_tables
from novajobs_dev import demo_data

Q = "novajobs-quarantine/"


def put(minio_client: Any, bucket: str, key: str, data: bytes = b"x") -> None:
    minio_client.put_object(bucket, key, io.BytesIO(data), len(data))


def objects(minio_client: Any, bucket: str) -> set[str]:
    return {o.object_name for o in minio_client.list_objects(bucket, recursive=True)}


@pytest.fixture
def store(pg: Any, pg_tables: Any, minio_client: Any, names: dict[str, str],
          redis_server: None) -> dict[str, Any]:
    """60 live files (row + object), 20 orphan objects (no row), 5 live rows whose object
    is gone, 3 marked rows whose object is gone (gc-files' business, not reported)."""
    bucket = names["bucket"]
    pg_tables("file_metadata")
    pg.execute(demo_data.POSTGRES_INDEXES["file_metadata_bucket_path"])
    ids = demo_data.load_files(pg, minio_client, bucket, live=60, marked=0, recent=0,
                               missing=3, held=0, seed=7, max_size=64)
    orphans = sorted(f"uploads/orphan-{n:02d}.bin" for n in range(20))
    for key in orphans:
        put(minio_client, bucket, key, b"orphan")
    pg.execute("""
        INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, status, created_at)
        SELECT 'gone' || n, %s, 'files/gone/' || n, 10, 1, 0, now() - interval '2 days'
        FROM generate_series(1, 5) AS n
    """, [bucket])
    live = {p for (p,) in pg.execute("SELECT path FROM file_metadata WHERE status = 0")} - {
        f"files/gone/{n}" for n in range(1, 6)}
    time.sleep(1.1)  # every object is older than the run's start (grace 0 in most tests)
    return {"bucket": bucket, "orphans": orphans, "live": live, "ids": ids}


@pytest.fixture
def go_settings(make_settings: Any, names: dict[str, str]) -> Any:
    def make(**overrides: Any) -> Any:
        values = {"orphan_buckets": names["bucket"], "orphan_grace": "0", "orphan_settle_sec": 0,
                  "archive_bucket": "not-this-one", **overrides}
        return make_settings(**values)

    return make


def test_orphans_go_to_quarantine_and_rows_without_objects_are_reported(
        store, minio_client, go_settings):
    bucket = store["bucket"]
    before = objects(minio_client, bucket)

    rec = run_job("gc-orphans", go_settings())

    assert rec.outcome is Outcome.SUCCESS and rec.exit_code == 0, rec.error
    after = objects(minio_client, bucket)
    moved = {f"{Q}{bucket}/{k}" for k in store["orphans"]}
    assert after == (before - set(store["orphans"])) | moved
    assert rec.counters["objects_checked"] == 80
    assert rec.counters["orphans_quarantined"] == 20
    assert rec.counters["rows_without_object"] == 5  # the 3 marked rows are gc-files'
    assert sorted(r["path"] for r in rec.details["rows_without_object_sample"]) == sorted(
        f"files/gone/{n}" for n in range(1, 6))
    again = run_job("gc-orphans", go_settings())  # the quarantine itself is never scanned
    assert again.counters["objects_checked"] == 60 and "orphans_quarantined" not in {
        k for k, v in again.counters.items() if v}


def test_dry_run_moves_nothing_and_young_orphans_wait_for_the_grace(store, minio_client,
                                                                   go_settings):
    before = objects(minio_client, store["bucket"])

    dry = run_job("gc-orphans", go_settings(), RunOptions(dry_run=True))
    young = run_job("gc-orphans", go_settings(orphan_grace="1h"))

    assert dry.outcome is Outcome.DRY_RUN and dry.counters["orphans_would_quarantine"] == 20
    assert young.outcome is Outcome.SUCCESS and young.counters["orphans_within_grace"] == 20
    assert objects(minio_client, store["bucket"]) == before


def test_shards_split_the_bucket_exactly(store, minio_client, go_settings):
    from novajobs.context import Shard

    runs = [run_job("gc-orphans", go_settings(), RunOptions(shard=Shard(i, 3)))
            for i in (1, 2, 3)]

    assert all(r.outcome is Outcome.SUCCESS for r in runs), [r.error for r in runs]
    assert sum(r.counters["objects_checked"] for r in runs) == 80
    assert sum(r.counters.get("orphans_quarantined", 0) for r in runs) == 20
    assert sum(r.counters.get("rows_without_object", 0) for r in runs) == 5
    assert all(r.counters.get("orphans_quarantined", 0) < 20 for r in runs)
    quarantined = {k for k in objects(minio_client, store["bucket"]) if k.startswith(Q)}
    assert len(quarantined) == 20


def test_mark_missing_records_rows_without_objects_and_forgets_them_once_back(
        store, pg, minio_client, go_settings):
    ensure_tables(pg, ["novajobs_missing_objects"])

    run_job("gc-orphans", go_settings(), mark_missing=True)
    marked = {p for (p,) in pg.execute("SELECT path FROM novajobs_missing_objects")}
    put(minio_client, store["bucket"], "files/gone/3")
    rec = run_job("gc-orphans", go_settings(), mark_missing=True)

    assert marked == {f"files/gone/{n}" for n in range(1, 6)}
    assert rec.counters["rows_marked"] == 4
    assert {p for (p,) in pg.execute("SELECT path FROM novajobs_missing_objects")} == (
        marked - {"files/gone/3"})
    assert pg.execute("SELECT count(*) FROM file_metadata WHERE path LIKE 'files/gone/%'"
                      ).fetchone() == (5,)  # marked, never deleted


def test_quarantine_list_restore_and_purge(store, minio_client, go_settings, cli, names):
    bucket = store["bucket"]
    run_job("gc-orphans", go_settings())
    env = {"NOVAJOBS_ORPHAN_BUCKETS": bucket}

    listed = cli("quarantine", "list", "--json", "-n", "100", extra_env=env)
    one = cli("quarantine", "restore", "uploads/orphan-03.bin", extra_env=env)
    by_prefix = cli("quarantine", "restore", "--prefix", "uploads/orphan-1", extra_env=env)
    put(minio_client, bucket, "uploads/orphan-04.bin", b"new content")
    clash = cli("quarantine", "restore", "uploads/orphan-04.bin", extra_env=env)
    unasked = cli("quarantine", "purge", "--older-than", "0", extra_env=env)
    dry = cli("quarantine", "purge", "--older-than", "0", "--dry-run", "--json", extra_env=env)
    young = cli("quarantine", "purge", "--older-than", "1h", "--yes", "--json", extra_env=env)
    purged = cli("quarantine", "purge", "--older-than", "0", "--yes", "--json", extra_env=env)

    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(r["key"] for r in rows) == store["orphans"]
    assert {r["bucket"] for r in rows} == {bucket} and all(r["size"] == 6 for r in rows)
    assert one.returncode == 0 and "1 restored" in one.stdout
    assert by_prefix.returncode == 0 and "10 restored" in by_prefix.stdout
    assert clash.returncode == 1 and "exists again" in clash.stderr
    assert unasked.returncode == 2 and "add --yes" in unasked.stderr
    assert json.loads(dry.stdout) == {"would_delete": 9, "bytes": 54}
    assert json.loads(young.stdout)["deleted"] == 0  # quarantined just now: kept
    assert purged.returncode == 0 and json.loads(purged.stdout)["deleted"] == 9
    now = objects(minio_client, bucket)
    assert {k for k in now if k.startswith(Q)} == set()
    back = {"uploads/orphan-03.bin", *(f"uploads/orphan-1{n}.bin" for n in range(10))}
    assert back <= now and "uploads/orphan-04.bin" in now
    response = minio_client.get_object(bucket, "uploads/orphan-03.bin")
    assert response.read() == b"orphan"
    response.close()
    response.release_conn()


def test_restore_by_time_and_the_runs_own_purge(store, minio_client, go_settings, cli):
    bucket = store["bucket"]
    run_job("gc-orphans", go_settings())
    env = {"NOVAJOBS_ORPHAN_BUCKETS": bucket}

    none_yet = cli("quarantine", "restore", "--until", "1h", "--json", extra_env=env)
    recent = cli("quarantine", "restore", "--since", "10m", "--dry-run", "--json",
                 extra_env=env)
    purge_run = run_job("gc-orphans", go_settings(quarantine_retention="0"))

    assert json.loads(none_yet.stdout)["restored"] == 0
    assert json.loads(recent.stdout)["would_restore"] == 20
    assert purge_run.counters["quarantine_purged"] == 20
    assert not any(k.startswith(Q) for k in objects(minio_client, bucket))


def test_a_quarantine_bucket_of_its_own(store, minio_client, go_settings, cli, names):
    bucket, quarantine = store["bucket"], names["bucket"] + "-q"
    missing = run_job("gc-orphans", go_settings(quarantine_bucket=quarantine))
    minio_client.make_bucket(quarantine)
    try:
        rec = run_job("gc-orphans", go_settings(quarantine_bucket=quarantine))
        env = {"NOVAJOBS_ORPHAN_BUCKETS": bucket, "NOVAJOBS_QUARANTINE_BUCKET": quarantine}
        back = cli("quarantine", "restore", "uploads/orphan-05.bin", extra_env=env)
        held, left = objects(minio_client, quarantine), objects(minio_client, bucket)
        refused = run_job("gc-orphans", go_settings(quarantine_bucket=quarantine,
                                                    orphan_buckets=f"{quarantine}"))
    finally:
        list(minio_client.remove_objects(quarantine, (
            DeleteObject(o.object_name)
            for o in minio_client.list_objects(quarantine, recursive=True))))
        minio_client.remove_bucket(quarantine)

    assert missing.outcome is Outcome.CONFIG_ERROR and missing.exit_code == 78, missing.error
    assert f"{quarantine} (quarantine_bucket) does not exist" in missing.error
    assert "orphans_quarantined" not in missing.counters
    assert rec.outcome is Outcome.SUCCESS and rec.counters["orphans_quarantined"] == 20
    assert back.returncode == 0 and "1 restored" in back.stdout
    assert held == {f"{Q}{bucket}/{k}" for k in store["orphans"]} - {
        f"{Q}{bucket}/uploads/orphan-05.bin"}
    assert not any(k.startswith(Q) for k in left)  # nothing quarantined in the bucket itself
    assert set(store["orphans"]) & left == {"uploads/orphan-05.bin"}
    assert refused.exit_code == 78 and f"bucket {quarantine} is the quarantine" in refused.error


def test_bad_buckets_are_refused_and_the_others_checked(store, minio_client, go_settings):
    rec = run_job("gc-orphans", go_settings(
        orphan_buckets=f"no-such-bucket,{store['bucket']},archives", archive_bucket="archives"))

    assert rec.outcome is Outcome.CONFIG_ERROR and rec.exit_code == 78
    assert "bucket no-such-bucket (orphan_buckets) does not exist" in rec.error
    assert "bucket archives holds the archives" in rec.error
    assert rec.counters["orphans_quarantined"] == 20


def test_s3_unreachable_is_exit_69(store, go_settings):
    rec = run_job("gc-orphans", go_settings(minio_endpoint="127.0.0.1:9", retry_attempts=1))

    assert rec.outcome is Outcome.UNAVAILABLE and rec.exit_code == 69
