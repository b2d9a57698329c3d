"""The shape of the code, checked from the code itself.

- The registry: every job loads, takes exactly the parameters its command passes, and
  names only real settings ("Adding a job" in docs/development.md lists what else).
- The floors, from the imports (lazy ones inside functions included): the core imports
  no job, no CLI and no console; jobs import no CLI or console; only the CLI imports
  click, only output.py imports rich; the bottom floor (validators, dates, errors,
  redact) imports nothing of novajobs but the errors.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from novajobs.registry import ALL_JOBS
from novajobs.settings import setting_names

PACKAGE = Path(__file__).resolve().parent.parent / "novajobs"
ADAPTERS = ("novajobs.cli", "novajobs.console")  # the two user interfaces over the core
BOTTOM = ("novajobs.validators", "novajobs.dates", "novajobs.errors", "novajobs.redact")


def _imports() -> dict[str, set[str]]:
    """Every novajobs module -> the absolute module names it imports, anywhere in it."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module}: relative import (use novajobs.…)"
                names.add(str(node.module))
        found[module] = names
    return found


IMPORTS = _imports()


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _layer(module: str) -> str:
    if module == "novajobs.__main__" or _within(module, *ADAPTERS):
        return "adapter"
    return "job" if _within(module, "novajobs.jobs") else "core"


def test_the_core_imports_no_job_cli_or_console():
    wrong = {m: sorted(n for n in names if _within(n, "novajobs.jobs", *ADAPTERS))
             for m, names in IMPORTS.items() if _layer(m) == "core"}
    assert {m: n for m, n in wrong.items() if n} == {}


def test_jobs_import_no_cli_or_console_and_the_console_no_job_or_cli():
    wrong = {m: sorted(n for n in names if _within(n, *ADAPTERS))
             for m, names in IMPORTS.items() if _layer(m) == "job"}
    wrong |= {m: sorted(n for n in names if _within(n, "novajobs.jobs", "novajobs.cli"))
              for m, names in IMPORTS.items() if _within(m, "novajobs.console")}
    assert {m: n for m, n in wrong.items() if n} == {}


def test_jobs_reach_stores_as_ctx_attributes_not_through_the_connections():
    """One surface for jobs and their helpers: ctx.redis, ctx.pg, ctx.clickhouse, ctx.s3,
    ctx.neo4j, ctx.elasticsearch."""
    reaching = sorted(
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("context.py", "runner.py")  # the owner, and closing up after a run
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "conns"
    )
    assert reaching == []


@pytest.mark.parametrize(("library", "allowed"), [
    ("click", ("novajobs.cli",)),
    ("rich", ("novajobs.output",)),
])
def test_only_one_layer_imports_the_ui_library(library, allowed):
    users = sorted(m for m, names in IMPORTS.items()
                   if any(_within(n, library) for n in names) and not _within(m, *allowed))
    assert users == []


def test_the_bottom_floor_reaches_no_higher_than_the_errors():
    wrong = {m: sorted(n for n in IMPORTS[m] if _within(n, "novajobs") and n != "novajobs.errors")
             for m in BOTTOM}
    assert {m: n for m, n in wrong.items() if n} == {}


@pytest.mark.parametrize("spec", ALL_JOBS, ids=lambda spec: spec.name)
def test_the_job_loads_and_takes_exactly_what_its_command_passes(spec):
    run = spec.load()
    assert spec.module == "novajobs.jobs." + spec.name.replace("-", "_")  # one module per job
    params = list(inspect.signature(run).parameters.values())
    assert params[0].name == "ctx"
    # The command passes ctx plus every option that is not a setting, by its dest.
    passed = sorted(o.dest for o in spec.options if o.setting is None)
    assert sorted(p.name for p in params[1:]) == passed
    assert all(p.default is not inspect.Parameter.empty for p in params[1:]), \
        "every parameter has a default: the scheduled run passes none"


@pytest.mark.parametrize("spec", ALL_JOBS, ids=lambda spec: spec.name)
def test_the_job_names_only_real_settings(spec):
    known = set(setting_names())
    named = [o.setting for o in spec.options if o.setting] + [spec.lock_scope or "redis_url"]
    assert [name for name in named if name not in known] == []
    dests = [o.dest for o in spec.options]
    assert len(dests) == len(set(dests)), "two options with one destination"


def test_comments_point_at_the_docs_not_at_documents_outside_the_repository():
    """The seed documents, the spec and the issue tracker are not shipped with the code."""
    outside = re.compile(r"\bseed 0\d\d\b|\bSPEC §|\bissue #\d+")
    roots = [PACKAGE, PACKAGE.parent / "scripts", PACKAGE.parent / "tests"]
    found = sorted(f"{path.relative_to(PACKAGE.parent)}:{number}"
                   for root in roots for path in root.rglob("*.py")
                   for number, line in enumerate(path.read_text().splitlines(), 1)
                   if outside.search(line))
    assert found == []


def test_job_names_are_unique_and_every_job_module_is_registered():
    names = [spec.name for spec in ALL_JOBS]
    assert len(names) == len(set(names))
    modules = {p.stem for p in (PACKAGE / "jobs").glob("*.py") if p.stem != "__init__"}
    assert modules == {spec.module.rsplit(".", 1)[1] for spec in ALL_JOBS}
