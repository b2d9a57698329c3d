"""expire-indices against the noida-db Elasticsearch emulator (official client): what is
deleted, what is never deleted, and failures that stay isolated."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from es_indices import ShardProxy, make_index

from novajobs.errors import Outcome
from novajobs.runner import RunOptions, run_job


@pytest.fixture
def ex_settings(make_settings: Any, redis_server: None, es: Any, p: str) -> Any:
    def make(**overrides: Any) -> Any:
        values = {"expire_pattern": f"{p}logs-*", "expire_retention_days": 7, **overrides}
        return make_settings(**values)

    return make


class RefusingProxy(ShardProxy):
    """Passes everything through, but answers the DELETE of one index with a 500."""

    def __init__(self, upstream: str, refuse: str) -> None:
        super().__init__(upstream)
        self.refuse = refuse

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method == "DELETE" and path.split("?")[0].strip("/") == self.refuse:
            error = {"error": {"type": "exception", "reason": "disk on fire"}, "status": 500}
            return 500, {"X-Elastic-Product": "Elasticsearch",
                         "Content-Type": "application/json"}, json.dumps(error).encode()
        return super().answer(method, path, headers, body)


def existing(es: Any, p: str) -> list[str]:
    rows = es.cat.indices(index=f"{p}*", format="json", h="index", expand_wildcards="open,closed")
    return sorted(row["index"] for row in rows)


def test_dry_run_lists_old_indices_with_age_and_size_and_deletes_nothing(es, p, ex_settings):
    for name, age in (("logs-a", 10), ("logs-b", 30), ("logs-new", 2), ("other-old", 40)):
        make_index(es, p + name, age)

    rec = run_job("expire-indices", ex_settings(), RunOptions(dry_run=True))

    assert rec.outcome is Outcome.DRY_RUN and rec.exit_code == 0, rec.error
    candidates = rec.details["candidates"]
    assert [c["index"] for c in candidates] == [p + "logs-a", p + "logs-b"]
    assert [round(c["age_days"]) for c in candidates] == [10, 30]
    assert all(c["size_bytes"] > 0 for c in candidates)
    assert rec.details["skipped"] == {p + "logs-new": "too_young"}
    assert rec.counters == {"indices": 3, "candidates": 2, "skipped_too_young": 1}
    assert existing(es, p) == sorted(p + n for n in ("logs-a", "logs-b", "logs-new", "other-old"))


def test_deletes_old_indices_but_never_a_write_index_or_a_protected_alias(es, p, ex_settings):
    make_index(es, p + "logs-app-1", 30, aliases={p + "app": {"is_write_index": False}})
    make_index(es, p + "logs-app-2", 30, aliases={p + "app": {"is_write_index": True}})
    make_index(es, p + "logs-solo", 30, aliases={p + "solo": {}})  # only index: takes writes
    make_index(es, p + "logs-kept", 30, aliases={p + "dashboards": {}, p + "more": {}})
    make_index(es, p + "logs-kept2", 30, aliases={p + "more": {}})
    make_index(es, p + "logs-closed", 30)
    es.indices.close(index=p + "logs-closed")
    make_index(es, p + "logs-young", 1)

    rec = run_job("expire-indices", ex_settings(expire_protected_aliases=f"{p}dashboards"))

    assert rec.outcome is Outcome.SUCCESS and rec.exit_code == 0, rec.error
    assert rec.details["deleted"] == [p + "logs-app-1", p + "logs-closed", p + "logs-kept2"]
    assert rec.details["skipped"] == {p + "logs-app-2": "write_index",
                                      p + "logs-kept": "protected_alias",
                                      p + "logs-solo": "write_index",
                                      p + "logs-young": "too_young"}
    assert rec.counters["deleted"] == 3 and rec.counters["bytes_freed"] > 0
    assert existing(es, p) == sorted(p + n for n in ("logs-app-2", "logs-kept", "logs-solo",
                                                     "logs-young"))
    again = run_job("expire-indices", ex_settings(expire_protected_aliases=f"{p}dashboards"))
    assert again.outcome is Outcome.NOTHING_TO_DO


def test_age_can_come_from_the_date_in_the_name(es, p, ex_settings):
    old = (datetime.now(UTC) - timedelta(days=20)).strftime("%Y.%m.%d")
    today = datetime.now(UTC).strftime("%Y.%m.%d")
    for name in (f"logs-{old}", f"logs-{today}", "logs-undated"):
        make_index(es, p + name, age_days=0)  # all created just now

    rec = run_job("expire-indices", ex_settings(expire_name_date_format="%Y.%m.%d"))

    assert rec.details["deleted"] == [p + f"logs-{old}"]
    assert rec.details["skipped"] == {p + f"logs-{today}": "too_young",
                                      p + "logs-undated": "no_date"}
    assert existing(es, p) == sorted([p + f"logs-{today}", p + "logs-undated"])


def test_without_a_retention_nothing_is_deleted(es, p, ex_settings):
    make_index(es, p + "logs-ancient", 900)

    rec = run_job("expire-indices", ex_settings(expire_retention_days=0))

    assert rec.outcome is Outcome.NOTHING_TO_DO and rec.exit_code == 0
    assert "expire_retention_days is not set" in rec.message
    assert existing(es, p) == [p + "logs-ancient"]


def test_a_failed_delete_is_isolated_and_the_run_exits_1(es, p, ex_settings, stack):
    for name in ("logs-a", "logs-b", "logs-c"):
        make_index(es, p + name, 30)
    proxy = RefusingProxy(stack.env()["ELASTICSEARCH_URL"], refuse=p + "logs-b")
    try:
        rec = run_job("expire-indices", ex_settings(elasticsearch_url=proxy.url))
    finally:
        proxy.close()

    assert rec.outcome is Outcome.FAILED and rec.exit_code == 1
    assert rec.error == f"delete failed for 1 of 3 indices ({p}logs-b); deleted 2"
    assert rec.counters["deleted"] == 2 and rec.counters["failed"] == 1
    assert existing(es, p) == [p + "logs-b"]


def test_an_index_that_got_an_alias_since_the_listing_is_kept(es, p, ex_settings):
    from novajobs.context import JobContext
    from novajobs.esindices import list_indices
    from novajobs.jobs import expire_indices

    make_index(es, p + "logs-a", 30)
    with JobContext(ex_settings(), "expire-indices") as ctx:
        (index,) = list_indices(ctx, f"{p}logs-*")
        es.indices.put_alias(index=p + "logs-a", name=p + "writes")
        assert expire_indices.delete_one(ctx, index, set()) == "changed_meanwhile"
        es.indices.delete(index=p + "logs-a")
        assert expire_indices.delete_one(ctx, index, set()) == "already_gone"


def test_cli_dry_run_json_and_bad_date_format(es, p, cli):
    make_index(es, p + "logs-old", 12)

    done = cli("expire-indices", "--dry-run", "--json", "--pattern", f"{p}logs-*",
               "--retention-days", "5")
    bad = cli("expire-indices", "--dry-run", "--date-format", "%b")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "dry_run"
    assert [c["index"] for c in result["details"]["candidates"]] == [p + "logs-old"]
    assert bad.returncode == 2 and "expire_name_date_format" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.fixture
def repository(es: Any, p: str, tmp_path: Any) -> Any:
    name = p + "snapshots"
    es.snapshot.create_repository(name=name, repository={
        "type": "fs", "settings": {"location": str(tmp_path / "repo")}})
    yield name
    for snap in es.snapshot.get(repository=name, snapshot="*")["snapshots"]:
        es.snapshot.delete(repository=name, snapshot=snap["snapshot"])
    es.snapshot.delete_repository(name=name)


def documents(es: Any, index: str) -> list[dict[str, Any]]:
    hits = es.search(index=index, size=100, sort=[{"n": "asc"}])["hits"]["hits"]
    return [hit["_source"] for hit in hits]


def test_with_a_repository_each_index_is_snapshotted_then_deleted_and_restorable(
        es, p, ex_settings, repository):
    make_index(es, p + "logs-a", 30, docs=5)
    make_index(es, p + "logs-b", 20, docs=3)
    make_index(es, p + "logs-new", 1)
    make_index(es, p + "logs-closed", 30)
    es.indices.close(index=p + "logs-closed")
    before = documents(es, p + "logs-a")

    dry = run_job("expire-indices", ex_settings(expire_snapshot_repository=repository),
                  RunOptions(dry_run=True))
    rec = run_job("expire-indices", ex_settings(expire_snapshot_repository=repository))

    assert dry.outcome is Outcome.DRY_RUN and dry.details["repository"] == repository
    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters["snapshots_taken"] == 2 and rec.counters["deleted"] == 2
    assert existing(es, p) == [p + "logs-closed", p + "logs-new"]
    assert rec.details["skipped"][p + "logs-closed"] == "closed"  # cannot be snapshotted
    snapshots = rec.details["snapshots"]
    assert sorted(snapshots) == [p + "logs-a", p + "logs-b"]
    taken = es.snapshot.get(repository=repository, snapshot=snapshots[p + "logs-a"])
    assert taken["snapshots"][0]["indices"] == [p + "logs-a"]  # one index per snapshot
    # The restore path the docs give: the index comes back with every document, writable.
    es.snapshot.restore(repository=repository, snapshot=snapshots[p + "logs-a"],
                        indices=p + "logs-a", ignore_index_settings=["index.blocks.write"],
                        wait_for_completion=True)
    assert documents(es, p + "logs-a") == before
    es.index(index=p + "logs-a", document={"n": 9, "msg": "after"}, refresh=True)


def test_an_earlier_runs_snapshot_is_used_and_a_failed_one_is_not(es, p, ex_settings,
                                                                  repository, stack):
    from novajobs.context import JobContext
    from novajobs.esindices import list_indices
    from novajobs.jobs import expire_indices

    make_index(es, p + "logs-a", 30)
    make_index(es, p + "logs-b", 30)
    with JobContext(ex_settings(), "expire-indices") as ctx:
        first, second = list_indices(ctx, f"{p}logs-*")
    # A run snapshotted logs-a and died before the delete.
    es.snapshot.create(repository=repository, snapshot=expire_indices.snapshot_name(first),
                       indices=first.name, wait_for_completion=True)
    # Writes to logs-b fail while it is snapshotted: no snapshot, and it is kept.
    proxy = RefusingSnapshotProxy(stack.env()["ELASTICSEARCH_URL"])
    try:
        rec = run_job("expire-indices", ex_settings(expire_snapshot_repository=repository,
                                                    elasticsearch_url=proxy.url))
    finally:
        proxy.close()

    assert rec.outcome is Outcome.FAILED and rec.exit_code == 1
    assert rec.counters["deleted"] == 1 and rec.counters["failed"] == 1
    assert "snapshots_taken" not in rec.counters  # logs-a's snapshot was there already
    assert existing(es, p) == [second.name]
    with pytest.raises(Exception, match="blocked"):  # left read-only for the next run
        es.index(index=second.name, document={"n": 1})
    later = run_job("expire-indices", ex_settings(expire_snapshot_repository=repository))
    assert later.counters["snapshots_taken"] == 1 and existing(es, p) == []


def test_a_missing_repository_is_a_config_error_before_anything_is_deleted(es, p,
                                                                          ex_settings):
    make_index(es, p + "logs-a", 30)

    rec = run_job("expire-indices", ex_settings(expire_snapshot_repository=p + "nowhere"))

    assert rec.outcome is Outcome.CONFIG_ERROR and rec.exit_code == 78
    assert f"snapshot repository '{p}nowhere'" in rec.error
    assert existing(es, p) == [p + "logs-a"]


class RefusingSnapshotProxy(ShardProxy):
    """Passes everything through, but answers snapshot creation with a 500."""

    def answer(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method in ("PUT", "POST") and path.startswith("/_snapshot/") and "-logs-b-" in path:
            error = {"error": {"type": "exception", "reason": "repository full"},
                     "status": 500}
            return 500, {"X-Elastic-Product": "Elasticsearch",
                         "Content-Type": "application/json"}, json.dumps(error).encode()
        return super().answer(method, path, headers, body)
