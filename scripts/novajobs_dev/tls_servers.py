"""Throwaway TLS for the tests: a CA made with openssl, and real servers speaking TLS.

``make_certs(dir)``: a CA, a server certificate for ``IP:127.0.0.1`` only (so a URL
naming ``localhost`` is the wrong host name), a client certificate, and a second CA
that signed nothing of ours (the wrong CA). Servers, each on a free loopback port:

- ``TlsRedis``: ``redis-server --port 0 --tls-port P``, client certificates required;
- ``TlsPostgres``: PostgreSQL 15 with ``ssl=on`` (plain connections refused);
- ``TlsS3``: SeaweedFS ``weed mini`` with ``-s3.port.https``;
- ``TlsProxy``: TLS in front of a plain server, for the Elasticsearch emulator (it has
  no TLS of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novajobs_dev.stack import (
    PG_BIN,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    StackError,
    _venv_bin,
    _wait,
    free_base_port,
)


@dataclass(frozen=True)
class Certs:
    dir: Path

    def __getattr__(self, name: str) -> str:  # certs.ca -> DIR/ca.crt, certs.ca_key -> ca.key
        if name.endswith("_key"):
            return str(self.dir / f"{name[:-4]}.key")
        return str(self.dir / f"{name}.crt")


def make_certs(directory: str | Path) -> Certs:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", *_ec_key(d / f"{ca}.key"), "-out", str(d / f"{ca}.crt"),
                 "-days", "2", "-subj", f"/CN=novajobs test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _leaf(d, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    _leaf(d, "client", "/CN=novajobs", "extendedKeyUsage=clientAuth")
    return Certs(d)


def _ec_key(path: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(path)]


def _leaf(d: Path, name: str, subject: str, extensions: str) -> None:
    ext = d / f"{name}.ext"
    ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}\n")
    _openssl("req", *_ec_key(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
             "-subj", subject)
    _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{name}.crt"),
             "-days", "2", "-extfile", str(ext))


def _openssl(*args: str) -> None:
    _run(["openssl", *args])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"{' '.join(argv[:6])} ... failed: {(done.stderr or done.stdout)[-800:]}")


class _Server:
    """One process of ours on loopback, stopped by ``down()``."""

    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], log: Path, **kw: Any) -> None:
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, **kw)

    def down(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class TlsRedis(_Server):
    def __init__(self, directory: Path, certs: Certs) -> None:
        self.port = free_base_port() + 1
        data = directory / "redis-tls"
        data.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self._spawn([binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(data),
                     "--tls-cert-file", certs.server, "--tls-key-file", certs.server_key,
                     "--tls-ca-cert-file", certs.ca, "--tls-auth-clients", "yes"],
                    directory / "redis-tls.log")
        _wait("redis (TLS)", lambda: _tls_ready(self.port, certs, client=True),
              log=directory / "redis-tls.log")

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"


class TlsPostgres(_Server):
    """A PostgreSQL of its own with ``ssl=on`` and ``hostssl`` only: no plain logins."""

    def __init__(self, directory: Path, certs: Certs) -> None:
        self.port = free_base_port() + 2
        self.root = directory / "pg-tls"
        self.root.mkdir(parents=True, exist_ok=True)
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        for name in ("server.crt", "server.key"):
            shutil.copy(certs.dir / name, self.root / name)
            os.chmod(self.root / name, 0o600)
        if as_postgres:
            for parent in [self.root, *self.root.parents][:-1]:
                parent.chmod(parent.stat().st_mode | 0o011)
            for path in (self.root, self.root / "server.crt", self.root / "server.key"):
                shutil.chown(path, "postgres", "postgres")
        data = self.root / "data"
        _run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
              "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c ssl=on -c ssl_cert_file={self.root / 'server.crt'} "
                f"-c ssl_key_file={self.root / 'server.key'}")
        self._pg_ctl = [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data)]
        _run([*self._pg_ctl, "-l", str(self.root / "log"), "-w", "-o", opts, "start"])

    def url(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?{query}"

    def down(self) -> None:
        subprocess.run([*self._pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)


class TlsS3(_Server):
    def __init__(self, directory: Path, certs: Certs) -> None:
        b = free_base_port()
        self.port = b + 14
        data = directory / "s3-tls"
        data.mkdir(parents=True, exist_ok=True)
        config = directory / "s3-tls.json"
        identity = {"name": "admin", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}]}
        config.write_text(json.dumps({"identities": [identity]}))
        self._spawn([_venv_bin("weed"), "mini", f"-dir={data}", "-ip=127.0.0.1",
                     "-ip.bind=127.0.0.1", f"-master.port={b + 10}", f"-volume.port={b + 11}",
                     f"-filer.port={b + 12}", f"-s3.port={b + 13}",
                     f"-s3.port.https={self.port}", f"-s3.cert.file={certs.server}",
                     f"-s3.key.file={certs.server_key}", "-s3.port.iceberg=0",
                     "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                     "-master.telemetry=false", f"-s3.config={config}"],
                    directory / "s3-tls.log")
        _wait("s3 (TLS)", lambda: self._ready(certs), timeout=60, log=directory / "s3-tls.log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ready(self, certs: Certs) -> bool:
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=certs.ca, retries=False)
        client = Minio(self.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, secure=True,
                       region="us-east-1", http_client=http)
        client.bucket_exists("probe")
        return True


class TlsProxy:
    """TLS on a free loopback port, passing the plain bytes to ``upstream_port``."""

    def __init__(self, upstream_port: int, certs: Certs) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs.server, certs.server_key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = self.server.accept()
                threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        # A failed handshake is a client refusing our certificate: what the tests look for.
        with raw, contextlib.suppress(OSError, ssl.SSLError), \
                self.context.wrap_socket(raw, server_side=True) as client, \
                socket.create_connection(self.upstream) as upstream:
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()

    def down(self) -> None:
        self.server.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := source.recv(65536):
            sink.sendall(data)
    for s in (source, sink):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def _tls_ready(port: int, certs: Certs, client: bool = False) -> bool:
    context = ssl.create_default_context(cafile=certs.ca)
    if client:
        context.load_cert_chain(certs.client, certs.client_key)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock, \
            context.wrap_socket(sock, server_hostname="127.0.0.1"):
        return True
