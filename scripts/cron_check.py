#!/usr/bin/env python3
"""The shipped crontab under a real cron daemon: nothing can fail silently.

    python scripts/cron_check.py            # Debian's cron (apt-get install cron), ~2 min
    python scripts/cron_check.py --tiny     # no daemon: the lines run through /bin/sh as cron would

It renders crontab.example (novajobs/deploy.py) and runs the shipped line of
clean-token-blacklist every minute, twice (the same crontab on "two hosts"), with PATH,
the config file and the log directory pointed at throwaway places. The log directory
does not exist: novajobs must create it. The line of promote-retries gets a log path
that cannot exist (under a regular file): it must still run, and say why on stderr
(cron's mail; here a file) and in its run record. Then it checks what an operator would:

- the log directory was created and the log file holds both runs' JSON lines;
- the two copies never ran at once: one ran and the other was skipped, or (a quick
  job) they ran one after the other;
- the run whose log file could not be opened ran anyway, its record says why.

The daemon mode installs /etc/cron.d/novajobs-cron-check-<pid> (removed afterwards) and
starts `cron -f` as its own child (stopped afterwards); it refuses if a cron daemon is
already running. tests/test_cron_logfile.py runs the --tiny mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from novajobs_dev.stack import temporary

JOB, OTHER = "clean-token-blacklist", "promote-retries"  # both need only Redis


def crontab_lines(workdir: Path, redis_url: str, prefix: str) -> tuple[dict[str, str], list[str]]:
    """The shipped crontab's environment and this check's command lines (cron syntax):
    JOB twice, OTHER once with a log file that cannot be created."""
    from novajobs.deploy import cron_log_file, render_all
    from novajobs.settings import load_settings

    text = render_all(load_settings(environ={}))["crontab.example"]
    env: dict[str, str] = {}
    shipped: dict[str, str] = {}
    for raw in text.splitlines():
        if raw and not raw.startswith("#") and "=" in raw.split()[0]:
            name, _, value = raw.partition("=")
            env[name] = value
        elif raw and not raw.startswith("#"):
            shipped[raw.split()[6]] = raw.split(None, 5)[5]  # job name -> its command
    config = workdir / "novajobs.toml"
    config.write_text(f'redis_url = "{redis_url}"\nredis_prefix = "{prefix}"\n')
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["NOVAJOBS_CONFIG"] = str(config)
    logs = workdir / "logs" / "novajobs"  # does not exist yet
    good = shipped[JOB].replace(cron_log_file(JOB), str(logs / f"{JOB}.log"))
    blocked = workdir / "not-a-dir"
    blocked.write_text("a regular file: nothing can be created under it\n")
    broken = shipped[OTHER].replace(cron_log_file(OTHER), str(blocked / f"{OTHER}.log"))
    return env, [good, good, f"{broken} 2>{workdir / 'broken-line.stderr'}"]


def run_as_cron_would(env: dict[str, str], commands: list[str]) -> None:
    """Each line through /bin/sh -c with only the crontab's environment, all at once."""
    procs = [subprocess.Popen(["/bin/sh", "-c", c], env={**env, "HOME": "/root"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c in commands]
    for proc in procs:
        proc.wait(timeout=120)


def run_under_cron(env: dict[str, str], commands: list[str], workdir: Path) -> None:
    if subprocess.run(["pgrep", "-x", "cron"], capture_output=True).returncode == 0:
        raise SystemExit("a cron daemon is already running: not touching it")
    cron = shutil.which("cron") or "/usr/sbin/cron"
    if not Path(cron).exists():
        raise SystemExit("cron is not installed: apt-get install cron")
    table = Path(f"/etc/cron.d/novajobs-cron-check-{os.getpid()}")
    lines = [f"{k}={v}" for k, v in env.items()]
    lines += [f"* * * * * root {c}" for c in commands]
    table.write_text("\n".join(lines) + "\n")
    daemon = subprocess.Popen([cron, "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        give_up = time.monotonic() + 150
        done = workdir / "broken-line.stderr"
        while time.monotonic() < give_up and not (done.exists() and done.stat().st_size):
            time.sleep(1)
        time.sleep(8)  # the two good lines finish too
    finally:
        table.unlink()
        daemon.terminate()
        daemon.wait(timeout=10)


def verify(workdir: Path, redis_url: str, prefix: str) -> list[str]:
    """What an operator would check afterwards; the problems found (empty: all good)."""
    import redis

    from novajobs.records import history_key

    problems = []
    log = workdir / "logs" / "novajobs" / f"{JOB}.log"
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    outcomes = sorted(x["outcome"] for x in lines if "outcome" in x)
    if outcomes not in (["nothing_to_do", "skipped"], ["nothing_to_do", "nothing_to_do"]):
        problems.append(f"{log}: expected both runs' lines, found outcomes {outcomes}")
    r = redis.Redis.from_url(redis_url)
    history = [json.loads(h) for h in r.lrange(history_key(prefix, JOB), 0, -1)]
    # From the lock taken ("run started", logged after it) to the last line (after release).
    runs = sorted(
        (min(x["ts"] for x in lines if x["run_id"] == rid and x["message"] == "run started"),
         max(x["ts"] for x in lines if x["run_id"] == rid))
        for rid in {x["run_id"] for x in lines if x.get("outcome") == "nothing_to_do"})
    if len(runs) == 2 and runs[0][1] > runs[1][0]:
        problems.append(f"history of {JOB}: two copies ran at the same time: {runs}")
    if len(history) != 2:  # one ran and one was skipped, or they ran one after the other
        problems.append(f"history of {JOB}: expected two entries: {history}")
    other = [json.loads(h) for h in r.lrange(history_key(prefix, OTHER), 0, -1)]
    r.close()
    if [(h["outcome"], "cannot write the log file" in (h.get("warning") or ""))
            for h in other] != [("nothing_to_do", True)]:
        problems.append(f"{OTHER} did not run, or its record does not say why no log: {other}")
    err = workdir / "broken-line.stderr"
    said = err.read_text() if err.exists() else ""
    if "novajobs: cannot write the log file" not in said:
        problems.append(f"the line without a log file said nothing on stderr: {said!r}")
    return problems


def check(redis_url: str, prefix: str, *, daemon: bool) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="novajobs-cron-") as tmp:
        workdir = Path(tmp)
        env, commands = crontab_lines(workdir, redis_url, prefix)
        if daemon:
            run_under_cron(env, commands, workdir)
        else:
            run_as_cron_would(env, commands)
        return verify(workdir, redis_url, prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="no daemon: run the lines via sh")
    args = parser.parse_args(argv)
    with temporary(("redis",)) as s:
        problems = check(s.env()["REDIS_URL"], "cron-check:", daemon=not args.tiny)
    mode = "shell, as cron would" if args.tiny else "a real cron daemon"
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"cron check ({mode}): {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
