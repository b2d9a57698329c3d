"""Options every command shares, in one place, and the settings they build."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from novajobs.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

SETTINGS_OPTIONS = (
    click.Option(
        ["--config", "config_file"],
        type=click.Path(dir_okay=False),
        help="TOML config file (default: $NOVAJOBS_CONFIG).",
    ),
    click.Option(
        ["-s", "--set", "assignments"],
        multiple=True,
        metavar="NAME=VALUE",
        help="Override any setting (see `novajobs config`), e.g. -s trending_topk=20.",
    ),
    click.Option(
        ["--log-format"],
        type=click.Choice(["auto", "rich", "json"]),
        help="Log lines for a terminal (rich) or one JSON object per line. Default: auto.",
    ),
    click.Option(
        ["--log-file"],
        metavar="PATH",
        help="Append the log (JSON lines) to PATH instead of stderr; its directory is created.",
    ),
    click.Option(["-v", "--verbose"], is_flag=True, help="Debug log lines."),
)

JSON_OPTION = click.Option(["--json", "as_json"], is_flag=True, help="Print JSON.")


def with_options(*options: click.Option) -> Callable[[F], F]:
    """Attach ready-made click options to a command function."""

    def decorate(func: F) -> F:
        params = getattr(func, "__click_params__", [])
        params.extend(reversed(options))
        func.__click_params__ = params  # type: ignore[attr-defined]
        return func

    return decorate


def settings_from(kw: dict[str, Any], overrides: dict[str, Any] | None = None) -> Settings:
    """Pop the shared options out of ``kw``, load and validate settings, set up logging."""
    from novajobs.output import setup_logging
    from novajobs.settings import load_settings, parse_assignment

    values = dict(overrides or {})
    for text in kw.pop("assignments", ()) or ():
        name, value = parse_assignment(text)
        values[name] = value
    log_format = kw.pop("log_format", None)
    if log_format:
        values["log_format"] = log_format
    log_file = kw.pop("log_file", None)
    if log_file:
        values["log_file"] = log_file
    if kw.pop("verbose", False):
        values["log_level"] = "debug"
    settings = load_settings(kw.pop("config_file", None), overrides=values)
    setup_logging(settings.log_format, settings.log_level, settings.log_file)
    return settings
