"""archive-audit-logs under kill -9: the rounds scripts/crash_archive_audit_logs.py runs at
full size and tests/test_crash_archive.py runs small against the test stack.

After every kill: every old row is still in the table or in exactly one committed
archive (a row of ``novajobs_audit_archive`` whose object holds it, byte for byte). At the
end one uninterrupted run must converge: only the recent rows left, every old row in
exactly one committed archive, and no object in the prefix that is not one.
"""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import time
from typing import Any

from novajobs_dev import demo_data, stack
from novajobs_dev.kill import ROOT, kill_after

PREFIX = "audit_logs/"
SELECT = "SELECT id, user_id, action, created_at FROM audit_logs"


def load(pg: Any, *, old: int, recent: int) -> dict[int, bytes]:
    """Old and recent rows; returns each old row's COPY line by id (what must survive)."""
    pg.execute(demo_data.POSTGRES_DDL["audit_logs"])
    pg.execute("""
        INSERT INTO audit_logs (user_id, action, created_at)
        SELECT n %% 5000,
               (ARRAY['login', 'logout', 'post', E'tab\\there', E'new\\nline'])[1 + n %% 5],
               now() - interval '400 days' + n * interval '1 second'
        FROM generate_series(1, %s) AS n
    """, [old])
    pg.execute("""
        INSERT INTO audit_logs (user_id, action, created_at)
        SELECT n, 'recent', now() - interval '1 day' FROM generate_series(1, %s) AS n
    """, [recent])
    return copy_lines(pg, f"{SELECT} WHERE created_at < now() - interval '30 days'")


def copy_lines(pg: Any, query: str) -> dict[int, bytes]:
    out = bytearray()
    with pg.cursor() as cur, cur.copy(f"COPY ({query} ORDER BY id) TO STDOUT") as copy:
        for data in copy:
            out += data
    return {int(line.split(b"\t", 1)[0]): line for line in bytes(out).splitlines()}


def archived(pg: Any, minio: Any, bucket: str) -> tuple[dict[int, list[bytes]], list[str]]:
    """Rows of the committed archives (id -> its copies), and objects no archive owns."""
    keys = {r[0] for r in pg.execute(
        "SELECT object_key FROM novajobs_audit_archive WHERE bucket = %s", [bucket])}
    copies: dict[int, list[bytes]] = {}
    for key in sorted(keys):
        response = minio.get_object(bucket, key)
        try:
            data = gzip.decompress(response.read())
        finally:
            response.close()
            response.release_conn()
        for line in data.splitlines():
            copies.setdefault(int(line.split(b"\t", 1)[0]), []).append(line)
    listed = {o.object_name for o in minio.list_objects(bucket, prefix=PREFIX, recursive=True)}
    return copies, sorted(listed - keys)


def check_safe(old: dict[int, bytes], table: set[int],
               copies: dict[int, list[bytes]]) -> list[str]:
    """Every old row in the table or in exactly one committed archive, unchanged."""
    problems = []
    for row_id, line in old.items():
        kept = copies.get(row_id, [])
        if row_id not in table and not kept:
            problems.append(f"row {row_id} lost: deleted and in no committed archive")
        if len(kept) > 1:
            problems.append(f"row {row_id} in {len(kept)} committed archives")
        if kept and kept[0] != line:
            problems.append(f"row {row_id} archived as {kept[0]!r}, was {line!r}")
        if kept and row_id in table:
            problems.append(f"row {row_id} archived (committed) but still in the table")
    return problems


def table_ids(pg: Any) -> set[int]:
    return {r[0] for r in pg.execute("SELECT id FROM audit_logs")}


def command() -> list[str]:
    return [sys.executable, "-m", "novajobs", "archive-audit-logs", "--wait", "10",
            "--log-format", "json"]


def crash_rounds(env: dict[str, str], pg: Any, minio: Any, bucket: str, old: dict[int, bytes],
                 *, kills: int, max_delay: float, rng: random.Random,
                 say: Any = print) -> list[str]:
    """Kill the job ``kills`` times, checking after each; then converge. Returns problems."""
    problems: list[str] = []
    killed = rounds = 0
    while killed < kills and rounds < kills * 4:
        rounds += 1
        delay = rng.uniform(0.0, max_delay)
        began = time.monotonic()
        code = kill_after(command(), env, delay)
        if code is not None:  # the run finished first: aim within a run's time from now on
            max_delay = min(max_delay, 0.8 * (time.monotonic() - began))
        copies, stray = archived(pg, minio, bucket)
        table = table_ids(pg)
        found = check_safe(old, table, copies)
        problems += [f"round {rounds}: {p}" for p in found]
        killed += code is None
        what = "killed" if code is None else f"exited {code}"
        say(f"round {rounds:3d}: {what} after {delay:.2f} s; archived {len(copies):7d}; "
            f"left {len(table & old.keys()):7d}; unfinished objects {len(stray)}; "
            f"problems {len(found)}")
        if not table & old.keys() and killed < kills and not found:
            reload(pg, minio, bucket, old)  # everything archived: more to interrupt
            say("            all archived: old rows loaded again, archives removed")
    say(f"killed {killed} times in {rounds} rounds")
    started = time.monotonic()
    # The uninterrupted runs keep a TTL a loaded machine's heartbeat can renew in time.
    steady = {**env, "NOVAJOBS_LOCK_TTL_SEC": "60"}
    final = subprocess.run(command(), env=steady, cwd=ROOT, capture_output=True, text=True,
                           timeout=1800)
    copies, stray = archived(pg, minio, bucket)
    table = table_ids(pg)
    if final.returncode != 0:
        problems.append(f"final run exited {final.returncode}: {final.stderr[-500:]}")
    problems += [f"final: {p}" for p in check_safe(old, table, copies)]
    problems += [f"final: row {i} not archived" for i in sorted(old.keys() - copies.keys())]
    problems += [f"final: unfinished object {key} left" for key in stray]
    say(f"final run: exit {final.returncode} in {time.monotonic() - started:.1f} s; "
        f"{len(copies)} rows archived, {len(table)} left; problems {len(problems)}")
    return problems


def reload(pg: Any, minio: Any, bucket: str, old: dict[int, bytes]) -> None:
    """Every old row archived and deleted: put them back, forget the archives, so the
    next rounds have the whole work to interrupt again."""
    from minio.deleteobjects import DeleteObject

    with pg.cursor() as cur, cur.copy(
            "COPY audit_logs (id, user_id, action, created_at) FROM STDIN") as copy:
        copy.write(b"".join(line + b"\n" for _, line in sorted(old.items())))
    pg.execute("DELETE FROM novajobs_audit_archive WHERE bucket = %s", [bucket])
    gone = (DeleteObject(o.object_name)
            for o in minio.list_objects(bucket, prefix=PREFIX, recursive=True))
    errors = list(minio.remove_objects(bucket, gone))
    if errors:
        raise RuntimeError(f"could not empty {bucket}: {errors[:3]}")


def job_env(stack_env: dict[str, str], schema: str, prefix: str, bucket: str,
            batch_rows: int) -> dict[str, str]:
    # a 2 s lock TTL: a killed run's lock expires soon after
    return stack.job_env(stack_env, schema, prefix, lock_ttl_sec=2, archive_bucket=bucket,
                         audit_archive_retention_days=30, audit_archive_batch_rows=batch_rows)
