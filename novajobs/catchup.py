"""Catch-up of missed report periods, and the logical "now" of a scheduled run.

cron and Kubernetes skip runs while a host or a cluster is down (a CronJob even stops
scheduling after 100 missed starts): a daily report then has a hole for every missed
day, and nobody notices. A report job's scheduled run therefore also fills the periods
missing from its own table since the first one it holds, oldest first, at most
``catchup_max_periods`` per run and only while the run's budget allows; the rest is
reported (counters ``periods_missed``, ``periods_filled``, ``periods_left``; the
Pushgateway's ``novajobs_missed_periods``) and the next run goes on. A period already
in the table is never recomputed by a catch-up; an explicit ``--date``/``--week`` is
how to recompute one. ``--no-catchup`` still looks and reports, but fills nothing.

The logical now: a run started late (a node was busy, the CronJob controller was down)
computes the period it was *scheduled* for, not the one of the moment it started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from novajobs.context import Result
from novajobs.dates import scheduled_instant

if TYPE_CHECKING:
    from novajobs.context import JobContext

P = TypeVar("P")

LOGGED_PERIODS_MAX = 20  # periods named in a log line; --json has all of them
RESERVE_SEC = 5.0  # left in the budget after the last period (record, release, report)


def cronjob_name(job: str) -> str:
    """The name of a job's CronJob (deploy.py): its Jobs are ``<name>-<minute>``."""
    return f"novajobs-{job}"


def logical_now(ctx: JobContext) -> datetime:
    """When this run was scheduled, if it says (setting ``scheduled_time``); else now."""
    value = ctx.settings.scheduled_time
    scheduled = scheduled_instant(value, cronjob_name(ctx.job))
    if scheduled is None:
        if value:
            ctx.log.info("scheduled_time names no Job of this job's CronJob (a run made by "
                         "hand?): the clock is the run's now", scheduled_time=value)
        return datetime.now(UTC)
    ctx.log.info("the run computes the periods of its scheduled time",
                 scheduled_time=scheduled.isoformat())
    return scheduled


@dataclass
class CatchUp(Generic[P]):
    """The missed periods a run found (oldest first) and how many of them it filled."""

    missed: Sequence[P]
    filled: list[P] = field(default_factory=list)
    unit: str = "periods"

    @property
    def left(self) -> Sequence[P]:
        return self.missed[len(self.filled):]

    def summary(self) -> str:
        """``; filled 3 of 5 missed days (2 left for the next run)``, or ''."""
        if not self.missed:
            return ""
        text = f"; filled {len(self.filled)} of {len(self.missed)} missed {self.unit}"
        return text + (f" ({len(self.left)} left for the next run)" if self.left else "")

    def details(self) -> dict[str, Any]:
        return {
            "missed": [str(p) for p in self.missed],
            "filled": [str(p) for p in self.filled],
            "left": [str(p) for p in self.left],
        }


def with_catchup(result: Result, catch: CatchUp[Any] | None) -> Result:
    """``result`` telling what the catch-up did (none: unchanged): its summary after the
    message, its periods in ``details["catchup"]``."""
    if catch is not None:
        result.message += catch.summary()
        result.details["catchup"] = catch.details()
    return result


def fill_missed(
    ctx: JobContext,
    missed: Sequence[P],
    fill: Callable[[P], object],
    *,
    enabled: bool = True,
    unit: str = "periods",
) -> CatchUp[P]:
    """Fill ``missed`` (oldest first) one period at a time, within the cap and budget."""
    catch = CatchUp(missed, unit=unit)
    if missed:
        ctx.log.warning(
            f"{len(missed)} missed {unit} found (runs the schedule skipped)",
            periods=[str(p) for p in missed[:LOGGED_PERIODS_MAX]],
        )
    cap = ctx.settings.catchup_max_periods if enabled else 0
    slowest = 0.0
    try:
        for period in missed[:cap]:
            if not _budget_allows(ctx, slowest):
                ctx.log.warning("the run's budget ends the catch-up here", next_period=str(period))
                break
            started = time.monotonic()
            fill(period)
            slowest = max(slowest, time.monotonic() - started)
            catch.filled.append(period)
    finally:  # a stop signal mid-way: what was filled is committed, and counted
        ctx.count("periods_missed", len(missed))
        ctx.count("periods_filled", len(catch.filled))
        ctx.count("periods_left", len(catch.left))
    if catch.left:
        ctx.log.warning(f"{len(catch.left)} missed {unit} left for the next run",
                        periods=[str(p) for p in catch.left[:LOGGED_PERIODS_MAX]])
    return catch


def _budget_allows(ctx: JobContext, slowest_sec: float) -> bool:
    """One more period fits if twice the slowest so far still leaves the reserve."""
    left = ctx.guard.remaining()
    return left is None or left > 2 * slowest_sec + RESERVE_SEC
