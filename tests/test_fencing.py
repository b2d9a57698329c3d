"""Fencing tokens: each lock acquisition's fence, and writes refused from an older one
where they land (Redis scripts, the novajobs_fences row in PostgreSQL), against real
Redis, PostgreSQL and S3."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from support import probe_job, run_script, wait_for

from novajobs import schema
from novajobs.context import Guard, JobContext, Result
from novajobs.errors import LockLost, Outcome
from novajobs.fencing import Fence, colocated, fenced_set, key_slot, slot_tag
from novajobs.lock import JobLock, lock_key
from novajobs.pgfence import pg_transaction
from novajobs.records import RunRecord, history_key, record_start, status_key
from novajobs.registry import JobSpec
from novajobs.runner import run_job
from novajobs_dev import demo_data

NEWER = 10**15  # a fence newer than any Redis hands out here (they start at the time in ms)
BEHAVIOUR: dict[str, Any] = {}


def run(ctx: JobContext) -> Result:
    """A sample job: optionally loses its lock to a newer run mid-way, then writes a key."""
    if BEHAVIOUR.get("taken_over"):
        take_over(ctx)
    ctx.checkpoint()  # the lease check passes: the pause was between it and the write
    fenced_set(ctx, ctx.key("sample:cache"), BEHAVIOUR.get("value", "mine"))
    return Result(Outcome.SUCCESS, "wrote")


def take_over(ctx: JobContext) -> None:
    """What another run does while this one is paused past its TTL: the lock expires,
    the other run takes it (a newer fence), records its start and writes."""
    old = ctx.guard.lock
    assert old is not None
    ctx.redis.delete(old.key)
    newer = JobLock(ctx.redis, old.key, 30, {"run_id": "newer"})
    assert newer.acquire()
    BEHAVIOUR["newer_fence"] = newer.fence
    fence = Fence(newer.key, newer.fence or 0, ctx.settings.redis_prefix)
    rec = RunRecord(job=ctx.job, run_id="newer", host="other", pid=1, fence=newer.fence)
    record_start(ctx.redis, ctx.settings.redis_prefix, rec, fence)
    newer_ctx = JobContext(ctx.settings, ctx.job, guard=Guard(lock=newer))
    fenced_set(newer_ctx, ctx.key("sample:cache"), "newer")


@pytest.fixture
def job(redis_server: None) -> JobSpec:
    BEHAVIOUR.clear()
    return probe_job(f"t-fence-{uuid.uuid4().hex[:8]}", run)


def test_each_acquisition_gets_a_higher_fence_recorded_in_the_run_record(job, settings,
                                                                         redis_client, names):
    first = run_job(job, settings)
    second = run_job(job, settings)

    assert first.outcome is second.outcome is Outcome.SUCCESS
    assert first.fence is not None and second.fence is not None
    assert second.fence > first.fence
    status = redis_client.hgetall(status_key(names["prefix"], job.name))
    assert int(status[b"fence"]) == second.fence
    history = [json.loads(h) for h in redis_client.lrange(history_key(names["prefix"],
                                                                     job.name), 0, -1)]
    assert [h["fence"] for h in history] == [second.fence, first.fence]
    counter = colocated(lock_key(names["prefix"], job.name), ":fence")
    assert int(redis_client.get(counter)) == second.fence


def test_a_write_after_another_run_took_the_lock_is_refused_with_exit_4(job, settings,
                                                                        redis_client, names):
    BEHAVIOUR["taken_over"] = True

    rec = run_job(job, settings)

    assert rec.outcome is Outcome.LOCK_LOST and rec.exit_code == 4
    newer = BEHAVIOUR["newer_fence"]
    assert f"fence {rec.fence} is older than {newer}" in rec.error
    assert redis_client.get(f"{names['prefix']}sample:cache") == b"newer"
    # The newer run keeps its status; the stale run's record is in the history.
    status = redis_client.hgetall(status_key(names["prefix"], job.name))
    assert status[b"run_id"] == b"newer" and int(status[b"fence"]) == newer
    last = json.loads(redis_client.lindex(history_key(names["prefix"], job.name), 0))
    assert (last["run_id"], last["outcome"], last["fence"]) == (rec.run_id, "lock_lost",
                                                                rec.fence)


def test_an_older_fence_is_refused_whichever_run_writes_first(redis_client, settings, names):
    key = lock_key(names["prefix"], "sample")
    old = JobLock(redis_client, key, 30, {"run_id": "old"})
    assert old.acquire()
    redis_client.delete(key)  # it expired while its holder was paused
    new = JobLock(redis_client, key, 30, {"run_id": "new"})
    assert new.acquire()
    stale = JobContext(settings, "sample", guard=Guard(lock=old))
    fresh = JobContext(settings, "sample", guard=Guard(lock=new))
    target = f"{names['prefix']}cache"

    # The newer run has not written yet: the lock's counter already refuses the old fence.
    with pytest.raises(LockLost, match="refused"):
        fenced_set(stale, target, "stale")
    assert redis_client.exists(target) == 0
    fenced_set(fresh, target, "fresh", "EX", 60)
    with pytest.raises(LockLost):
        fenced_set(stale, target, "stale")
    assert redis_client.get(target) == b"fresh" and 0 < redis_client.ttl(target) <= 60
    # Without a lock (--no-lock) nothing is fenced.
    fenced_set(JobContext(settings, "sample"), target, "ad hoc")
    assert redis_client.get(target) == b"ad hoc"


def test_on_a_cluster_the_fence_record_shares_the_written_keys_slot():
    fence = Fence("p:job:lock:{daily-stats}", 7, "p:")
    assert fence.counter_key == "p:job:lock:{daily-stats}:fence"
    assert colocated("job:lock:x", ":fence") == "{job:lock:x}:fence"
    for target in ("p:nova:cache:trending:1h", "p:nova:cache:suggested_users:42",
                   b"p:auth:block:token:abc", "p:retry:{stream:audit:log}"):
        record = fence.key_for(target, cluster=True)
        assert key_slot(record) == key_slot(target), (target, record)
        assert record.startswith("p:novajobs:fence:{")
    # In the lock's own slot the lock's counter is the record; on one Redis it always is.
    assert fence.key_for("p:job:status:{daily-stats}", cluster=True) == fence.counter_key
    assert fence.key_for("p:anything", cluster=False) == fence.counter_key
    assert all(key_slot(slot_tag(s)) == s for s in (0, 1, 8191, 16383))


# --- PostgreSQL ---------------------------------------------------------------------------


def test_a_stale_pg_transaction_rolls_back_and_the_fence_row_only_grows(pg, settings, names,
                                                                        redis_client):
    pg.execute("CREATE TABLE report (who text)")
    key = lock_key(names["prefix"], "sample")
    ctxs = []
    for token in (5, 9):
        lock = JobLock(redis_client, key, 30, {})
        lock.fence = token
        ctxs.append(JobContext(settings, "sample", guard=Guard(lock=lock)))
    old, new = ctxs

    with pg_transaction(new, "report") as conn:
        conn.execute("INSERT INTO report VALUES ('new')")
    with pytest.raises(LockLost, match="fence 5 is older than 9"), \
            pg_transaction(old, "report") as conn:
        conn.execute("INSERT INTO report VALUES ('old')")

    assert pg.execute("SELECT who FROM report").fetchall() == [("new",)]
    assert pg.execute("SELECT lock_key, fence FROM novajobs_fences").fetchall() == [(key, 9)]
    for ctx in ctxs:
        ctx.close()


@pytest.fixture
def newer_fence(pg: Any, names: dict[str, str]) -> Any:
    """Another run of the job took the lock and wrote with a newer fence."""

    def plant(job: str) -> None:
        schema.ensure_tables(pg, ["novajobs_fences"])
        pg.execute("INSERT INTO novajobs_fences (lock_key, fence) VALUES (%s, %s)",
                   [lock_key(names["prefix"], job), NEWER])

    return plant


def test_report_jobs_behind_a_newer_fence_write_nothing_and_exit_4(pg, pg_tables, settings,
                                                                  newer_fence, redis_server):
    pg_tables("users", "chat_messages", "audit_logs", "file_metadata")
    pg.execute("CREATE TABLE chat_messages_default PARTITION OF chat_messages DEFAULT")
    schema.ensure_tables(pg)
    pg.execute("INSERT INTO chat_messages VALUES (1, 1, 1, 1, '2025-03-04 10:00+00')")
    for job, params in (("daily-stats", {"on": "2025-03-04"}),
                        ("group-activity-rank", {"week": "2025-10"})):
        newer_fence(job)

        rec = run_job(job, settings, **params)

        assert rec.outcome is Outcome.LOCK_LOST and rec.exit_code == 4, rec.error
        assert f"older than {NEWER}" in rec.error
    assert pg.execute("SELECT count(*) FROM daily_stats").fetchone() == (0,)
    assert pg.execute("SELECT count(*) FROM group_activity_rank").fetchone() == (0,)


def test_create_partitions_behind_a_newer_fence_creates_none(pg, pg_tables, settings,
                                                            newer_fence, redis_server):
    pg_tables("chat_messages")
    newer_fence("create-partitions")

    rec = run_job("create-partitions", settings, table=("chat_messages",))

    assert rec.exit_code == 4, rec.error
    assert pg.execute("SELECT count(*) FROM pg_inherits").fetchone() == (0,)


def test_gc_files_behind_a_newer_fence_deletes_no_object_and_no_row(pg, pg_tables, settings,
                                                                   minio_client, names,
                                                                   newer_fence, redis_server):
    pg_tables("file_metadata")
    demo_data.load_files(pg, minio_client, names["bucket"], live=3, marked=8, recent=0,
                         missing=0, held=0, seed=3, max_size=64)
    objects = {o.object_name for o in minio_client.list_objects(names["bucket"], recursive=True)}
    rows = pg.execute("SELECT count(*) FROM file_metadata").fetchone()
    newer_fence("gc-files")

    rec = run_job("gc-files", settings)

    assert rec.exit_code == 4, rec.error
    assert pg.execute("SELECT count(*) FROM file_metadata").fetchone() == rows
    assert {o.object_name for o in minio_client.list_objects(names["bucket"],
                                                            recursive=True)} == objects


def test_the_fence_table_is_created_by_the_first_fenced_write_after_an_upgrade(
    pg, pg_tables, settings, redis_server
):
    pg_tables("chat_messages")
    assert pg.execute("SELECT to_regclass('novajobs_fences')").fetchone() == (None,)

    rec = run_job("create-partitions", settings, table=("chat_messages",))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    fences = pg.execute("SELECT lock_key, fence FROM novajobs_fences").fetchall()
    assert fences == [(lock_key(settings.redis_prefix, "create-partitions"), rec.fence)]


# --- the other Redis write paths: many keys, scripts, streams ------------------------------


@pytest.fixture
def stale_and_fresh(redis_client: Any, settings: Any, names: dict[str, str]) -> Any:
    """Two contexts of one job: the stale one's lock expired and the fresh one took it."""
    key = lock_key(names["prefix"], "sample")
    old = JobLock(redis_client, key, 30, {"run_id": "old"})
    assert old.acquire()
    redis_client.delete(key)
    new = JobLock(redis_client, key, 30, {"run_id": "new"})
    assert new.acquire()
    stale = JobContext(settings, "sample", guard=Guard(lock=old))
    fresh = JobContext(settings, "sample", guard=Guard(lock=new))
    yield stale, fresh
    stale.close()
    fresh.close()


def test_a_stale_pipeline_of_cache_writes_lands_nowhere(stale_and_fresh, redis_client, names):
    from novajobs.fencing import FencedPipeline

    stale, fresh = stale_and_fresh
    p = names["prefix"]
    for ctx, value in ((stale, "stale"), (fresh, "fresh")):
        pipe = FencedPipeline(ctx)
        for user in range(3):
            pipe.set(f"{p}sugg:{user}", value, "EX", 60)
        pipe.zadd(f"{p}refreshed", {str(user): 1.5 for user in range(3)})
        if ctx is stale:
            with pytest.raises(LockLost):
                pipe.execute("write suggestions")
            assert redis_client.keys(f"{p}sugg:*") == [] and not redis_client.exists(
                f"{p}refreshed")
        else:
            pipe.execute("write suggestions")
    assert redis_client.mget([f"{p}sugg:{u}" for u in range(3)]) == [b"fresh"] * 3
    assert redis_client.zrange(f"{p}refreshed", 0, -1, withscores=True) == [
        (b"0", 1.5), (b"1", 1.5), (b"2", 1.5)]


def test_a_stale_blacklist_repair_changes_no_entry(stale_and_fresh, redis_client, names):
    import time
    from collections import Counter

    from novajobs.jobs import clean_token_blacklist as job

    stale, _ = stale_and_fresh
    key = f"{names['prefix']}auth:block:token:a"
    redis_client.set(key, str(int(time.time()) - 10))  # expired, no TTL: would be deleted
    tally: Counter[str] = Counter()
    fixes = job.classify(stale, [key.encode()], time.time(), False, tally, [])

    with pytest.raises(LockLost):
        job.apply_fixes(stale, fixes, tally)

    assert redis_client.exists(key) == 1 and tally["deleted"] == 0


def test_stale_stream_acks_retries_and_promotions_are_refused(stale_and_fresh, redis_client,
                                                              names):
    from novajobs.fencing import Refused, fence_of
    from novajobs.streams import queues
    from novajobs.streams.keys import stream_keys
    from novajobs.streams.settle import Round, write_round

    stale, fresh = stale_and_fresh
    p = names["prefix"]
    k = stream_keys(p, "s")
    redis_client.xgroup_create(p + "s", "g", id="0", mkstream=True)
    ids = [redis_client.xadd(p + "s", {"n": str(i), "raw": b"\xff\x00"}).decode()
           for i in range(3)]
    redis_client.xreadgroup("g", "c", {p + "s": ">"})
    writes = Round()
    writes.ack("s", ids[0])
    writes.retries.append(("s", "retry-member", 5.0))
    writes.dead.append(("s", {b"n": b"2", b"raw": b"\xff\x00"}))

    with pytest.raises(Refused):
        write_round(redis_client, {"s": k}, "g", writes, fence_of(stale))
    assert redis_client.xpending(p + "s", "g")["pending"] == 3
    assert not redis_client.exists(k.retry) and not redis_client.exists(k.dlq)
    write_round(redis_client, {"s": k}, "g", writes, fence_of(fresh))
    assert redis_client.xpending(p + "s", "g")["pending"] == 2
    assert redis_client.xrange(k.dlq)[0][1] == {b"n": b"2", b"raw": b"\xff\x00"}

    with pytest.raises(Exception, match="NOVAJOBS_FENCED"):
        queues.promote_due(redis_client, k, 10.0, 100, fence_of(stale))
    assert redis_client.zcard(k.retry) == 1


def test_the_fencing_experiment_in_its_tiny_mode():
    """scripts/fencing_experiment.py: a holder paused between its ownership check and its
    write; with redis-py's Lock the stale write lands, with novajobs it is refused."""
    done = run_script("fencing_experiment.py", "--tiny")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts == {f"{v}/{j}": int(v == "redis-py") for v in ("redis-py", "novajobs")
                      for j in ("cache", "report", "gc")}


# --- on a Redis Cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    """Three primaries on loopback (redis-server --cluster-enabled), as SERVICES.md says."""
    import subprocess
    import time

    from redis.cluster import RedisCluster

    from novajobs_dev.stack import free_base_port

    base, root = free_base_port(), tmp_path_factory.mktemp("cluster")
    ports = [base + i for i in range(3)]
    procs = []
    for port in ports:
        (root / str(port)).mkdir()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", str(root / str(port) / "nodes.conf"), "--save", "",
             "--appendonly", "no", "--dir", str(root / str(port))],
            stdout=subprocess.DEVNULL))
    try:
        time.sleep(0.3)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True,
                       capture_output=True, timeout=60)
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        wait_for(lambda: client.cluster_info().get("cluster_state") == "ok", 30,
                 "cluster_state ok")
        yield client
        client.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_on_a_redis_cluster_no_stale_write_lands_after_a_newer_one(cluster, settings):
    from novajobs.fencing import FencedPipeline, FencedTransaction, Refused, fence_of

    def context(lock: JobLock) -> JobContext:
        ctx = JobContext(settings, "sample", guard=Guard(lock=lock))
        ctx.conns.__dict__["redis"] = cluster  # (Connections makes a single-Redis client)
        return ctx

    key = lock_key("cl:", "sample")
    old = JobLock(cluster, key, 30, {"run_id": "old"})
    assert old.acquire()  # SET NX and INCR in one script: one slot, thanks to colocated()
    cluster.delete(key)
    new = JobLock(cluster, key, 30, {"run_id": "new"})
    assert new.acquire() and new.fence == old.fence + 1
    stale, fresh = context(old), context(new)
    users = [f"cl:nova:cache:suggested_users:{u}" for u in range(30)]
    assert len({key_slot(k) for k in users}) == 30

    for ctx, value in ((fresh, "fresh"), (stale, "stale")):
        pipe = FencedPipeline(ctx)
        for k in users:
            pipe.set(k, value, "EX", 60)
        if ctx is stale:
            with pytest.raises(LockLost):
                pipe.execute("write suggestions")
        else:
            pipe.execute("write suggestions")
    assert {cluster.get(k) for k in users} == {b"fresh"}
    fenced_set(fresh, "cl:nova:cache:trending:1h", "[]")
    with pytest.raises(LockLost):
        fenced_set(stale, "cl:nova:cache:trending:1h", "[1]")
    # Keys in the lock's slot (the run records, co-located) are checked against the lock's
    # counter itself: refused before the newer run wrote anything there.
    records = FencedTransaction(cluster, fence_of(stale))
    records.hset("{cl:job:lock:sample}:status", mapping={"outcome": "success"})
    with pytest.raises(Refused):
        records.execute()
    stale.close()
    fresh.close()


def test_a_stale_runs_heartbeat_leaves_the_newer_runs_status_alone(stale_and_fresh,
                                                                   redis_client, names):
    from novajobs.fencing import fence_of
    from novajobs.records import touch

    stale, fresh = stale_and_fresh
    p = names["prefix"]
    touch(redis_client, p, "sample", "2026-01-01T00:00:00.000+00:00", fence_of(fresh))
    touch(redis_client, p, "sample", "1999-01-01T00:00:00.000+00:00", fence_of(stale))

    assert redis_client.hget(status_key(p, "sample"), "seen_at") == (
        b"2026-01-01T00:00:00.000+00:00")
