"""One click command per registered job, built from its JobSpec."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from novajobs.cli.options import JSON_OPTION, SETTINGS_OPTIONS, settings_from
from novajobs.errors import ExitCode, Outcome
from novajobs.registry import JobSpec

if TYPE_CHECKING:
    from novajobs.records import RunRecord


def job_command(spec: JobSpec) -> click.Command:
    def callback(**kw: Any) -> int:
        return _run(spec, kw)

    return click.Command(
        spec.name,
        callback=callback,
        params=[*_job_options(spec), *_run_options(spec), *SETTINGS_OPTIONS, JSON_OPTION],
        help=f"{spec.summary}\n\n{spec.description}\n\nExample:\n\n\b\n  {spec.example}",
        short_help=spec.summary,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def _job_options(spec: JobSpec) -> list[click.Parameter]:
    return [
        click.Argument(
            [o.dest], nargs=-1 if o.multiple else 1, required=False, type=o.type,
            metavar=o.metavar or (f"[{o.flag}]..." if o.multiple else o.flag),
        )
        if o.argument
        else click.Option(
            [o.flag, o.dest],
            type=o.type,
            multiple=o.multiple,
            help=o.help + (f" [setting: {o.setting}]" if o.setting else ""),
            metavar=o.metavar,
            is_flag=o.type is bool,
            default=False if o.type is bool else None,
        )
        for o in spec.options
    ]


def _run_options(spec: JobSpec) -> list[click.Option]:
    options = [
        click.Option(
            ["--timeout"],
            type=click.FloatRange(min=0, min_open=True),
            help=f"Seconds this run may take. Default: {spec.timeout_sec}.",
        ),
        click.Option(["--no-lock"], is_flag=True, help="Run without the Redis lock (ad hoc)."),
        click.Option(
            ["--wait"],
            type=click.FloatRange(min=0),
            default=0.0,
            metavar="SECONDS",
            help="Wait up to this long for a held lock instead of skipping at once.",
        ),
        click.Option(
            ["--skip-ok"],
            is_flag=True,
            help=f"Exit 0 instead of {int(ExitCode.SKIPPED)} when skipped for a held lock.",
        ),
    ]
    if spec.shardable:
        options.append(
            click.Option(
                ["--shard"],
                metavar="I/N|auto",
                help="Only shard I of N (1-based; items with id % N == I-1). 'auto': "
                "Kubernetes Indexed-Job index of shard_count shards.",
            )
        )
    if spec.destructive:
        options.append(
            click.Option(
                ["--dry-run"], is_flag=True, help="Say what would be done; change nothing."
            )
        )
    return options


def _run(spec: JobSpec, kw: dict[str, Any]) -> int:
    # Imported here, not at the top: `novajobs --help` must stay as cheap as click itself.
    from novajobs.context import Shard
    from novajobs.runner import RunOptions, run_job

    given = {o.dest for o in spec.options if kw.get(o.dest) not in (None, ())}  # () = no flag
    overrides = {o.setting: kw.pop(o.dest) for o in spec.options if o.setting and o.dest in given}
    as_json = kw.pop("as_json")
    settings = settings_from(kw, overrides)
    shard = None
    if kw.get("shard"):
        shard = Shard.parse(
            kw["shard"],
            completion_index=os.environ.get("JOB_COMPLETION_INDEX"),
            shard_count=settings.shard_count,
        )
    options = RunOptions(
        timeout_sec=kw["timeout"],
        use_lock=not kw["no_lock"],
        wait_sec=kw["wait"],
        shard=shard,
        dry_run=bool(kw.get("dry_run")),
    )
    params = {o.dest: kw[o.dest] for o in spec.options if not o.setting and o.dest in given}
    rec = run_job(spec, settings, options, **params)
    _show(rec, as_json)
    if rec.outcome is Outcome.SKIPPED and kw["skip_ok"]:
        return int(ExitCode.OK)
    return rec.exit_code


def _show(rec: RunRecord, as_json: bool) -> None:
    """The run's result on stdout: JSON on request, a short table on a terminal."""
    from novajobs.output import print_json, print_table

    if as_json:
        print_json(rec.to_json())
        return
    if not sys.stdout.isatty():
        return  # the log's last line already says it all
    rows = [
        ("outcome", str(rec.outcome)),
        ("exit code", rec.exit_code),
        ("duration", f"{rec.duration_ms / 1000:.2f} s"),
    ]
    if rec.message or rec.error:
        rows.append(("message", rec.message or rec.error))
    rows.extend((name, value) for name, value in rec.counters.items())
    print_table(f"{rec.unit} run {rec.run_id}", ("", ""), rows)
    # A job may name the list in its details that is its result (days, gaps, ...).
    listed = rec.details.get(rec.details.get("listing", ""), [])
    if listed and isinstance(listed[0], dict):
        print_table(rec.details["listing"], list(listed[0]), [list(r.values()) for r in listed])
