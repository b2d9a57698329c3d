"""archive-partitions under kill -9: the rounds scripts/crash_archive_partitions.py runs at
full size and tests/test_crash_archive.py runs small against the test stack.

After every kill, for every old month: its rows are in a table (attached, pending or
detached) exactly as loaded, or the table is gone and the month's manifest names an
object holding exactly those rows. At the end one uninterrupted run archives everything
(no table, no marker, no unfinished object left), and restore-partition brings every
month back identical.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from typing import Any

from novajobs_dev import demo_data, stack
from novajobs_dev.kill import ROOT, kill_after

TABLE = "chat_messages"


def months_back(count: int) -> list[date]:
    today = datetime.now(UTC).date()
    out = []
    for back in range(count + 4, 4, -1):  # older than the retention of 3 months
        index = today.year * 12 + today.month - 1 - back
        out.append(date(index // 12, index % 12 + 1, 1))
    return out


def load(pg: Any, *, months: int, rows: int) -> dict[str, bytes]:
    """Old months of chat_messages; returns each month's rows as sorted COPY text."""
    pg.execute(demo_data.POSTGRES_DDL[TABLE])
    firsts = months_back(months)
    today = datetime.now(UTC).date()
    demo_data.create_month_partitions(pg, TABLE, firsts[0], today)
    for n, first in enumerate(firsts):
        pg.execute("""
            INSERT INTO chat_messages (id, channel_id, sender_id, seq, created_at)
            SELECT %(base)s + g, g %% 50, g %% 999, g, %(first)s::timestamptz
                   + (g::float8 / %(rows)s) * interval '27 days'
            FROM generate_series(1, %(rows)s) AS g
        """, {"base": (n + 1) * 100_000_000, "first": first, "rows": rows})
    return {f"{first:%Y-%m}": month_rows(pg, f"{TABLE}_{first:%Y_%m}") for first in firsts}


def month_rows(pg: Any, table: str) -> bytes:
    out = bytearray()
    with pg.cursor() as cur, cur.copy(f"COPY {table} TO STDOUT") as copy:
        for data in copy:
            out += data
    return b"".join(sorted(bytes(out).splitlines(keepends=True)))


def s3_read(minio: Any, bucket: str, key: str) -> bytes | None:
    from minio.error import S3Error

    try:
        response = minio.get_object(bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            return None
        raise
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def detached(pg: Any) -> int:
    """Old months whose table is no longer (fully) attached: pending or detached."""
    row = pg.execute(
        "SELECT count(*) FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
        "WHERE c.relname LIKE %s AND c.relkind = 'r' AND (i.inhrelid IS NULL OR "
        "i.inhdetachpending)", [f"{TABLE}\\_%"]).fetchone()
    return int(row[0])


def check_safe(pg: Any, minio: Any, bucket: str, schema: str,
               loaded: dict[str, bytes]) -> tuple[list[str], int]:
    """(problems, months archived) — what must hold right after any kill."""
    problems, archived = [], 0
    for month, rows in loaded.items():
        table = f"{TABLE}_{month.replace('-', '_')}"
        exists = pg.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()[0]
        folder = f"partitions/{schema}.{TABLE}/{month}/"
        raw = s3_read(minio, bucket, folder + "manifest.json")
        manifest = json.loads(raw) if raw else None
        if manifest is not None:
            data = s3_read(minio, bucket, manifest["data_key"])
            content = gzip.decompress(data) if data else b""
            if not data or content.count(b"\n") != manifest["rows"]:
                problems.append(f"{month}: the manifest names {manifest['data_key']}, which "
                                "is missing or does not hold its rows")
            elif b"".join(sorted(content.splitlines(keepends=True))) != rows:
                problems.append(f"{month}: the archive's rows differ from the month's")
        if exists:
            if month_rows(pg, table) != rows:
                problems.append(f"{month}: the table's rows changed")
        elif manifest is None:
            problems.append(f"{month}: table dropped without an archive")
        else:
            archived += 1
    return problems, archived


def leftovers(pg: Any, minio: Any, bucket: str, schema: str) -> list[str]:
    """After the final run: nothing marked, no data object a manifest does not name."""
    out = [f"marked table {r[0]}" for r in pg.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_description d ON d.objoid = c.oid "
        "WHERE d.description LIKE 'novajobs-archive %'")]
    named = set()
    for obj in minio.list_objects(bucket, prefix=f"partitions/{schema}.{TABLE}/",
                                  recursive=True):
        if obj.object_name.endswith("manifest.json"):
            named.add(json.loads(s3_read(minio, bucket, obj.object_name) or b"{}")["data_key"])
    for obj in minio.list_objects(bucket, prefix=f"partitions/{schema}.{TABLE}/",
                                  recursive=True):
        name = obj.object_name
        if not name.endswith("manifest.json") and name not in named:
            out.append(f"unfinished object {name}")
    return out


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "novajobs", *args, "--wait", "10", "--log-format", "json"]


def crash_rounds(env: dict[str, str], pg: Any, minio: Any, bucket: str, schema: str,
                 loaded: dict[str, bytes], *, kills: int, max_delay: float,
                 rng: random.Random, say: Any = print) -> list[str]:
    problems: list[str] = []
    killed = rounds = 0
    while killed < kills and rounds < kills * 4:
        rounds += 1
        delay = rng.uniform(0.0, max_delay)
        began = time.monotonic()
        code = kill_after(command("archive-partitions"), env, delay)
        if code is not None:  # the run finished first: aim within a run's time from now on
            max_delay = min(max_delay, 0.8 * (time.monotonic() - began))
        found, archived = check_safe(pg, minio, bucket, schema, loaded)
        problems += [f"round {rounds}: {p}" for p in found]
        killed += code is None
        what = "killed" if code is None else f"exited {code}"
        say(f"round {rounds:3d}: {what} after {delay:.2f} s; months archived "
            f"{archived}/{len(loaded)}, detached {detached(pg)}; problems {len(found)}")
        if archived == len(loaded) and killed < kills and not found:
            reload(pg, minio, bucket, loaded)  # everything archived: more to interrupt
            say("            all archived: months loaded again, archives removed")
    say(f"killed {killed} times in {rounds} rounds")
    started = time.monotonic()
    # The uninterrupted runs keep a TTL a loaded machine's heartbeat can renew in time.
    steady = {**env, "NOVAJOBS_LOCK_TTL_SEC": "60"}
    final = subprocess.run(command("archive-partitions"), env=steady, cwd=ROOT,
                           capture_output=True, text=True, timeout=3600)
    if final.returncode != 0:
        problems.append(f"final run exited {final.returncode}: {final.stderr[-500:]}")
    found, archived = check_safe(pg, minio, bucket, schema, loaded)
    problems += [f"final: {p}" for p in found + leftovers(pg, minio, bucket, schema)]
    if archived != len(loaded):
        problems.append(f"final: {archived} of {len(loaded)} months archived")
    say(f"final run: exit {final.returncode} in {time.monotonic() - started:.1f} s; "
        f"{archived} months archived; problems {len(problems)}")
    for month, rows in loaded.items():
        back = subprocess.run(command("restore-partition", TABLE, month), env=steady, cwd=ROOT,
                              capture_output=True, text=True, timeout=3600)
        table = f"{TABLE}_{month.replace('-', '_')}"
        if back.returncode != 0 or month_rows(pg, table) != rows:
            problems.append(f"restore {month}: exit {back.returncode}, rows identical: "
                            f"{back.returncode == 0 and month_rows(pg, table) == rows}")
    say(f"restored {len(loaded)} months; problems {len(problems)}")
    return problems


def reload(pg: Any, minio: Any, bucket: str, loaded: dict[str, bytes]) -> None:
    """Every month archived and dropped: attach them again with their rows and remove
    the archives, so the next rounds have the whole work to interrupt again."""
    from minio.deleteobjects import DeleteObject

    firsts = sorted(date(int(m[:4]), int(m[5:]), 1) for m in loaded)
    demo_data.create_month_partitions(pg, TABLE, firsts[0], firsts[-1])
    for month, rows in loaded.items():
        with pg.cursor() as cur, cur.copy(
                f"COPY {TABLE}_{month.replace('-', '_')} FROM STDIN") as copy:
            copy.write(rows)
    gone = (DeleteObject(o.object_name) for o in minio.list_objects(bucket, recursive=True))
    errors = list(minio.remove_objects(bucket, gone))
    if errors:
        raise RuntimeError(f"could not empty {bucket}: {errors[:3]}")


def job_env(stack_env: dict[str, str], schema: str, prefix: str, bucket: str) -> dict[str, str]:
    # a 2 s lock TTL: a killed run's lock expires soon after; the smallest parts (5 MB):
    # more parts to kill in
    return stack.job_env(stack_env, schema, prefix, lock_ttl_sec=2, archive_bucket=bucket,
                         archive_retention_months=f"{TABLE}=3", archive_part_size_mb=5)
