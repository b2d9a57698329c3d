"""gc-files against real PostgreSQL and a real S3 store (SeaweedFS through the MinIO SDK)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from support import spawn

from novajobs.context import Shard
from novajobs.errors import Outcome
from novajobs.records import status_key
from novajobs.runner import RunOptions, run_job
from novajobs_dev import demo_data

MIX = {"live": 40, "marked": 30, "recent": 10, "missing": 6, "held": 4}


@pytest.fixture
def files(pg: Any, pg_tables: Callable[..., None], minio_client: Any, redis_server: None,
          names: dict[str, str]) -> dict[str, list[int]]:
    """The demo mix in the test's schema and bucket: file ids by kind."""
    pg_tables("file_metadata")
    return demo_data.load_files(pg, minio_client, names["bucket"], seed=7, max_size=2048, **MIX)


def rows(pg: Any) -> dict[int, tuple[str, int]]:
    return {i: (p, s) for i, p, s in pg.execute("SELECT id, path, size FROM file_metadata")}


def objects(minio_client: Any, bucket: str) -> set[str]:
    return {o.object_name for o in minio_client.list_objects(bucket, recursive=True)}


Snapshot = tuple[dict[int, tuple[str, int]], set[str]]


def snapshot(pg: Any, minio_client: Any, bucket: str) -> Snapshot:
    return rows(pg), objects(minio_client, bucket)


def eligible(files: dict[str, list[int]]) -> set[int]:
    return {*files["marked"], *files["missing"]}


def assert_gone(pg: Any, minio_client: Any, bucket: str,
                before: Snapshot, gone: set[int]) -> None:
    """Exactly the rows ``gone`` and their objects disappeared; everything else stayed."""
    before_rows, before_objects = before
    assert set(rows(pg)) == set(before_rows) - gone
    assert objects(minio_client, bucket) == before_objects - {before_rows[i][0] for i in gone}


def test_deletes_exactly_the_eligible_files(pg, files, minio_client, names, settings):
    before = snapshot(pg, minio_client, names["bucket"])
    doomed = eligible(files)

    rec = run_job("gc-files", settings)

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert_gone(pg, minio_client, names["bucket"], before, doomed)
    freed = sum(before[0][i][1] for i in doomed)
    assert rec.counters == {"files_deleted": len(doomed), "bytes_freed": freed,
                            "files_skipped": 0, "files_failed": 0}
    assert rec.details["buckets"] == {names["bucket"]: {"files": 36, "bytes": freed, "failed": 0}}
    # Missing objects counted as deleted, and a second run finds nothing left.
    assert run_job("gc-files", settings).outcome is Outcome.NOTHING_TO_DO


def test_dry_run_lists_the_files_and_changes_nothing(pg, files, minio_client, names, cli):
    before, stored = rows(pg), objects(minio_client, names["bucket"])

    proc = cli("gc-files", "--dry-run", "--json")

    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["outcome"] == "dry_run"
    freed = sum(before[i][1] for i in eligible(files))
    assert record["counters"] == {"would_delete_files": 36, "would_free_bytes": freed}
    listed = [json.loads(line) for line in proc.stderr.splitlines()]
    assert {e["file_id"] for e in listed if e["message"] == "would delete"} == eligible(files)
    assert rows(pg) == before and objects(minio_client, names["bucket"]) == stored


def test_limit_takes_the_lowest_ids_and_grace_moves_the_cutoff(pg, files, minio_client,
                                                               names, cli):
    before = snapshot(pg, minio_client, names["bucket"])
    first_seven = set(sorted(eligible(files))[:7])

    limited = cli("gc-files", "--limit", "7", "--json")

    assert limited.returncode == 0, limited.stderr
    assert json.loads(limited.stdout)["details"]["limit_reached"] is True
    assert_gone(pg, minio_client, names["bucket"], before, first_seven)

    older_than_hour = {r[0] for r in pg.execute(
        "SELECT id FROM file_metadata WHERE status = 2 AND ref_count = 0 "
        "AND updated_at < now() - interval '1 hour' - interval '5 seconds'")}
    assert set(files["recent"]) & older_than_hour  # the demo mix has some 1-20 h old

    graced = cli("gc-files", "--grace", "1h")

    assert graced.returncode == 0, graced.stderr
    assert_gone(pg, minio_client, names["bucket"], before, first_seven | older_than_hour)


@pytest.mark.parametrize("args", [["--grace", "24"], ["--grace", "-1h"], ["--limit", "-1"]])
def test_bad_grace_or_limit_is_a_usage_error(cli, args):
    proc = cli("gc-files", *args)

    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1/0", "a/b", "auto"])
def test_bad_shard_specs_exit_2_with_one_line(cli, spec):
    proc = cli("gc-files", "--shard", spec, extra_env={"NOVAJOBS_SHARD_COUNT": "3"})

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--shard" in lines[0], proc.stderr


def test_a_shard_alone_touches_only_its_own_rows(pg, files, minio_client, names, settings):
    before = snapshot(pg, minio_client, names["bucket"])

    rec = run_job("gc-files", settings, RunOptions(shard=Shard(2, 3)))

    assert rec.outcome is Outcome.SUCCESS
    own = {i for i in eligible(files) if i % 3 == 1}
    assert_gone(pg, minio_client, names["bucket"], before, own)


def test_shard_auto_reads_the_indexed_job_index(pg, files, minio_client, names, cli,
                                                redis_client):
    before = snapshot(pg, minio_client, names["bucket"])

    proc = cli("gc-files", "--shard", "auto",
               extra_env={"JOB_COMPLETION_INDEX": "2", "NOVAJOBS_SHARD_COUNT": "3"})

    assert proc.returncode == 0, proc.stderr
    own = {i for i in eligible(files) if i % 3 == 2}
    assert_gone(pg, minio_client, names["bucket"], before, own)
    assert redis_client.exists(status_key(names["prefix"], "gc-files:3-of-3"))


def test_three_shards_as_concurrent_processes_delete_everything_once(
        pg, files, minio_client, names, env, redis_client):
    before = snapshot(pg, minio_client, names["bucket"])
    doomed = eligible(files)
    procs = [
        spawn(env, "gc-files", "--shard", f"{i}/3", "--json")
        for i in (1, 2, 3)
    ]
    results = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    deleted = [json.loads(out)["counters"]["files_deleted"] for out, _ in results]
    assert deleted == [sum(1 for i in doomed if i % 3 == r) for r in (0, 1, 2)]
    assert sum(deleted) == len(doomed)
    assert_gone(pg, minio_client, names["bucket"], before, doomed)
    for i in (1, 2, 3):
        status = redis_client.hgetall(status_key(names["prefix"], f"gc-files:{i}-of-3"))
        assert status[b"outcome"] == b"success"


def test_counters_land_in_the_run_record(pg, files, cli, redis_client, names):
    proc = cli("gc-files")

    assert proc.returncode == 0, proc.stderr
    status = redis_client.hgetall(status_key(names["prefix"], "gc-files"))
    counters = json.loads(status[b"counters"])
    assert counters["files_deleted"] == 36 and counters["files_failed"] == 0
    assert counters["bytes_freed"] > 0


def test_missing_table_is_a_config_error(pg, s3_server, redis_server, cli):
    proc = cli("gc-files")

    assert proc.returncode == 78
    assert "file_metadata does not exist" in proc.stderr
