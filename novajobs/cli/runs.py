"""Commands on runs: `logs` (a run's last log lines, kept in Redis), `stop` (ask a
running run, wherever it runs, to stop at its next safe point) and `console` (the web
console over the same records)."""

from __future__ import annotations

from typing import Any

import click

from novajobs.cli.admin import unit_name
from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from, with_options
from novajobs.errors import ExitCode, UsageError
from novajobs.registry import get_job


def register(group: click.Group) -> None:
    group.add_command(logs)
    group.add_command(stop)
    group.add_command(console)


@click.command()
@click.argument("job")
@click.argument("run_id", required=False)
@click.option("--shard", metavar="I/N", help="A run of one shard of a sharded job.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines until the run ends.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def logs(job: str, run_id: str | None, shard: str | None, follow: bool, as_json: bool,
         **kw: Any) -> None:
    """Print the last log lines of a run of JOB (default: its latest run), as kept in
    Redis with its record (run_log_lines, run_log_bytes; secrets redacted). RUN_ID may
    be shortened to a unique start, as `history` shows it.

    With --json, one JSON object per line, as the run logged it.

    Example:

    \b
      novajobs logs gc-files --follow
      novajobs logs refresh-trending 3f2a9c1e
    """
    from novajobs.connections import redis_client
    from novajobs.records import find_run, read_status
    from novajobs.runlog import follow as follow_lines
    from novajobs.runlog import line_text, read_lines
    from novajobs.stops import Target, still_running

    settings = settings_from(kw)
    r, prefix, unit = redis_client(settings), settings.redis_prefix, unit_name(job, shard)
    if run_id:
        run = find_run(r, prefix, unit, run_id, settings.history_size)
    else:
        run = _latest(read_status(r, prefix, unit))
    if run is None:
        raise UsageError(f"no run {run_id} of {unit} is recorded" if run_id
                         else f"{unit} has no recorded run")
    rid = str(run["run_id"])
    if follow:
        target = Target(unit, rid, run["host"], run["pid"])
        lines = follow_lines(r, prefix, unit, rid,
                             lambda: still_running(r, prefix, get_job(job).name, target))
    else:
        lines = iter(read_lines(r, prefix, unit, rid))
    shown = 0
    for line in lines:
        shown += 1
        click.echo(_json_line(line) if as_json else line_text(line))
    if not shown and not as_json:
        click.echo(f"no log lines kept for run {rid} of {unit} "
                   f"(kept for run_log_retention = {settings.run_log_retention})", err=True)


def _latest(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The latest run: the last real one, or a dry run or attempt after it."""
    if status is None:
        return None
    attempt = status.get("attempt")
    if attempt and attempt["run_id"]:
        return attempt if not status["run_id"] or attempt["started_at"] > status["started_at"] \
            else status
    return status if status["run_id"] else None


def _json_line(line: dict[str, Any]) -> str:
    import json

    return json.dumps(line, ensure_ascii=False)


@click.command()
@click.argument("job")
@click.option("--shard", metavar="I/N", help="Only this shard of a sharded job.")
@click.option("--wait", "wait_sec", type=click.FloatRange(min=0), default=30.0,
              metavar="SECONDS", show_default=True,
              help="How long to wait for the run to stop; 0: ask and return.")
@with_options(*SETTINGS_OPTIONS, JSON_OPTION)
def stop(job: str, shard: str | None, wait_sec: float, as_json: bool, **kw: Any) -> int:
    """Ask the running run of JOB (every shard, or one) to stop at its next safe point,
    wherever it runs: it sees the request through Redis at its next heartbeat
    (run_heartbeat_sec), releases its lock, records "interrupted: stop requested by
    USER@HOST" and exits 130.

    Exit 0 when no run is running or every one stopped within --wait; 124 when one
    was still running at the end of the wait.

    Example:

    \b
      novajobs stop gc-files --shard 2/4
    """
    from novajobs.connections import redis_client
    from novajobs.output import print_json, print_line
    from novajobs.stops import request_stop, running_runs, wait_ended, who_am_i

    settings = settings_from(kw)
    name = get_job(job).name
    unit = unit_name(job, shard) if shard else None
    r = redis_client(settings)
    targets, stale = running_runs(r, settings, name, unit)
    for s in stale:
        print_line(f"{s['unit']}: run {s['run_id']} is stale (no heartbeat for "
                   f"{s['seen_age_sec']} s): nothing to stop; `novajobs locks` shows its lock")
    if not targets:
        if as_json:
            print_json([])
        else:
            print_line(f"no run of {unit or name} is running")
        return int(ExitCode.OK)
    request_stop(r, settings.redis_prefix, targets, who_am_i())
    for t in targets:
        print_line(f"{t.unit}: asked run {t.run_id} (host {t.host} pid {t.pid}) to stop")
    ended = wait_ended(r, settings.redis_prefix, name, targets, wait_sec) if wait_sec else {}
    return _report(targets, ended, as_json)


def _report(targets: list[Any], ended: dict[str, dict[str, Any] | None], as_json: bool) -> int:
    from novajobs.output import print_json, print_line

    rows = [{"unit": t.unit, "run_id": t.run_id, "stopped": ended.get(t.run_id) is not None,
             "record": ended.get(t.run_id)} for t in targets]
    if as_json:
        print_json(rows)
    for row in rows:
        rec = row["record"]
        if rec and not as_json:
            print_line(f"{row['unit']}: run {row['run_id']} ended {rec['outcome']} "
                       f"(exit {rec['exit_code']}): {rec['error'] or rec['message'] or ''}")
    if ended and not all(row["stopped"] for row in rows):
        if not as_json:
            print_line("still running at the end of --wait; it stops at its next safe point")
        return int(ExitCode.TIMEOUT)
    return int(ExitCode.OK)



@click.command()
@click.option("--bind", metavar="HOST:PORT",
              help="Where to listen. Default: the setting console_bind (127.0.0.1:8787).")
@click.option("--read-only", is_flag=True, help="Show everything; refuse every action.")
@with_options(*SETTINGS_OPTIONS)
def console(bind: str | None, read_only: bool, **kw: Any) -> int:
    """Serve the web console: every job (schedule, last outcome, recent runs, lock), one
    job's history, a run's counters, error and log lines, streams and dead letters; run
    a job now, stop a run, release a stale lock, replay or purge dead letters. The JSON
    API under /api/ has everything the pages show.

    Loopback only unless console_token is set; every action needs the token (printed
    at start when none is set). Stop with Ctrl-C or SIGTERM.

    Example:

    \b
      novajobs console --bind 127.0.0.1:8787
      NOVAJOBS_CONSOLE_TOKEN=... novajobs console --bind 0.0.0.0:8787 --read-only
    """
    from novajobs.validators import host_port

    settings = settings_from(kw)
    where = bind or settings.console_bind
    if bind and (problem := host_port(bind)):
        raise UsageError(f"--bind {bind!r} {problem}")
    from novajobs.console.server import run_console

    return run_console(settings, where, read_only or settings.console_read_only)
