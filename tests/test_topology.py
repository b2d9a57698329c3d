"""Redis Cluster specifics: detection, wrong nodes, resharding (MOVED/ASK), failover.

The jobs' own behaviour tests run on the cluster too (``@pytest.mark.cluster``); these
are what only a cluster has.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import redis
from support import one_line_error, ring_of_users, run_novajobs, spawn, wait_for

from novajobs.context import JobContext
from novajobs.errors import Outcome
from novajobs.jobs import clean_token_blacklist
from novajobs.lock import JobLock
from novajobs.records import history_key, status_key
from novajobs_dev.netfaults import refused_port

BLOCK = "auth:block:token:"


def blacklist(r: Any, prefix: str, now: int, tag: str = "", n: int = 30) -> None:
    """n entries: a third expired without TTL, a third valid without TTL, a third fine."""
    for i in range(n):
        key = f"{prefix}{BLOCK}{tag}{i}"
        if i % 3 == 0:
            r.set(key, now - 60)
        elif i % 3 == 1:
            r.set(key, now + 3600)
        else:
            r.set(key, now + 600, ex=600)


def test_any_node_will_do_even_a_replica(redis_cluster, env, cli, names):
    replica = next(n.port for n in redis_cluster.nodes() if not n.primary)
    r = redis.RedisCluster.from_url(redis_cluster.url)
    blacklist(r, names["prefix"], int(time.time()))

    result = cli("clean-token-blacklist", "--json",
                 extra_env={"REDIS_URL": f"redis://127.0.0.1:{replica}/0"})

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counters"] == {
        "scanned": 30, "with_ttl": 10, "repaired": 10, "deleted": 10, "unreadable": 0}
    r.close()


def test_redis_mode_cluster_on_a_single_server_is_a_config_error(redis_server, cli):
    result = cli("clean-token-blacklist", extra_env={"NOVAJOBS_REDIS_MODE": "cluster"})
    one_line_error(result, 78, "not a Redis Cluster node (cluster_enabled:0)")


def test_redis_mode_single_on_a_cluster_node_is_a_config_error(redis_cluster, cli, names):
    lock_slot_owner = redis_cluster.primary_of(f"{names['prefix']}job:lock:clean-token-blacklist")
    other = next(n.port for n in redis_cluster.nodes() if n.primary and n.port != lock_slot_owner)

    result = cli("clean-token-blacklist", extra_env={
        "NOVAJOBS_REDIS_MODE": "single", "REDIS_URL": f"redis://127.0.0.1:{other}/0"})

    one_line_error(result, 78, "Redis answered MOVED/ASK: REDIS_URL is a Redis Cluster node")


def test_a_database_number_on_a_cluster_is_a_config_error(redis_cluster, cli):
    result = cli("clean-token-blacklist", extra_env={
        "REDIS_URL": redis_cluster.url.replace("/0", "/2")})
    one_line_error(result, 78, "a Redis Cluster has only database 0")


def test_a_replica_of_a_single_server_is_refused_before_the_lock(redis_server, stack, cli,
                                                                  tmp_path):
    port = refused_port()
    replica = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(stack.ports["redis"])],
        stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis.Redis(port=port).ping(), what="the replica",
                 ignoring=(redis.RedisError,))
        result = cli("clean-token-blacklist",
                     extra_env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    finally:
        replica.terminate()
        replica.wait()
    one_line_error(result, 78, f"is a read-only replica (of 127.0.0.1:{stack.ports['redis']})")


def test_asks_and_moves_during_a_resharding_change_no_count(redis_cluster, make_settings,
                                                            names):
    """Half the keys of one slot are on its new node (the old one answers ASK), then the
    move completes under a client that still has the old map (MOVED)."""
    prefix, now = names["prefix"], int(time.time())
    r = redis.RedisCluster.from_url(redis_cluster.url)
    tag = f"{{{names['prefix']}}}"  # these 30 keys share one slot
    blacklist(r, prefix, now, tag=tag)
    blacklist(r, prefix, now, tag="spread")
    slot = r.keyslot(f"{prefix}{BLOCK}{tag}0")
    source = redis_cluster.primary_of(f"{prefix}{BLOCK}{tag}0")
    target = next(n.port for n in redis_cluster.nodes() if n.primary and n.port != source)
    moved = [f"{prefix}{BLOCK}{tag}{i}" for i in range(0, 30, 2)]
    settings = make_settings(redis_url=redis_cluster.url)
    try:
        redis_cluster.start_migration(slot, target, moved)
        with JobContext(settings, "clean-token-blacklist", dry_run=True) as ctx:
            asked = clean_token_blacklist.run(ctx)
        with JobContext(settings, "clean-token-blacklist") as ctx:
            ctx.redis.ping()  # the client learns the slot map now...
            redis_cluster.finish_migration(slot, target)  # ...and it changes
            done = clean_token_blacklist.run(ctx)
    finally:
        redis_cluster.finish_migration(slot, target)

    assert asked.outcome is Outcome.DRY_RUN, asked.details
    assert {k: asked.details[k] for k in ("scanned", "would_repair", "would_delete")} == {
        "scanned": 60, "would_repair": 20, "would_delete": 20}
    assert done.outcome is Outcome.SUCCESS
    assert {k: done.details[k] for k in ("scanned", "with_ttl", "repaired", "deleted")} == {
        "scanned": 60, "with_ttl": 20, "repaired": 20, "deleted": 20}
    assert r.exists(*moved) == len([i for i in range(0, 30, 2) if i % 3 != 0])
    r.close()


def test_a_lock_survives_the_failover_of_its_primary(own_cluster, names):
    """The lock waits for a replica (WAIT 1), so the promoted replica has it: the holder
    renews it there, and nobody else can take it."""
    r = redis.RedisCluster.from_url(own_cluster.url)
    key = f"{names['prefix']}job:lock:refresh-trending"
    lock = JobLock(r, key, 30, {"run_id": "first"})
    assert lock.acquire() and lock.replicas_acked == 1
    primary = own_cluster.primary_of(key)

    own_cluster.kill(primary)
    own_cluster.wait_for_failover(primary)

    wait_for(lambda: lock.renew(), what="the renewal on the new primary",
             ignoring=(redis.RedisError,))
    assert json.loads(r.get(key))["run_id"] == "first"
    assert not JobLock(r, key, 30, {"run_id": "second"}).acquire()
    assert lock.release()
    r.close()


def test_a_primary_killed_mid_run_ends_with_a_documented_code_and_a_rerun_converges(
        own_cluster, ch, env, names):
    users = 300
    ring_of_users(ch, users)
    ch.release()
    victim = own_cluster.primary_of(f"{names['prefix']}job:lock:refresh-suggestions")
    seed = next(port for port in own_cluster.ports if port != victim)  # must stay reachable
    url = f"redis://127.0.0.1:{seed}/0"
    r = redis.RedisCluster.from_url(url)
    run_env = {**env, "REDIS_URL": url}
    args = ["refresh-suggestions", "--batch-size", "0", "-s", "suggestion_chunk_size=2",
            "-s", "lock_ttl_sec=5"]
    proc = spawn(run_env, *args)
    wait_for(lambda: count_keys(r, names) >= 20, what="the first keys",
             ignoring=(redis.RedisError,))
    own_cluster.kill(victim)
    _, stderr = proc.communicate(timeout=120)
    own_cluster.wait_for_failover(victim)

    # Completed (the failover fit in the retries) or stopped: unavailable / lock lost.
    assert proc.returncode in (0, 69, 4), stderr
    assert "Traceback" not in stderr
    # A run that could not release its lock (the primary was gone) leaves it to expire.
    again = run_novajobs(run_env, *args, "--wait", "10")
    assert again.returncode == 0, stderr + again.stderr
    assert count_keys(r, names) == users
    for user in (1, users // 2, users):  # the ring: each user's one suggestion
        raw = r.get(f"{names['prefix']}nova:cache:suggested_users:{user}")
        assert json.loads(raw) == [{"user_id": (user + 1) % users + 1, "mutual_count": 1}]
    r.close()


def test_a_primary_killed_mid_drain_loses_no_stream_entry(own_cluster, pg, pg_tables, env,
                                                          names):
    """The stream's primary dies while drain-stream works through it: the replica has
    every entry (added before the run), acks lost with the primary mean entries delivered
    again, and the dedupe table keeps each one row."""
    from novajobs.schema import ensure_tables

    pg_tables("audit_logs")
    ensure_tables(pg, ["novajobs_stream_dedupe"])
    total, key = 3000, f"{names['prefix']}stream:audit:log"
    victim = own_cluster.primary_of(key)
    seed = next(port for port in own_cluster.ports if port != victim)
    r = redis.RedisCluster.from_url(f"redis://127.0.0.1:{seed}/0")
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(key, {"user_id": str(i), "action": f"login {i}", "ts": f"{1_700_000_000 + i}"})
    pipe.execute()
    with own_cluster.client(victim) as primary:
        assert primary.execute_command("WAIT", 1, 10_000) == 1  # on its replica too
    run_env = {**env, "REDIS_URL": f"redis://127.0.0.1:{seed}/0"}
    args = ["drain-stream", "-s", "drain_concurrency=1", "-s", "lock_ttl_sec=5",
            "-s", "stream_claim_idle_sec=1", "-s", "drain_message_timeout_sec=0.9"]
    proc = spawn(run_env, *args)
    wait_for(lambda: rows(pg) >= 200, 90, "the first rows", ignoring=(redis.RedisError,))
    own_cluster.kill(victim)
    _, stderr = proc.communicate(timeout=120)
    own_cluster.wait_for_failover(victim)

    assert proc.returncode in (0, 69, 4), stderr
    assert "Traceback" not in stderr
    time.sleep(1.1)  # the dead run's pending entries idle long enough to be reclaimed
    again = run_novajobs(run_env, *args, "--wait", "10")
    assert again.returncode == 0, stderr + again.stderr
    assert pg.execute("SELECT count(*), count(DISTINCT user_id), min(user_id), max(user_id)"
                      " FROM audit_logs").fetchone() == (total, total, 0, total - 1)
    assert int(r.xpending(key, "novajobs")["pending"]) == 0
    r.close()


def test_slots_without_a_node_are_unavailable_in_seconds(own_cluster, env, names):
    """A primary and its replica both gone: the cluster answers CLUSTERDOWN (the lock's
    own slot is alive), which is retried, then exit 69 with one line -- not 78, and no
    traceback."""
    alive = own_cluster.primary_of(f"{names['prefix']}job:lock:clean-token-blacklist")
    victim = next(n for n in own_cluster.nodes() if n.primary and n.port != alive)
    with own_cluster.client(victim.port) as c:
        [replica] = c.execute_command("CLUSTER", "REPLICAS", victim.node_id)
    own_cluster.kill(int(replica.split()[1].split("@")[0].rsplit(":", 1)[1]))
    own_cluster.kill(victim.port)
    wait_for(lambda: all("cluster_state:fail" in own_cluster.client(port).execute_command(
        "CLUSTER", "INFO") for port in own_cluster.live_ports()), what="CLUSTERDOWN",
        ignoring=(redis.RedisError,))

    started = time.monotonic()
    result = run_novajobs({**env, "REDIS_URL": f"redis://127.0.0.1:{alive}/0"},
                          "clean-token-blacklist")

    one_line_error(result, 69, "ClusterDownError: The cluster is down")
    assert result.stderr.strip().splitlines()[-1].count('"exit_code": 69') == 1
    assert time.monotonic() - started < 60  # the retries, not a hang


def test_migrate_keys_moves_the_run_records_of_an_older_version(redis_client, settings, cli,
                                                                 names):
    p = names["prefix"]
    old = {"job": "refresh-trending", "run_id": "old", "outcome": "success", "counters": "{}"}
    redis_client.hset(f"{p}job:status:refresh-trending", mapping=old)
    redis_client.rpush(f"{p}job:history:refresh-trending", json.dumps({"run_id": "old-1"}),
                       json.dumps({"run_id": "old-2"}))
    redis_client.hset(f"{p}job:status:gc-files:2-of-3", mapping={**old, "job": "gc-files"})
    redis_client.rpush(f"{p}job:history:gc-files:2-of-3", json.dumps({"run_id": "gc-old"}))
    # gc-files 2/3 ran once since the upgrade: its status is the newer one
    redis_client.hset(status_key(p, "gc-files:2-of-3"), mapping={**old, "run_id": "new"})
    redis_client.lpush(history_key(p, "gc-files:2-of-3"), json.dumps({"run_id": "gc-new"}))

    first = cli("migrate-keys", "--json")
    second = cli("migrate-keys", "--json")

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"run_records": ["gc-files:2-of-3", "refresh-trending"]}
    assert json.loads(second.stdout) == {"run_records": []}
    assert sorted(k.decode() for k in redis_client.scan_iter(f"{p}job:*")) == sorted(
        [status_key(p, "refresh-trending"), history_key(p, "refresh-trending"),
         status_key(p, "gc-files:2-of-3"), history_key(p, "gc-files:2-of-3")])
    assert redis_client.hget(status_key(p, "refresh-trending"), "run_id") == b"old"
    assert redis_client.hget(status_key(p, "gc-files:2-of-3"), "run_id") == b"new"
    assert [json.loads(h)["run_id"] for h in
            redis_client.lrange(history_key(p, "gc-files:2-of-3"), 0, -1)] == ["gc-new", "gc-old"]
    assert [json.loads(h)["run_id"] for h in
            redis_client.lrange(history_key(p, "refresh-trending"), 0, -1)] == ["old-1", "old-2"]


# -- helpers --------------------------------------------------------------------------------


def rows(pg: Any) -> int:
    return int(pg.execute("SELECT count(*) FROM audit_logs").fetchone()[0])


def count_keys(r: Any, names: dict[str, str]) -> int:
    return sum(1 for _ in r.scan_iter(f"{names['prefix']}nova:cache:suggested_users:*"))
