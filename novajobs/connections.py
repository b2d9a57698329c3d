"""Lazily created clients, one set per run, closed together.

Each driver is imported only when its store is first used: `novajobs --help` and a run
skipped because the lock is held never pay for (or touch) ClickHouse, PostgreSQL...
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from novajobs import tls
from novajobs.errors import ConfigError
from novajobs.retry import call_with_retry

if TYPE_CHECKING:
    import psycopg
    import redis

    from novajobs.context import Guard
    from novajobs.output import JobLog
    from novajobs.settings import Settings

T = TypeVar("T")

FINISH_TIMEOUT_SEC = 2.0  # per Redis call after a run (see shorten_redis_timeouts)


class Connections:
    def __init__(
        self,
        settings: Settings,
        log: JobLog,
        guard: Guard | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.guard = guard  # the run's deadline and stop request bound every retry
        self._closers: list[Callable[[], Any]] = []
        self._redis_timeouts = (settings.redis_timeout_sec, settings.connect_timeout_sec)

    def retry(self, fn: Callable[[], T], what: str) -> T:
        return call_with_retry(fn, what=what, settings=self.settings, log=self.log,
                               guard=self.guard)

    @cached_property
    def redis_text(self) -> redis.Redis:
        """The same Redis, replies decoded to text (redisconn.text_client): for reading
        streams. No round trip of its own on one server; a cluster's slots are asked
        once, from the nodes ``redis`` knows."""
        from novajobs.redisconn import text_client

        client = self.retry(lambda: text_client(self.redis, self.settings), "connect to Redis")
        self._closers.append(client.close)
        return client

    @cached_property
    def redis(self) -> redis.Redis:
        """One server or a Redis Cluster, whichever REDIS_URL names (redisconn.py)."""
        from novajobs.redisconn import connect_redis

        timeouts = self._redis_timeouts
        client = self.retry(lambda: connect_redis(self.settings, *timeouts), "connect to Redis")
        self._closers.append(client.close)
        return client

    def shorten_redis_timeouts(self) -> None:
        """From now on ``redis`` waits at most FINISH_TIMEOUT_SEC per call: for the writes
        after a run (release, record, alert cooldown), which must not hang on a Redis that
        stopped answering. A healthy Redis answers them in milliseconds."""
        from novajobs.redisconn import with_timeouts

        s = self.settings
        short = min(s.redis_timeout_sec, FINISH_TIMEOUT_SEC)
        self._redis_timeouts = (short, min(s.connect_timeout_sec, short))
        current = self.__dict__.get("redis")
        if current is not None:  # else the next use connects with the short timeouts
            client = with_timeouts(current, s, *self._redis_timeouts)
            if client is not current:
                self._closers.append(client.close)
                self.__dict__["redis"] = client

    @cached_property
    def clickhouse(self) -> Any:
        url = urlsplit(self.settings.clickhouse_url)
        if url.scheme == "chdb":  # one process at a time: wait for another run's (embedded.py)
            from novajobs.context import Guard
            from novajobs.embedded import hold_path

            check_embedded_path(url.path)
            wait = self.settings.connect_timeout_sec
            self._closers.append(hold_path(url.path, self.guard or Guard(), self.log, wait))
        client = self.retry(lambda: clickhouse_client(self.settings), "connect to ClickHouse")
        self._closers.append(client.close)
        return client

    @cached_property
    def pg(self) -> psycopg.Connection[Any]:
        import psycopg

        timeout = max(1, round(self.settings.connect_timeout_sec))
        conn = self.retry(
            lambda: psycopg.connect(
                self.settings.database_url, connect_timeout=timeout, application_name="novajobs"
            ),
            "connect to PostgreSQL",
        )
        self._closers.append(lambda: close_pg(conn))
        return conn

    @cached_property
    def minio(self) -> Any:
        """A MinIO/S3 client. Its own urllib3 retries are off: ours are logged and capped."""
        import urllib3
        from minio import Minio

        s = self.settings
        timeout = urllib3.Timeout(connect=s.connect_timeout_sec, read=s.http_timeout_sec)
        http = urllib3.PoolManager(
            timeout=timeout, maxsize=10, retries=False, **tls.minio_pool_options(s)
        )
        self._closers.append(http.clear)
        return Minio(
            s.minio_endpoint,
            access_key=s.minio_access_key,
            secret_key=s.minio_secret_key,
            secure=s.minio_secure,
            region=s.minio_region,
            http_client=http,
        )

    @cached_property
    def neo4j(self) -> Any:
        import neo4j

        s = self.settings
        driver = neo4j.GraphDatabase.driver(
            s.neo4j_uri,
            auth=(s.neo4j_username, s.neo4j_password),
            connection_timeout=s.connect_timeout_sec,
            connection_acquisition_timeout=s.connect_timeout_sec * 2,
            max_connection_pool_size=4,
        )
        self._closers.append(driver.close)
        return driver

    @cached_property
    def elasticsearch(self) -> Any:
        from elasticsearch import Elasticsearch

        s = self.settings
        client = Elasticsearch(
            s.elasticsearch_url,
            api_key=s.elasticsearch_api_key or None,
            request_timeout=s.http_timeout_sec,
            max_retries=0,  # our retry policy logs and respects the run's budget
            **tls.elasticsearch_options(s),
        )
        self._closers.append(client.close)
        return client

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception as exc:  # closing must never mask the run's own outcome
                self.log.debug("closing a connection failed", error=str(exc))


def redis_client(settings: Settings) -> redis.Redis:
    """Redis for a command outside a run (status, locks, dlq, the console): the same
    client a run gets, built from the same settings."""
    from novajobs.output import JobLog

    return Connections(settings, JobLog()).redis


def close_pg(conn: psycopg.Connection[Any]) -> None:
    """Close, cancelling first a query a stop left running: the server would otherwise go
    on waiting in it (a lock wait does not notice the client left), holding its locks."""
    from psycopg.pq import TransactionStatus

    if conn.info.transaction_status == TransactionStatus.ACTIVE:
        with contextlib.suppress(Exception):  # best effort: the server ends it when it can
            conn.cancel_safe(timeout=FINISH_TIMEOUT_SEC)
    conn.close()


def check_embedded_path(path: str) -> None:
    if not os.path.isdir(path):  # chdb would create it, or fail with a traceback
        raise ConfigError(f"clickhouse_url: the embedded ClickHouse path {path} is not an "
                          "existing directory")


def clickhouse_client(settings: Settings) -> Any:
    """A clickhouse-connect client for ``http(s)://user:pass@host:port/db`` or
    ``chdb:///path?database=db`` (embedded ClickHouse, same client API)."""
    import clickhouse_connect

    url = urlsplit(settings.clickhouse_url)
    # clickhouse-connect truncates its timeouts to whole seconds (0.5 -> 0: "cannot be
    # set to a value less than or equal to 0"): round up instead.
    timeout_sec = math.ceil(settings.ch_timeout_ms / 1000)
    if url.scheme == "chdb":
        check_embedded_path(url.path)
        database = parse_qs(url.query).get("database", [None])[0]
        return clickhouse_connect.get_client(interface="chdb", path=url.path, database=database)
    return clickhouse_connect.get_client(
        interface=url.scheme,
        host=url.hostname,
        port=url.port or (8443 if url.scheme == "https" else 8123),
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password else "",
        database=url.path.strip("/") or None,
        connect_timeout=math.ceil(settings.connect_timeout_sec),
        send_receive_timeout=timeout_sec,
        query_retries=0,  # ours are logged and bounded by the run (it tried 3x each of ours)
        **tls.clickhouse_options(settings),
    )
