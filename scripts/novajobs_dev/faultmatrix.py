"""The fault matrix (scripts/faults.py): every job x every store it uses x a fault.

A cell gives one job a namespace of its own (Redis key prefix, PostgreSQL schema,
ClickHouse database, buckets, index names) with a little data, points one store's
setting at a fault, runs the job as its own process and records its exit code and the
seconds to exit; then checks the stores for anything half-written, lets the store come
back and runs the job again: does it converge?

Faults (novajobs_dev.netfaults): ``refused`` (nothing listens), ``black-holed``
(accepts, never answers), ``killed`` (a proxy in front of the real store is cut the
moment the run logs "run started": every connection reset, the port refusing; it comes
back on the same port). Embedded ClickHouse runs in the job's own process: it cannot be
killed alone, so its cells are over HTTP for refused and black-holed only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from novajobs_dev import demo_data
from novajobs_dev.netfaults import BlackHole, Proxy, refused_port

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ("refused", "black-holed", "killed")
# What each job reads and writes (the README's jobs table).
STORES: dict[str, tuple[str, ...]] = {
    "refresh-trending": ("redis", "clickhouse"),
    "refresh-suggestions": ("redis", "clickhouse"),
    "create-partitions": ("redis", "postgres"),
    "daily-stats": ("redis", "postgres"),
    "group-activity-rank": ("redis", "postgres"),
    "check-message-gaps": ("redis", "postgres"),
    "check-consistency": ("redis", "postgres", "neo4j"),
    "gc-files": ("redis", "postgres", "s3"),
    "gc-orphans": ("redis", "postgres", "s3"),
    "archive-partitions": ("redis", "postgres", "s3"),
    "restore-partition": ("redis", "postgres", "s3"),
    "archive-audit-logs": ("redis", "postgres", "s3"),
    "forcemerge-indices": ("redis", "es"),
    "expire-indices": ("redis", "es"),
    "clean-token-blacklist": ("redis",),
    "drain-stream": ("redis", "postgres"),
    "promote-retries": ("redis",),
}
OK_CODES = {"check-message-gaps": {0, 3}, "check-consistency": {0, 3}}
TINY = [("daily-stats", "postgres", "refused"), ("daily-stats", "postgres", "killed"),
        ("clean-token-blacklist", "redis", "black-holed"), ("drain-stream", "redis", "killed")]
HISTORY_MONTHS = (6, 5)
AUDIT_ENTRIES = 300
WITHIN_SEC = 60.0  # "within seconds": at default settings, a store fault ends a run sooner


@dataclass
class Row:
    job: str
    store: str
    fault: str
    code: int | None = None
    seconds: float = 0.0
    half_written: list[str] = field(default_factory=list)
    rerun_code: int | None = None
    converged: list[str] = field(default_factory=list)  # what did not converge
    note: str = ""

    def problems(self) -> list[str]:
        """Where this cell breaks the contract: a documented code within seconds,
        nothing half-written, a re-run that converges."""
        found = []
        finished = self.fault == "killed" and self.code in OK_CODES.get(self.job, {0})
        if self.code not in (69, 4) and not finished:  # 4: the lock's store died mid-run
            found.append(f"exit {self.code}")
        if self.seconds > WITHIN_SEC:
            found.append(f"{self.seconds:.0f} s to exit")
        return found + self.half_written + self.converged


class Cell:
    """One job's namespace in every store, and its runs."""

    def __init__(self, stack_env: dict[str, str], n: int, job: str) -> None:
        self.n, self.job, self.tag = n, job, f"m{n}"
        self.prefix = f"{self.tag}:"
        base = stack_env["DATABASE_URL"]
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "NOVAJOBS_CONFIG"},
            **stack_env,
            "NOVAJOBS_REDIS_PREFIX": self.prefix,
            "DATABASE_URL": f"{base}?options=-csearch_path%3D{self.tag}",
            "CLICKHOUSE_URL": stack_env["CLICKHOUSE_URL"].replace("database=default",
                                                                  f"database={self.tag}"),
            "NOVAJOBS_LOCK_TTL_SEC": "10",  # a run killed with its lock held: the re-run waits
            "NOVAJOBS_ARCHIVE_BUCKET": f"{self.tag}-archive",
            "NOVAJOBS_ARCHIVE_RETENTION_MONTHS": "chat_messages=3,chat_inbox=3",
            "NOVAJOBS_ORPHAN_BUCKETS": f"{self.tag}-orphans",
            "NOVAJOBS_ORPHAN_SETTLE_SEC": "1",
        }
        self.args = {
            "restore-partition": ["chat_messages", _month(HISTORY_MONTHS[0])],
            "gc-files": ["--grace", "1h"], "gc-orphans": ["--grace", "0"],
            "archive-audit-logs": ["--retention-days", "20"],
            "forcemerge-indices": ["--pattern", f"{self.tag}-logs-*"],
            "expire-indices": ["--pattern", f"{self.tag}-logs-*", "--retention-days", "5"],
            "drain-stream": ["--max-seconds", "3"],
            "check-message-gaps": ["--since", "40d"],
        }.get(job, [])

    # -- the stores, as the checks see them --------------------------------------------
    @contextmanager
    def pg(self) -> Iterator[Any]:
        import psycopg

        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
            yield conn

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.env["REDIS_URL"])

    def minio(self) -> Any:
        from minio import Minio

        e = self.env
        return Minio(e["MINIO_ENDPOINT"], e["MINIO_ACCESS_KEY"], e["MINIO_SECRET_KEY"],
                     secure=False, region="us-east-1")

    def es(self) -> Any:
        from elasticsearch import Elasticsearch

        return Elasticsearch(self.env["ELASTICSEARCH_URL"])

    # -- runs ----------------------------------------------------------------------------
    def run(self, env: dict[str, str] | None = None, *extra: str,
            on_started: Callable[[], None] | None = None) -> tuple[int, float, str]:
        """Run the job: (exit code, seconds to exit from the start or from on_started)."""
        argv = [sys.executable, "-m", "novajobs", self.job, *self.args, *extra]
        started = time.monotonic()
        with subprocess.Popen(argv, env=env or self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) as proc:
            assert proc.stderr is not None
            lines: list[str] = []
            for line in proc.stderr:
                lines.append(line)
                if on_started is not None and '"run started"' in line:
                    on_started()
                    started, on_started = time.monotonic(), None
            code = proc.wait()
        return code, time.monotonic() - started, "".join(lines[-3:])


def _month(back: int) -> str:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - back
    return f"{index // 12}-{index % 12 + 1:02d}"


_CHDB = threading.Lock()  # one chdb client per process, and its path between runs


def prepare(cell: Cell) -> None:
    """The job's data, small: enough that it has real work and a real end state."""
    stores = STORES[cell.job]
    if "postgres" in stores:
        _prepare_pg(cell)
    if "clickhouse" in stores:
        _prepare_clickhouse(cell)
    if cell.job in ("forcemerge-indices", "expire-indices"):
        _prepare_es(cell)
    r = cell.redis()
    if cell.job == "clean-token-blacklist":
        for i in range(40):
            r.set(f"{cell.prefix}auth:block:token:old-{i}", json.dumps({"exp": 1}))
            r.set(f"{cell.prefix}auth:block:token:live-{i}", int(time.time()) + 3600, ex=3600)
    if cell.job == "drain-stream":
        for i in range(AUDIT_ENTRIES):
            r.xadd(f"{cell.prefix}stream:audit:log",
                   {"user_id": str(1 + i % 50), "action": "login", "ts": f"{time.time():.3f}"})
    r.close()


def _prepare_pg(cell: Cell) -> None:
    from novajobs.schema import ensure_tables

    with cell.pg() as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {cell.tag}")
        conn.execute(f"SET search_path TO {cell.tag}")
        demo_data.load_postgres(conn, users=100, channels=10, messages=2000, audit=400,
                                files=10, days=30, gaps=0, indexes=False)
        ensure_tables(conn)
        if cell.job in ("archive-partitions", "restore-partition"):
            demo_data.load_history(conn, months_back=HISTORY_MONTHS, rows_per_month=300)
        minio = cell.minio() if "s3" in STORES[cell.job] else None
        if minio is not None and not minio.bucket_exists(f"{cell.tag}-archive"):
            minio.make_bucket(f"{cell.tag}-archive")
        if cell.job == "gc-files":
            demo_data.load_files(conn, minio, f"{cell.tag}-files", live=30, marked=30,
                                 recent=5, missing=3, held=2, max_size=512)
        if cell.job == "gc-orphans":
            demo_data.load_orphans(conn, minio, f"{cell.tag}-orphans", live=20, orphans=10,
                                   missing=2)
    if cell.job == "restore-partition":  # an archive to restore: archive the months first
        env = {**cell.env}
        subprocess.run([sys.executable, "-m", "novajobs", "archive-partitions", "--wait", "60"],
                       env=env, cwd=ROOT, capture_output=True, check=True)


def _prepare_clickhouse(cell: Cell) -> None:
    from novajobs.connections import clickhouse_client
    from novajobs.context import Guard
    from novajobs.embedded import hold_path
    from novajobs.output import JobLog
    from novajobs.settings import load_settings

    settings = load_settings(environ={**cell.env, "CLICKHOUSE_URL": cell.env[
        "CLICKHOUSE_URL"].replace(f"database={cell.tag}", "database=default")})
    path = settings.clickhouse_url.split("://", 1)[1].split("?", 1)[0]
    with _CHDB:  # a job's process may have the path: wait for it as a job would
        let_go = hold_path(path, Guard(), JobLog(), wait_sec=600)
        client = clickhouse_client(settings)
        try:
            client.command(f"CREATE DATABASE IF NOT EXISTS {cell.tag}")
            client.command(f"USE {cell.tag}")
            demo_data.load_clickhouse(client, users=100, posts=30, events=3000, edges=800,
                                      hours=2)
        finally:
            client.close()
            let_go()


def _prepare_es(cell: Cell) -> None:
    es = cell.es()
    now = time.time()
    for days_ago in range(8):
        created = now - days_ago * 86400
        name = f"{cell.tag}-logs-" + datetime.fromtimestamp(created, UTC).strftime("%Y.%m.%d")
        es.indices.create(index=name, settings={"index.creation_date": int(created * 1000)})
        es.index(index=name, document={"message": "x"})
    es.close()


# -- what must hold after any fault, and after the re-run ---------------------------------
def half_written(cell: Cell) -> list[str]:
    """Anything the faulted run left that no run would leave (checked in the stores)."""
    problems: list[str] = []
    r = cell.redis()
    for key in r.scan_iter(match=f"{cell.prefix}job:lock:*"):
        if r.pttl(key) < 0:
            problems.append(f"{key.decode()} without a TTL")
    job, p = cell.job, cell.prefix
    if job == "refresh-trending":
        value = r.get(f"{p}nova:cache:trending:1h")
        if value is not None and not isinstance(json.loads(value), list):
            problems.append("a trending key that is not a whole list")
    if job == "refresh-suggestions":
        for key in r.scan_iter(match=f"{p}nova:cache:suggested_users:*"):
            if not isinstance(json.loads(r.get(key) or b"null"), list):
                problems.append(f"{key.decode()} not a whole list")
    if job == "clean-token-blacklist":
        live = len(list(r.scan_iter(match=f"{p}auth:block:token:live-*")))
        if live != 40:
            problems.append(f"{40 - live} live blacklist entries deleted")
    if job == "drain-stream":
        dlq = sum(r.xlen(k) for k in r.scan_iter(match=f"{p}dlq:*"))
        if dlq:
            problems.append(f"{dlq} entries in the DLQ because of the outage")
    r.close()
    if "postgres" in STORES[job]:
        problems += _pg_half_written(cell)
    return problems


def _pg_half_written(cell: Cell) -> list[str]:
    problems: list[str] = []
    with cell.pg() as conn:
        if cell.job == "gc-files":
            minio = cell.minio()
            bucket = f"{cell.tag}-files"
            names = {o.object_name for o in minio.list_objects(bucket, recursive=True)}
            rows = conn.execute("SELECT path FROM file_metadata WHERE bucket = %s AND "
                                "ref_count > 0", [bucket]).fetchall()
            lost = [path for (path,) in rows if path not in names]
            if len(lost) > 3:  # the 3 "missing" rows had no object from the start
                problems.append(f"{len(lost) - 3} referenced files lost their object")
        if cell.job in ("archive-partitions", "restore-partition", "archive-audit-logs"):
            problems += _lifecycle_half_written(cell, conn)
    return problems


def _lifecycle_half_written(cell: Cell, conn: Any) -> list[str]:
    """Rows leave PostgreSQL only once an archive holds them."""
    archived = list(cell.minio().list_objects(f"{cell.tag}-archive", recursive=True))
    if cell.job == "archive-audit-logs":
        left = conn.execute("SELECT count(*) FROM audit_logs").fetchone()[0]
        return [] if left == 400 or archived else ["audit rows deleted without an archive"]
    problems = []
    for back in HISTORY_MONTHS:
        month = _month(back).replace("-", "_")
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                             [f"chat_messages_{month}"]).fetchone()[0]
        if not found and not any(month.replace("_", "-") in o.object_name
                                 or month in o.object_name for o in archived):
            problems.append(f"chat_messages {month} neither in PostgreSQL nor archived")
    return problems


def not_converged(cell: Cell, code: int) -> list[str]:
    """What the re-run with every store back did not finish."""
    if code not in OK_CODES.get(cell.job, {0}):
        return [f"re-run exit {code}"]
    r, p, job = cell.redis(), cell.prefix, cell.job
    try:
        if job == "refresh-trending" and not json.loads(r.get(f"{p}nova:cache:trending:1h")
                                                        or b"[]"):
            return ["no trending list"]
        if job == "refresh-suggestions" and not list(
                r.scan_iter(match=f"{p}nova:cache:suggested_users:*")):
            return ["no suggestions"]
        if job == "clean-token-blacklist" and list(
                r.scan_iter(match=f"{p}auth:block:token:old-*")):
            return ["expired entries left"]
        if job == "drain-stream":
            with cell.pg() as conn:
                rows = conn.execute("SELECT count(*) FROM audit_logs WHERE action = 'login' "
                                    "AND created_at > now() - interval '1 hour'").fetchone()[0]
            if rows < AUDIT_ENTRIES:
                return [f"{AUDIT_ENTRIES - rows} entries not in audit_logs"]
    finally:
        r.close()
    return _pg_converged(cell)


def _pg_converged(cell: Cell) -> list[str]:
    if cell.job == "gc-files":
        with cell.pg() as conn:
            left = conn.execute("SELECT count(*) FROM file_metadata WHERE bucket = %s AND "
                                "ref_count = 0 AND updated_at < now() - interval '1 hour'",
                                [f"{cell.tag}-files"]).fetchone()[0]
        return [f"{left} eligible files left"] if left else []
    if cell.job == "archive-partitions":
        with cell.pg() as conn:
            left = [b for b in HISTORY_MONTHS if conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL",
                [f"chat_messages_{_month(b).replace('-', '_')}"]).fetchone()[0]]
        return [f"{len(left)} old months still in PostgreSQL"] if left else []
    return []


# -- one cell ---------------------------------------------------------------------------
SETTING = {"redis": "REDIS_URL", "postgres": "DATABASE_URL", "clickhouse": "CLICKHOUSE_URL",
           "s3": "MINIO_ENDPOINT", "neo4j": "NEO4J_URI", "es": "ELASTICSEARCH_URL"}


def store_port(env: dict[str, str], store: str) -> int:
    from urllib.parse import urlsplit

    value = env[SETTING[store]]
    return int(value.rsplit(":", 1)[1]) if store == "s3" else int(urlsplit(value).port or 0)


def pointed_at(env: dict[str, str], store: str, port: int, tag: str) -> dict[str, str]:
    """``env`` with ``store``'s setting on 127.0.0.1:port (the rest of the URL kept)."""
    from urllib.parse import urlsplit, urlunsplit

    if store == "clickhouse":
        return {**env, "CLICKHOUSE_URL": f"http://127.0.0.1:{port}/{tag}"}
    if store == "s3":
        return {**env, "MINIO_ENDPOINT": f"127.0.0.1:{port}"}
    parts = urlsplit(env[SETTING[store]])
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return {**env, SETTING[store]: urlunsplit(parts._replace(netloc=netloc))}


# Jobs that hold a PostgreSQL advisory lock named after the job, database-wide: their
# cells (each in a schema of its own) would skip each other (75); they run one at a time.
_ADVISORY = {"archive-partitions": "archive", "restore-partition": "archive",
             "archive-audit-logs": "audit"}
_ADVISORY_LOCKS = {name: threading.Lock() for name in set(_ADVISORY.values())}


def run_cell(stack_env: dict[str, str], n: int, job: str, store: str, fault: str) -> Row:
    """One cell; a cell that could not be set up or checked says so in its row."""
    lock = _ADVISORY_LOCKS.get(_ADVISORY.get(job, ""))
    with lock or contextlib.nullcontext():
        try:
            return _run_cell(Cell(stack_env, n, job), store, fault)
        except Exception as exc:  # the matrix goes on; the row shows what broke
            return Row(job, store, fault, note=f"matrix error: {type(exc).__name__}: {exc}"[:200],
                       converged=["the cell did not run"])


def _run_cell(cell: Cell, store: str, fault: str) -> Row:
    row = Row(cell.job, store, fault)
    prepare(cell)
    if fault == "killed":
        # Redis: cut once the run has started (it has the lock by then); the others once
        # they first answered the run (it is in a session with them then).
        with Proxy(store_port(cell.env, store), cut_on_first_reply=store != "redis") as proxy:
            rerun_env = pointed_at(cell.env, store, proxy.port, cell.tag)
            cut = proxy.cut if store == "redis" else lambda: None
            row.code, row.seconds, tail = cell.run(rerun_env, on_started=cut)
            row.half_written = half_written(cell)
            proxy.restore()  # the store is back, on the same address
            row.rerun_code, _, rerun_tail = cell.run(rerun_env, "--wait", "30")
    else:
        with BlackHole() if fault == "black-holed" else _Refused() as dead:
            row.code, row.seconds, tail = cell.run(pointed_at(cell.env, store, dead.port,
                                                              cell.tag))
        row.half_written = half_written(cell)
        row.rerun_code, _, rerun_tail = cell.run(cell.env, "--wait", "30")
    row.note = _error_of(tail)
    row.converged = not_converged(cell, row.rerun_code)
    if row.converged and row.rerun_code != 0:
        row.converged.append(f"({_error_of(rerun_tail)})")
    return row


class _Refused:
    def __enter__(self) -> _Refused:
        self.port = refused_port()
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _error_of(tail: str) -> str:
    for line in reversed(tail.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            return line.strip()[:90]
        if "exit_code" in data:
            return str(data.get("error") or data.get("message") or "")[:90]
    return ""


def cells(jobs: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Every (job, store, fault) of the matrix; embedded ClickHouse is not killed alone."""
    return [(job, store, fault) for job, stores in STORES.items() if not jobs or job in jobs
            for store in stores for fault in FAULTS
            if not (store == "clickhouse" and fault == "killed")]


def table(rows: list[Row]) -> str:
    head = ("| job | store | fault | exit | s to exit | half-written | re-run | converges | "
            "error |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.job} | {r.store} | {r.fault} | {r.code} | {r.seconds:.1f} | "
            f"{'; '.join(r.half_written) or 'nothing'} | {r.rerun_code} | "
            f"{'yes' if not r.converged else 'NO: ' + '; '.join(r.converged)} | "
            f"{r.note.replace('|', '/')} |")
    return "\n".join(lines)
