"""`novajobs render-deploy`: write (or check) the deployment files from the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from novajobs.cli.options import SETTINGS_OPTIONS, settings_from, with_options
from novajobs.errors import ExitCode


def register(group: click.Group) -> None:
    group.add_command(render_deploy)


@click.command("render-deploy")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write crontab.example and k8s-cronjobs/ into.",
)
@click.option(
    "--check",
    is_flag=True,
    help=f"Write nothing; exit {int(ExitCode.PROBLEM_FOUND)} if a file differs from what "
    "would be rendered (CI).",
)
@with_options(*SETTINGS_OPTIONS)
def render_deploy(out: Path, check: bool, **kw: Any) -> int:
    """Render crontab.example, k8s-cronjobs/*.yaml (one CronJob per job) and the
    Prometheus alerting rules from the job registry.

    Settings shape the output (timezone, k8s_image, k8s_namespace, k8s_secret,
    k8s_configmap, k8s_* resources, k8s_default_shards, k8s_pods): pass them as
    flags or a config file. Files of jobs no longer in the registry are removed.

    Example:

    \b
      novajobs render-deploy --out . -s k8s_image=registry.example.com/novajobs:0.1.0
      novajobs render-deploy --check
    """
    from novajobs.deploy import drift, render_all, write_files
    from novajobs.output import print_line

    files = render_all(settings_from(kw))
    if check:
        differing = drift(out, files)
        for rel in differing:
            print_line(f"out of date: {rel}")
        if differing:
            print_line("run `novajobs render-deploy` to update them")
            return int(ExitCode.PROBLEM_FOUND)
        print_line(f"{len(files)} files up to date")
        return int(ExitCode.OK)
    touched = write_files(out, files)
    for rel in touched:
        print_line(f"wrote {rel}" if rel in files else f"removed {rel}")
    print_line(f"{len(files)} files rendered, {len(touched)} changed")
    return int(ExitCode.OK)
