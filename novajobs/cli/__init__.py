"""The `novajobs` command: a thin click adapter over the registry and plain functions.

This package is the only place that imports click, and ``main`` is the only place that
turns an error into a process exit.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from novajobs import __version__
from novajobs.cli import admin, db, deploy, dlq, quarantine, runs
from novajobs.cli.jobs import job_command
from novajobs.errors import ExitCode, NovajobsError
from novajobs.registry import ALL_JOBS


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # Jobs in registry order first, then the commands around them.
        jobs = [spec.name for spec in ALL_JOBS]
        return jobs + sorted(name for name in self.commands if name not in jobs)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="novajobs")
def cli() -> None:
    """Periodic back-office jobs, one idempotent subcommand each.

    Every job takes a Redis lock, runs once, records the run and exits with a
    documented status code (see README). Scheduling is cron's or Kubernetes' job.

    Shell completion: eval "$(_NOVAJOBS_COMPLETE=bash_source novajobs)"

    Example:

    \b
      novajobs refresh-trending
      novajobs status
    """


for _spec in ALL_JOBS:
    cli.add_command(job_command(_spec))
admin.register(cli)
deploy.register(cli)
db.register(cli)
dlq.register(cli)
runs.register(cli)
quarantine.register(cli)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(argv))


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (tests call this)."""
    try:
        result: Any = cli.main(args=argv, prog_name="novajobs", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("novajobs: aborted", err=True)
        return int(ExitCode.INTERRUPTED)
    except NovajobsError as exc:
        _error_line(str(exc))
        return int(exc.exit_code)
    except Exception as exc:  # from a command outside the runner (status, dlq, init-db...)
        from novajobs.diagnose import known_failure
        from novajobs.errors import Outcome
        from novajobs.retry import classify, describe_error

        if (known := known_failure(exc)) is not None:  # a bad certificate, a replica...
            _error_line(str(known))
            return int(known.exit_code)
        outcome = classify(exc)
        if outcome is Outcome.FAILED:
            raise
        what = "misconfigured" if outcome is Outcome.CONFIG_ERROR else "store unreachable"
        _error_line(f"{what}: {describe_error(exc)}")
        return int(outcome.exit_code)
    return result if isinstance(result, int) else 0


def _error_line(text: str) -> None:
    from novajobs.redact import redact_text

    click.echo(f"novajobs: {redact_text(text)}", err=True)
