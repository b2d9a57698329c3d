"""TLS to every store, against real servers speaking TLS with a throwaway CA
(scripts/tls_servers.py): it works with the right CA, and the wrong CA, the wrong host
name or a missing file is exit 78 with one line -- verification is never off."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import one_line_error

from novajobs_dev import demo_data, tls_servers

BLOCK = "auth:block:token:"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tls_servers.make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="novajobs-tls-"))  # not under pytest's 0700 dir:
    directory.chmod(0o755)  # the postgres user must reach its data dir
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_redis(tls_dir: Path, certs: Any) -> Iterator[Any]:
    server = tls_servers.TlsRedis(tls_dir, certs)
    yield server
    server.down()


@pytest.fixture(scope="module")
def tls_pg(tls_dir: Path, certs: Any) -> Iterator[Any]:
    server = tls_servers.TlsPostgres(tls_dir, certs)
    yield server
    server.down()


@pytest.fixture(scope="module")
def tls_s3(tls_dir: Path, certs: Any) -> Iterator[Any]:
    server = tls_servers.TlsS3(tls_dir, certs)
    yield server
    server.down()


def one_line(result: Any, needle: str) -> None:
    one_line_error(result, 78, needle)  # a TLS setting or certificate: a configuration error


# -- Redis ----------------------------------------------------------------------------------


def rediss_env(tls_redis: Any, certs: Any, **overrides: str) -> dict[str, str]:
    return {"REDIS_URL": tls_redis.url, "NOVAJOBS_TLS_CA_FILE": certs.ca,
            "NOVAJOBS_REDIS_TLS_CERT_FILE": certs.client,
            "NOVAJOBS_REDIS_TLS_KEY_FILE": certs.client_key, **overrides}


def test_rediss_with_the_ca_and_a_client_certificate(tls_redis, certs, cli, names):
    import redis

    r = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=certs.ca, ssl_certfile=certs.client,
                             ssl_keyfile=certs.client_key)
    now = int(time.time())
    r.set(f"{names['prefix']}{BLOCK}old", now - 10)
    r.set(f"{names['prefix']}{BLOCK}live", now + 600)

    result = cli("clean-token-blacklist", "--json", extra_env=rediss_env(tls_redis, certs))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counters"]["deleted"] == 1
    assert r.exists(f"{names['prefix']}{BLOCK}old") == 0
    assert r.ttl(f"{names['prefix']}{BLOCK}live") > 0
    r.close()


def test_rediss_with_the_wrong_ca(tls_redis, certs, cli):
    env = rediss_env(tls_redis, certs, NOVAJOBS_TLS_CA_FILE=certs.other_ca)
    one_line(cli("clean-token-blacklist", extra_env=env),
             "Redis TLS verification failed: certificate verify failed")


def test_rediss_with_the_wrong_host_name(tls_redis, certs, cli):
    env = rediss_env(tls_redis, certs, REDIS_URL=tls_redis.url.replace("127.0.0.1", "localhost"))
    one_line(cli("clean-token-blacklist", extra_env=env),
             "Redis TLS verification failed: certificate verify failed: Hostname mismatch,"
             " certificate is not valid for 'localhost'")


def test_rediss_without_the_client_certificate_the_server_requires(tls_redis, certs, cli):
    """What makes the first test prove the certificate is sent. Under TLS 1.3 the server
    refuses it after the handshake, and the client sees the connection closed: exit 69
    (unavailable) or 78 when the alert itself arrives first."""
    env = rediss_env(tls_redis, certs, NOVAJOBS_REDIS_TLS_CERT_FILE="",
                     NOVAJOBS_REDIS_TLS_KEY_FILE="")
    result = cli("clean-token-blacklist", extra_env=env)
    assert result.returncode in (69, 78), result.stderr
    assert "Traceback" not in result.stderr


def test_tls_options_in_the_redis_url_are_refused(tls_redis, certs, cli):
    env = rediss_env(tls_redis, certs, REDIS_URL=tls_redis.url + "?ssl_cert_reqs=none")
    one_line(cli("clean-token-blacklist", extra_env=env), "sets ssl_cert_reqs in the URL")


def test_a_ca_file_that_does_not_exist_is_named_before_any_connection(cli, tmp_path):
    # Nothing listens on the URL: a connection attempt would be exit 69, not 78.
    env = {"REDIS_URL": "rediss://127.0.0.1:9/0",
           "NOVAJOBS_TLS_CA_FILE": str(tmp_path / "missing-ca.pem")}
    one_line(cli("clean-token-blacklist", extra_env=env),
             f"setting tls_ca_file (env NOVAJOBS_TLS_CA_FILE) names {tmp_path}/missing-ca.pem,"
             " which cannot be read")
    (tmp_path / "not-a-ca.pem").write_text("hello")
    env["NOVAJOBS_TLS_CA_FILE"] = str(tmp_path / "not-a-ca.pem")
    one_line(cli("clean-token-blacklist", extra_env=env), "which holds no PEM certificate")


# -- PostgreSQL -----------------------------------------------------------------------------


def test_postgres_verify_full_with_sslrootcert(tls_pg, certs, cli):
    url = tls_pg.url(sslmode="verify-full", sslrootcert=certs.ca)

    result = cli("init-db", "--json", extra_env={"DATABASE_URL": url})

    assert result.returncode == 0, result.stderr
    assert {row["action"] for row in json.loads(result.stdout)} == {"created"}


def test_postgres_with_the_wrong_ca_or_host_name(tls_pg, certs, cli):
    wrong_ca = tls_pg.url(sslmode="verify-full", sslrootcert=certs.other_ca)
    one_line(cli("init-db", extra_env={"DATABASE_URL": wrong_ca}),
             "PostgreSQL TLS verification failed: certificate verify failed")
    wrong_host = tls_pg.url(sslmode="verify-full", sslrootcert=certs.ca).replace(
        "127.0.0.1", "localhost")
    one_line(cli("init-db", extra_env={"DATABASE_URL": wrong_host}),
             'PostgreSQL TLS verification failed: server certificate for "127.0.0.1" (and 1'
             ' other name) does not match host name "localhost"')


def test_postgres_sslrootcert_that_does_not_exist(cli, tmp_path):
    url = f"postgresql://postgres@127.0.0.1:9/x?sslmode=verify-full&sslrootcert={tmp_path}/no.pem"
    one_line(cli("init-db", extra_env={"DATABASE_URL": url}),
             f"sslrootcert names {tmp_path}/no.pem, which cannot be read")


# -- S3 -------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tls_s3: Any, certs: Any, pg: Any, pg_tables: Callable[..., None],
              redis_server: None, names: dict[str, str]) -> tuple[Any, dict[str, list[int]]]:
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=certs.ca)
    client = Minio(tls_s3.endpoint, tls_servers.S3_ACCESS_KEY, tls_servers.S3_SECRET_KEY,
                   secure=True, region="us-east-1", http_client=http)
    pg_tables("file_metadata")
    kinds = demo_data.load_files(pg, client, names["bucket"], seed=3, max_size=512, live=5,
                                 marked=6, recent=2, missing=0, held=0)
    return client, kinds


def s3_env(tls_s3: Any, ca: str) -> dict[str, str]:
    return {"MINIO_ENDPOINT": tls_s3.endpoint, "MINIO_SECURE": "true",
            "NOVAJOBS_TLS_CA_FILE": ca}


def test_s3_over_https_with_a_custom_ca_and_the_wrong_ca_or_host_name(tls_s3, certs, tls_files,
                                                                     cli, names):
    client, kinds = tls_files

    wrong = cli("gc-files",
                extra_env=s3_env(tls_s3, certs.other_ca))
    host = cli("gc-files", extra_env={**s3_env(tls_s3, certs.ca), "MINIO_ENDPOINT":
                                      tls_s3.endpoint.replace("127.0.0.1", "localhost")})
    left_after_wrong = sum(1 for _ in client.list_objects(names["bucket"], recursive=True))
    right = cli("gc-files", "--json",
                extra_env=s3_env(tls_s3, certs.ca))

    one_line(wrong, "S3 TLS verification failed: certificate verify failed")
    one_line(host, "S3 TLS verification failed: certificate verify failed: Hostname mismatch")
    assert left_after_wrong == 13  # nothing deleted through an unverified connection
    assert right.returncode == 0, right.stderr
    left = {o.object_name for o in client.list_objects(names["bucket"], recursive=True)}
    assert len(left) == 7 and json.loads(right.stdout)["counters"]["files_deleted"] == 6
    assert len(kinds["marked"]) == 6


# -- Elasticsearch --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_es(es_server: None, stack: Any, certs: Any) -> Iterator[Any]:
    proxy = tls_servers.TlsProxy(stack.ports["es"], certs)
    yield proxy
    proxy.down()


def test_elasticsearch_over_https_with_a_ca(tls_es, certs, redis_server, cli, names):
    url = f"https://127.0.0.1:{tls_es.port}"
    args = ("forcemerge-indices", "--pattern", f"{names['schema']}-*", "--dry-run", "--json")

    right = cli(*args, extra_env={"ELASTICSEARCH_URL": url, "NOVAJOBS_TLS_CA_FILE": certs.ca})
    wrong = cli(*args, extra_env={"ELASTICSEARCH_URL": url,
                                  "NOVAJOBS_TLS_CA_FILE": certs.other_ca})
    host = cli(*args, extra_env={"ELASTICSEARCH_URL": url.replace("127.0.0.1", "localhost"),
                                 "NOVAJOBS_TLS_CA_FILE": certs.ca})

    assert right.returncode == 0, right.stderr
    one_line(wrong, "Elasticsearch TLS verification failed: certificate verify failed")
    one_line(host, "Elasticsearch TLS verification failed")
