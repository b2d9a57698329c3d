"""Connecting to Redis: one server or a Redis Cluster, plain or TLS; and the few places
where the two topologies differ for novajobs (scanning, replication).

``redis_mode`` auto (the default) asks the node ``REDIS_URL`` names (``INFO``): with
``cluster_enabled:1`` novajobs uses redis-py's ``RedisCluster``, which discovers every
node from that one and follows ``MOVED``/``ASK`` redirections; otherwise the plain
client. ``cluster`` and ``single`` skip the question (for a server that refuses INFO).

Either client is typed ``redis.Redis`` for the rest of novajobs: every command novajobs
sends behaves the same on both, as long as the keys one script or transaction touches
share a hash slot (see docs on key names). What differs lives here: SCAN covers one
node (``scan_nodes`` gives one client per primary) and a write's replication can be
awaited (``set_nx_replicated``).
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from novajobs.errors import ConfigError
from novajobs.tls import redis_options

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings


def connect_redis(
    settings: Settings, timeout_sec: float | None = None, connect_timeout_sec: float | None = None
) -> redis.Redis:
    """A client for ``settings.redis_url``, of the right kind. Raises ConfigError (one
    line) for a topology novajobs cannot use, and the driver's own error when the server
    cannot be reached (transient: the caller retries)."""
    import redis
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException, ResponseError

    options = _client_options(settings, timeout_sec, connect_timeout_sec)
    mode = settings.redis_mode
    if mode != "cluster":
        client = redis.Redis.from_url(settings.redis_url, **options)
        try:
            mode = _probe(client, settings) if mode == "auto" else mode
        except BaseException:
            client.close()
            raise
        if mode == "single":
            return client
        client.close()
    try:
        cluster = RedisCluster.from_url(settings.redis_url, **options)
    except (RedisClusterException, ResponseError) as exc:
        raise ConfigError(f"REDIS_URL {_where(settings)}: {_cluster_complaint(exc)}") from None
    return cast("redis.Redis", cluster)


def with_timeouts(
    client: redis.Redis, settings: Settings, timeout_sec: float, connect_timeout_sec: float
) -> redis.Redis:
    """A client of the same kind with other timeouts, without a round trip where it can
    (a plain client connects lazily). A cluster client learns the slots at once, from the
    nodes ``client`` knows; should that fail, ``client`` itself is returned."""
    try:
        return _sibling(client, settings, _client_options(settings, timeout_sec,
                                                          connect_timeout_sec))
    except Exception:  # the cluster does not answer now: keep what we have
        return client


def text_client(client: redis.Redis, settings: Settings) -> redis.Redis:
    """A client of the same kind whose replies are text: UTF-8 decoded by the reply
    parser (hiredis, in C), an invalid byte as a lone surrogate that
    ``surrogates_seen`` counts (see ``TEXT_ERRORS``). For reading many stream entries
    at the cost of reading bytes."""
    options = _client_options(settings)
    options.update(decode_responses=True, encoding_errors=TEXT_ERRORS)
    return _sibling(client, settings, options)


def _sibling(client: redis.Redis, settings: Settings, options: dict[str, Any]) -> redis.Redis:
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    if not is_cluster(client):
        return redis.Redis.from_url(settings.redis_url, **options)
    known: Any = client
    node: Any = ClusterNode  # untyped constructor
    nodes = [node(n.host, n.port) for n in known.get_nodes()]
    return cast("redis.Redis", RedisCluster.from_url(
        settings.redis_url, startup_nodes=nodes, **options))


# The decoding error handler of ``text_client``: Python's surrogateescape (each invalid
# byte becomes U+DC80..U+DCFF, and ``.encode("utf-8", "surrogateescape")`` gives the
# bytes back exactly), counting as it goes. A reply read while the count did not move
# is valid UTF-8 throughout, so no reader needs to look for surrogates in every string.
TEXT_ERRORS = "novajobs-surrogateescape"
_surrogateescape = codecs.lookup_error("surrogateescape")
_surrogates = itertools.count(1)
_seen = 0


def _escape(exc: UnicodeError) -> tuple[str | bytes, int]:
    global _seen
    _seen = next(_surrogates)
    return _surrogateescape(exc)


def surrogates_seen() -> int:
    """Invalid byte sequences decoded by any text client of this process so far (a
    reader compares the count before and after a read)."""
    return _seen


codecs.register_error(TEXT_ERRORS, _escape)


def _client_options(
    settings: Settings, timeout_sec: float | None = None, connect_timeout_sec: float | None = None
) -> dict[str, Any]:
    s = settings
    return {
        "max_connections": s.redis_pool_size,
        "socket_timeout": timeout_sec or s.redis_timeout_sec,
        "socket_connect_timeout": connect_timeout_sec or s.connect_timeout_sec,
        "health_check_interval": 30,
        **redis_options(settings),
    }


def _probe(client: redis.Redis, settings: Settings) -> str:
    """'cluster' or 'single', from the node's INFO; a lone replica is refused."""
    from redis.exceptions import ResponseError

    try:
        cluster = client.info("cluster")
        replication = client.info("replication")
    except ResponseError as exc:  # INFO renamed or denied by ACL, or SELECT on a cluster
        if "cluster mode" in str(exc):
            raise ConfigError(f"REDIS_URL {_where(settings)}: {_cluster_complaint(exc)}") from None
        raise ConfigError(
            f"REDIS_URL {_where(settings)}: cannot tell a Redis Cluster from a single server"
            f" (INFO failed: {exc}); set redis_mode to cluster or single"
        ) from None
    if cluster.get("cluster_enabled") in (1, "1"):
        return "cluster"
    if replication.get("role") == "slave":
        primary = f"{replication.get('master_host')}:{replication.get('master_port')}"
        raise ConfigError(
            f"REDIS_URL {_where(settings)} is a read-only replica (of {primary}):"
            " point it at the primary"
        )
    return "single"


def _cluster_complaint(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "not enabled" in text.lower():
        return "not a Redis Cluster node (cluster_enabled:0) but redis_mode is cluster"
    if "db" in text.lower() or "select" in text.lower():
        return "a Redis Cluster has only database 0; drop the /N from the URL"
    return f"cannot use it as a Redis Cluster: {text}"


def _where(settings: Settings) -> str:
    url = urlsplit(settings.redis_url)
    return f"({url.scheme}://{url.hostname}:{url.port or 6379})"


def is_cluster(r: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(r, RedisCluster)


def scan_nodes(r: redis.Redis) -> list[redis.Redis]:
    """One plain client per primary (the one client on a single server): SCAN walks one
    node's keyspace, so a cluster-wide scan is one SCAN per primary."""
    if not is_cluster(r):
        return [r]
    cluster: Any = r
    return [cluster.get_redis_connection(node) for node in cluster.get_primaries()]


Call = tuple[bytes | str, Callable[[Any], Any]]  # a key, and what queues its command


def pipelined(r: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run ``calls`` -- (key, queue the command on a client or pipeline) -- in pipelines,
    one per node that serves their keys; results in order, errors as values.

    On a cluster this replaces redis-py's cluster pipeline, which refuses scripts: each
    node gets a plain pipeline, and a command answered ``MOVED``/``ASK`` (its slot moved
    while we were at it: resharding) is sent again through the cluster client, which
    follows the redirection.
    """
    from redis.exceptions import AskError, ResponseError

    groups: dict[str, tuple[Any, list[int]]] = {}
    cluster: Any = r if is_cluster(r) else None
    for i, (key, _) in enumerate(calls):
        node = cluster.get_node_from_key(key) if cluster else None
        name = node.name if node else ""
        if name not in groups:
            groups[name] = (cluster.get_redis_connection(node) if cluster else r, [])
        groups[name][1].append(i)
    results: list[Any] = [None] * len(calls)
    for client, indexes in groups.values():
        pipe = client.pipeline(transaction=False)
        for i in indexes:
            calls[i][1](pipe)
        for i, result in zip(indexes, pipe.execute(raise_on_error=False), strict=True):
            results[i] = result
    for i, result in enumerate(results):
        if cluster and isinstance(result, AskError):  # MovedError is an AskError
            try:
                results[i] = calls[i][1](r)
            except ResponseError as exc:
                results[i] = exc
    return results


def node_name(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}"


def write_and_wait(
    r: redis.Redis, key: str, write: Callable[[Any], Any], wait_ms: int
) -> tuple[Any, int | None]:
    """``write(client)`` -- a write of ``key`` -- and, if the key's primary has replicas,
    ``WAIT 1 wait_ms`` on the same connection (one pipeline to that node). Returns the
    write's reply and how many replicas acknowledged it (None: no replica to wait for,
    or the key's slot moved meanwhile and the write went through the cluster client)."""
    from redis.exceptions import AskError

    replicas, node = _replicas_for(r, key)
    if not replicas:
        return write(r), None
    pipe = node.pipeline(transaction=False)
    write(pipe)
    pipe.wait(1, wait_ms)
    reply, acked = pipe.execute(raise_on_error=False)
    if isinstance(reply, AskError):  # MOVED/ASK: resharding
        return write(r), None
    if isinstance(reply, Exception):
        raise reply
    return reply, int(acked)


def _replicas_for(r: redis.Redis, key: str) -> tuple[int, redis.Redis]:
    """How many replicas the primary serving ``key`` has, and a plain client to it."""
    if is_cluster(r):
        cluster: Any = r
        nodes = cluster.nodes_manager.slots_cache.get(cluster.keyslot(key)) or []
        if not nodes:
            return 0, r
        return len(nodes) - 1, cluster.get_redis_connection(nodes[0])
    return int(r.info("replication").get("connected_slaves", 0)), r
