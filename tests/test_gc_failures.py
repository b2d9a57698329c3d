"""gc-files when S3 fails: per-object failures, the failure threshold, an unreachable store,
and a store that goes away in the middle of a run. Real PostgreSQL and SeaweedFS; the
network faults come from a TCP proxy in front of the real store (tests/s3_faults.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job
from novajobs_dev import demo_data
from novajobs_dev.netfaults import refused_port


@pytest.fixture
def files(pg: Any, pg_tables: Any, minio_client: Any, redis_server: None,
          names: dict[str, str]) -> dict[str, list[int]]:
    pg_tables("file_metadata")
    return demo_data.load_files(pg, minio_client, names["bucket"], live=10, marked=20, recent=2,
                                missing=2, held=1, seed=11, max_size=512)


def add_rows_in_missing_bucket(pg: Any, bucket: str, n: int) -> set[int]:
    """Marked rows whose bucket does not exist: every delete fails with NoSuchBucket."""
    found = pg.execute(
        "INSERT INTO file_metadata (file_hash, bucket, path, size, ref_count, status, updated_at) "
        "SELECT 'lost-' || g, %s, 'files/lost-' || g, 10, 0, 2, now() - interval '3 days' "
        "FROM generate_series(1, %s) g RETURNING id",
        (bucket, n),
    ).fetchall()
    return {r[0] for r in found}


def state(pg: Any, minio_client: Any, bucket: str) -> tuple[dict[int, str], set[str]]:
    rows = dict(pg.execute("SELECT id, path FROM file_metadata").fetchall())
    return rows, {o.object_name for o in minio_client.list_objects(bucket, recursive=True)}


def test_failed_deletes_keep_their_rows_and_are_reported(pg, files, minio_client, names,
                                                         make_settings):
    bad = add_rows_in_missing_bucket(pg, names["bucket"] + "-gone", 3)

    rec = run_job("gc-files", make_settings(gc_max_failures=5))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    rows, _ = state(pg, minio_client, names["bucket"])
    assert bad <= set(rows)
    assert not {*files["marked"], *files["missing"]} & set(rows)
    assert rec.counters["files_failed"] == 3 and rec.counters["files_deleted"] == 22
    assert rec.details["buckets"][names["bucket"] + "-gone"] == {"files": 0, "bytes": 0,
                                                                "failed": 3}
    assert "3 failed" in rec.message


def test_more_failures_than_the_threshold_fail_the_run(pg, files, minio_client, names, cli):
    bad = add_rows_in_missing_bucket(pg, names["bucket"] + "-gone", 8)

    proc = cli("gc-files", "-s", "gc_max_failures=5", "--json")

    assert proc.returncode == 1, proc.stderr
    record = json.loads(proc.stdout)
    assert record["outcome"] == "failed" and "gc_max_failures" in record["error"]
    assert record["counters"]["files_failed"] == 8
    warnings = [json.loads(line) for line in proc.stderr.splitlines()]
    assert sum(w["message"] == "object delete failed; row kept" for w in warnings) == 8
    assert {w.get("error") for w in warnings if w.get("file_id") in bad} == {"NoSuchBucket"}
    rows, _ = state(pg, minio_client, names["bucket"])
    assert bad <= set(rows)  # kept, and the good files of the same page are still deleted
    assert not {*files["marked"], *files["missing"]} & set(rows)


def test_unreachable_store_keeps_every_row_and_exits_69(pg, files, minio_client, names, cli):
    before = state(pg, minio_client, names["bucket"])
    proc = cli("gc-files", extra_env={"MINIO_ENDPOINT": f"127.0.0.1:{refused_port()}",
                                      "NOVAJOBS_RETRY_MAX_WAIT_SEC": "0.1"})

    assert proc.returncode == 69, proc.stderr
    assert "retrying" in proc.stderr and "Connection refused" in proc.stderr
    assert state(pg, minio_client, names["bucket"]) == before


def test_store_lost_mid_run_keeps_undeleted_rows_and_a_rerun_converges(
        pg, files, minio_client, names, make_settings, s3_proxy):
    rows, stored = state(pg, minio_client, names["bucket"])
    doomed = sorted({*files["marked"], *files["missing"]})
    s3_proxy.fail_after_deletes = 2  # two pages go through, then the network is gone

    rec = run_job("gc-files", make_settings(minio_endpoint=s3_proxy.endpoint, gc_page_size=5,
                                            retry_max_wait_sec=0.1))

    assert rec.outcome is Outcome.UNAVAILABLE and rec.exit_code == 69
    assert rec.counters["files_deleted"] == 10
    after_rows, after_objects = state(pg, minio_client, names["bucket"])
    assert set(after_rows) == set(rows) - set(doomed[:10])
    assert after_objects == stored - {rows[i] for i in doomed[:10]}

    rerun = run_job("gc-files", make_settings(), RunOptions())

    assert rerun.outcome is Outcome.SUCCESS and rerun.counters["files_deleted"] == len(doomed) - 10
    final_rows, final_objects = state(pg, minio_client, names["bucket"])
    assert set(final_rows) == set(rows) - set(doomed)
    assert final_objects == {p for p in final_rows.values()}


def test_the_hard_timeout_waits_for_the_page_to_commit(pg, files, minio_client, names, cli,
                                                       s3_proxy):
    """The run's timeout strikes while S3 is deleting a page: the page still commits, so no
    row is left pointing at an object that is gone; then the run ends as a timeout."""
    # The delete starts before the 6 s timeout (else the checkpoint just before it would
    # stop the run: 6 s leave a loaded machine time to get there), and is held past the
    # hard timeout (6 s + 2 s grace from the run's start, which came before the delete).
    s3_proxy.delay_deletes = 6 + 2 + 1.0

    proc = cli("gc-files", "--timeout", "6", extra_env={"MINIO_ENDPOINT": s3_proxy.endpoint})

    assert proc.returncode == 124, proc.stderr
    rows, stored = state(pg, minio_client, names["bucket"])
    eligible = {*files["marked"], *files["missing"]}
    assert not eligible & set(rows)  # the page committed: every deleted object's row is gone
    assert all(path in stored for path in rows.values())  # and no row lost its object
    assert s3_proxy.deletes == 1
