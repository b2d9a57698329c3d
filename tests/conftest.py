"""Real servers for the tests, started by the suite itself on loopback (novajobs_dev.stack).

Each test gets its own Redis key prefix, PostgreSQL schema, ClickHouse database and
(where used) bucket, so tests never see each other's data. A server that cannot start
fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import run_novajobs

from novajobs.settings import Settings, load_settings
from novajobs_dev import demo_data, topology
from novajobs_dev import stack as stack_module
from novajobs_dev.netfaults import refused_port


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.cluster``: run the test on one Redis and on a Redis Cluster."""
    if metafunc.definition.get_closest_marker("cluster"):
        metafunc.parametrize("redis_topology", ["single", "cluster"], indirect=True)

ROOT = Path(__file__).resolve().parent.parent

# Fixtures of one store's tests, in their own modules (tests/ is on sys.path).
pytest_plugins = ("es_indices", "s3_faults")


@pytest.fixture(scope="session")
def stack() -> Iterator[Any]:
    directory = tempfile.mkdtemp(prefix="novajobs-test-stack-")
    os.chmod(directory, 0o755)  # the postgres user must reach its data dir
    the_stack = stack_module.Stack(directory, stack_module.free_base_port())
    yield the_stack
    the_stack.down()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_env(stack: Any) -> dict[str, str]:
    return dict(stack.env())


def _service(stack: Any, name: str) -> None:
    stack.up((name,))


@pytest.fixture(scope="session")
def redis_server(stack: Any) -> None:
    _service(stack, "redis")


@pytest.fixture(scope="session")
def pg_server(stack: Any) -> None:
    _service(stack, "postgres")


@pytest.fixture(scope="session")
def s3_server(stack: Any) -> None:
    _service(stack, "s3")


@pytest.fixture(scope="session")
def neo4j_server(stack: Any) -> None:
    _service(stack, "neo4j")


@pytest.fixture(scope="session")
def es_server(stack: Any) -> None:
    _service(stack, "es")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A Redis Cluster of 3 primaries with a replica each (scripts/topology.py), shared by
    the tests marked ``cluster``. Tests that kill nodes start their own."""
    with topology.RedisClusterServers() as cluster:
        yield cluster


@pytest.fixture
def own_cluster() -> Iterator[Any]:
    """A Redis Cluster of the test's own (3 primaries + 3 replicas): for tests that kill
    or reshard nodes."""
    with topology.RedisClusterServers() as cluster:
        yield cluster


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "single"))


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_topology: str, stack: Any) -> str:
    """REDIS_URL of this test: the stack's Redis, or one node of the shared cluster."""
    if redis_topology == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(stack.env()["REDIS_URL"])


@pytest.fixture
def names() -> dict[str, str]:
    """This test's own namespace in every store."""
    tag = uuid.uuid4().hex[:10]
    return {"prefix": f"t{tag}:", "schema": f"t_{tag}", "database": f"t_{tag}",
            "bucket": f"t-{tag}"}


@pytest.fixture
def env(stack: Any, names: dict[str, str], redis_url: str) -> dict[str, str]:
    """Environment variables that point novajobs at this test's namespace."""
    e = dict(stack.env())
    e["REDIS_URL"] = redis_url
    e["NOVAJOBS_REDIS_PREFIX"] = names["prefix"]
    e["DATABASE_URL"] += f"?options=-csearch_path%3D{names['schema']}"
    e["CLICKHOUSE_URL"] = e["CLICKHOUSE_URL"].replace("database=default",
                                                      f"database={names['database']}")
    return e


@pytest.fixture
def make_settings(env: dict[str, str]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return load_settings(environ=env, overrides=overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def redis_client(redis_server: None, redis_url: str, redis_topology: str) -> Iterator[Any]:
    """A client for the test's Redis: a RedisCluster when the test runs on the cluster."""
    import redis

    kind = redis.RedisCluster if redis_topology == "cluster" else redis.Redis
    client = kind.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def pg(pg_server: None, stack: Any, names: dict[str, str]) -> Iterator[Any]:
    """An autocommit connection whose search_path is this test's fresh schema."""
    import psycopg
    from psycopg import sql

    conn = psycopg.connect(stack.env()["DATABASE_URL"], autocommit=True)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(names["schema"])))
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(names["schema"])))
    yield conn
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(names["schema"])))
    conn.close()


class ClickHouse:
    """The test's ClickHouse database, through an in-process chdb client.

    chdb lets only one process use the data path at a time: call ``release()`` before a
    subprocess (e.g. the CLI) needs ClickHouse; the next query reopens the client.
    """

    def __init__(self, url: str, database: str) -> None:
        self.url, self.database = url, database
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import clickhouse_connect

            path = self.url.split("://", 1)[1].split("?", 1)[0]
            admin = clickhouse_connect.get_client(interface="chdb", path=path)
            admin.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            admin.close()
            self._client = clickhouse_connect.get_client(interface="chdb", path=path,
                                                         database=self.database)
        return self._client

    def command(self, sql: str, **kw: Any) -> Any:
        return self.client.command(sql, **kw)

    def insert(self, table: str, rows: list[list[Any]], columns: list[str]) -> None:
        self.client.insert(table, rows, column_names=columns)

    def query(self, sql: str, **kw: Any) -> list[tuple[Any, ...]]:
        return list(self.client.query(sql, **kw).result_rows)

    def release(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@pytest.fixture
def ch(stack: Any, names: dict[str, str]) -> Iterator[ClickHouse]:
    (stack.dir / "clickhouse").mkdir(parents=True, exist_ok=True)
    db = ClickHouse(stack.env()["CLICKHOUSE_URL"], names["database"])
    for ddl in demo_data.CLICKHOUSE_DDL:
        db.command(ddl)
    yield db
    db.command(f"DROP DATABASE IF EXISTS {names['database']}")
    db.release()


@pytest.fixture
def cli(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `novajobs ARGS...` as a real process in this test's namespace."""

    def run(*args: str, extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_novajobs({**env, **(extra_env or {})}, *args, timeout=timeout)

    return run


@pytest.fixture
def pg_tables(pg: Any) -> Callable[..., None]:
    """Create contract tables (novajobs_dev.demo_data.POSTGRES_DDL) in the test's schema."""

    def create(*tables: str) -> None:
        for table in tables or tuple(demo_data.POSTGRES_DDL):
            pg.execute(demo_data.POSTGRES_DDL[table])

    return create


@pytest.fixture
def report_db(pg: Any, pg_tables: Callable[..., None]) -> Any:
    """The contract tables the reports read (chat_messages with one DEFAULT partition) and
    the tables novajobs owns."""
    from novajobs import schema

    pg_tables("users", "chat_messages", "audit_logs", "file_metadata")
    pg.execute("CREATE TABLE chat_messages_default PARTITION OF chat_messages DEFAULT")
    schema.ensure_tables(pg)
    return pg


@pytest.fixture
def audit_db(pg: Any, pg_tables: Callable[..., None]) -> Any:
    """The test's schema with audit_logs and the stream dedupe table: the audit handler's."""
    from novajobs.schema import ensure_tables

    pg_tables("audit_logs")
    ensure_tables(pg, ["novajobs_stream_dedupe"])
    return pg


@pytest.fixture
def minio_client(s3_server: None, stack: Any, names: dict[str, str]) -> Iterator[Any]:
    """A MinIO SDK client for the stack's S3 store; the test's bucket (names["bucket"])
    exists, and is emptied and removed afterwards."""
    from minio.deleteobjects import DeleteObject

    client = stack_module.minio_client(stack.env())
    bucket = names["bucket"]
    client.make_bucket(bucket)
    yield client
    leftovers = (DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True))
    list(client.remove_objects(bucket, leftovers))
    client.remove_bucket(bucket)


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian package prometheus-pushgateway) on a free
    loopback port, in memory only; yields its base URL. Tests use their own job names."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway is not installed (run scripts/setup.sh)")
    port = refused_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http_ready(f"{url}/-/ready", proc, log)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _wait_http_ready(url: str, proc: subprocess.Popen[bytes], log: Any) -> None:
    import time
    import urllib.request

    give_up = time.monotonic() + 10
    while time.monotonic() < give_up and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    log.seek(0)
    pytest.fail(f"{url} did not become ready: {log.read().decode(errors='replace')[-500:]}")


class WebhookReceiver:
    """A real HTTP server on loopback recording the JSON bodies POSTed to it (alerts).

    ``status`` is what it answers (set 500 to play a broken receiver)."""

    def __init__(self) -> None:
        import http.server
        import threading

        receiver = self
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import json

                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.headers.append(dict(self.headers))
                receiver.bodies.append(json.loads(raw))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/novajobs"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def handlers() -> Iterator[Callable[[str, Any], None]]:
    """Register stream handlers for one test: ``handlers("name", fn)``."""
    from novajobs.streams.handlers import register_handler, unregister_handler

    registered: list[str] = []

    def add(name: str, handler: Any) -> None:
        register_handler(name, handler)
        registered.append(name)

    yield add
    for name in registered:
        unregister_handler(name)


@pytest.fixture
def fast(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings for quick drains: short blocking read, no jitter."""

    def make(**kw: Any) -> Settings:
        base: dict[str, Any] = {"drain_block_ms": 100, "stream_retry_jitter": 0.0}
        return make_settings(**{**base, **kw})

    return make
