"""Dates, ISO weeks and time ranges as report and check jobs take them on the command line.

Every parser raises ``UsageError`` with one line naming the flag, so a typo in a
backfill exits 2 before anything is read or written. Days and weeks are calendar days
in the configured time zone: a day is ``[00:00, next 00:00)`` local time, 23 or 25
hours long across a DST change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from novajobs.errors import UsageError

MAX_BACKFILL_DAYS = 3660  # ten years: a longer range is far more likely a typo than a wish
CLOCK_SKEW_SEC = 300  # a scheduled time this far ahead of our clock is still believed

_WEEK = re.compile(r"^(\d{4})-?W?(\d{1,2})$", re.IGNORECASE)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)$", re.IGNORECASE)
_UNIT_SEC = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
DURATION_HELP = "a duration with a unit: s, m (min), h or d (e.g. 24h, 90min), or 0"
# strftime directives that can be found in a name (an index's), as regular expressions.
_NAME_DIRECTIVES = {"%Y": r"\d{4}", "%y": r"\d{2}", "%m": r"\d{2}", "%d": r"\d{2}",
                    "%H": r"\d{2}", "%j": r"\d{3}", "%%": "%"}
# A Kubernetes object name (DNS-1123 label); a CronJob names its Jobs <cronjob>-<minutes>.
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CRONJOB_MINUTES = re.compile(r"-(\d{8,})$")  # minutes since 1970: 8 digits since 1989


def parse_date(text: str, flag: str) -> date:
    """``2025-11-24`` -> a date."""
    try:
        return date.fromisoformat(str(text).strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a date like 2025-11-24") from None


def local_today(tz: str, now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(ZoneInfo(tz)).date()


def day_start(day: date, tz: str) -> datetime:
    """Midnight at the start of ``day`` in ``tz``, as an aware datetime."""
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(tz))


def resolve_days(
    tz: str,
    *,
    on: str | None = None,
    first: str | None = None,
    last: str | None = None,
    now: datetime | None = None,
) -> tuple[date, date]:
    """The inclusive day range of ``--date`` or ``--from/--to``; default yesterday.

    ``--from`` alone runs through yesterday. Days after today are refused: a report
    for them would be all zeros and look true.
    """
    today = local_today(tz, now)
    if on is not None and (first is not None or last is not None):
        raise UsageError("--date cannot be combined with --from/--to")
    if last is not None and first is None:
        raise UsageError("--to needs --from (or use --date for one day)")
    if on is not None:
        lo = hi = parse_date(on, "--date")
    elif first is not None:
        lo = parse_date(first, "--from")
        hi = parse_date(last, "--to") if last is not None else today - timedelta(days=1)
    else:
        lo = hi = today - timedelta(days=1)
    if lo > hi:
        raise UsageError(f"--from {lo} is after --to {hi}")
    if hi > today:
        raise UsageError(f"{hi} is in the future (today is {today} in {tz})")
    if (hi - lo).days + 1 > MAX_BACKFILL_DAYS:
        raise UsageError(f"--from {lo} --to {hi} spans more than {MAX_BACKFILL_DAYS} days")
    return lo, hi


@dataclass(frozen=True)
class IsoWeek:
    year: int
    week: int

    @property
    def label(self) -> str:
        """How ``group_activity_rank.stat_week`` stores it: ``2025-48``."""
        return f"{self.year}-{self.week:02d}"

    @property
    def monday(self) -> date:
        return date.fromisocalendar(self.year, self.week, 1)

    def bounds(self, tz: str) -> tuple[datetime, datetime]:
        """``[Monday 00:00, next Monday 00:00)`` in ``tz``."""
        return day_start(self.monday, tz), day_start(self.monday + timedelta(days=7), tz)

    def __str__(self) -> str:
        return self.label

    def next(self) -> IsoWeek:
        return IsoWeek.of(self.monday + timedelta(days=7))

    @classmethod
    def of(cls, day: date) -> IsoWeek:
        year, week, _ = day.isocalendar()
        return cls(year, week)


def parse_week(text: str) -> IsoWeek:
    """``2025-48`` (also ``2025-W48``, ``2025W48``) -> an ISO week that exists."""
    match = _WEEK.match(str(text).strip())
    if not match:
        raise UsageError(f"--week {text!r}: expected an ISO week like 2025-48")
    year, week = int(match[1]), int(match[2])
    try:
        date.fromisocalendar(year, week, 1)
    except ValueError:
        last = date(year, 12, 28).isocalendar()[1]  # Dec 28 is always in the last week
        raise UsageError(f"--week {text!r}: ISO year {year} has weeks 1 to {last}") from None
    return IsoWeek(year, week)


def resolve_week(tz: str, text: str | None = None, now: datetime | None = None) -> IsoWeek:
    """``--week``, or last week; a week that has not started yet is refused."""
    today = local_today(tz, now)
    if text is None:
        return IsoWeek.of(today - timedelta(days=7))
    week = parse_week(text)
    if week.monday > today:
        raise UsageError(f"--week {week.label} has not started yet (today is {today} in {tz})")
    return week


def parse_duration(text: str) -> float:
    """``"90min"``, ``"15m"``, ``"1.5h"``, ``"3600s"``, ``"2d"`` or ``"0"`` -> seconds;
    ValueError otherwise. The one grammar of every length of time novajobs reads (ages,
    grace periods, retention). The unit is required: a bare ``24`` meant as hours would be
    read as seconds, and for a grace period before deleting files that is not harmless."""
    raw = str(text).strip()
    if raw == "0":
        return 0.0
    match = _DURATION.match(raw)
    if not match:
        raise ValueError(f"{text!r} is not {DURATION_HELP}")
    return float(match[1]) * _UNIT_SEC[match[2].lower()]


def name_date_regex(fmt: str) -> re.Pattern[str]:
    """``"%Y.%m.%d"`` -> a regex finding such a date in a name. ValueError if unusable."""
    parts = []
    for part in re.split(r"(%.)", fmt):
        if len(part) == 2 and part.startswith("%"):
            if part not in _NAME_DIRECTIVES:
                known = " ".join(_NAME_DIRECTIVES)
                raise ValueError(f"uses {part}; only {known} can be read from a name")
            parts.append(_NAME_DIRECTIVES[part])
        else:
            parts.append(re.escape(part))
    if "%Y" not in fmt and "%y" not in fmt:
        raise ValueError("has no year (%Y or %y)")
    return re.compile("".join(parts))


def date_in_name(name: str, fmt: str) -> datetime | None:
    """The first valid date of format ``fmt`` in ``name`` (UTC), or None."""
    for match in name_date_regex(fmt).finditer(name):
        try:
            return datetime.strptime(match.group(0), fmt).replace(tzinfo=UTC)
        except ValueError:  # e.g. a 13th month: not a date, look further
            continue
    return None


def parse_instant(text: str, flag: str, tz: str, now: datetime) -> datetime:
    """An ISO date-time (naive = in ``tz``), ``now``, or an age such as ``15m``, ``2h``, ``1d``."""
    raw = str(text).strip()
    if raw.lower() == "now":
        return now
    if _DURATION.match(raw) or raw == "0":
        return now - timedelta(seconds=parse_duration(raw))
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: expected an ISO time (2025-11-24T10:00, 2025-11-24 10:00+01:00), "
            "'now', or an age such as 15m, 2h, 1d"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(tz))


def resolve_range(
    tz: str,
    *,
    since: str | None,
    until: str | None,
    default_until: datetime,
    default_span: timedelta,
    now: datetime,
) -> tuple[datetime, datetime]:
    """``--since/--until``; by default until ``default_until`` and ``default_span`` before it."""
    end = parse_instant(until, "--until", tz, now) if until is not None else default_until
    start = parse_instant(since, "--since", tz, now) if since is not None else end - default_span
    if start >= end:
        raise UsageError(f"--since {start.isoformat()} is not before --until {end.isoformat()}")
    return start, end


# --- the scheduled time of a run (its logical "now") -----------------------------------


def scheduled_instant(value: str, cronjob: str) -> datetime | None:
    """The time a run was scheduled for, from the setting ``scheduled_time``.

    ``value`` is an ISO time with an offset, or the name of the Kubernetes Job running
    this pod: a CronJob names its Jobs ``<cronjob>-<scheduled minute since 1970>``, which
    the generated manifests pass in (the CronJob's scheduled-timestamp annotation is on
    the Job only, out of the pod's reach). None means "use the clock": no value, or a
    Job of another name (made by hand with ``kubectl create job --from=cronjob/...``).
    """
    if not value:
        return None
    if not _K8S_NAME.match(value):
        return datetime.fromisoformat(value).astimezone(UTC)
    minutes = _CRONJOB_MINUTES.search(value)
    if minutes is None or value[: minutes.start()] != cronjob:
        return None
    return datetime.fromtimestamp(int(minutes[1]) * 60, UTC)


def check_scheduled_time(value: str) -> str | None:
    """The settings check of ``scheduled_time`` (a complaint, or None when fine)."""
    if not value:
        return None
    if _K8S_NAME.match(value):
        minutes = _CRONJOB_MINUTES.search(value)
        at = datetime.fromtimestamp(int(minutes[1]) * 60, UTC) if minutes else None
    else:
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return ("must be an ISO time with an offset (2025-11-24T01:00:00Z) or the "
                    "Kubernetes Job name a CronJob gave the run")
        if at.tzinfo is None:
            return "needs an offset (Z or +01:00): the scheduled time must be unambiguous"
    if at is not None and (at - datetime.now(UTC)).total_seconds() > CLOCK_SKEW_SEC:
        return f"is in the future ({at.isoformat()}): a run cannot be scheduled later than now"
    return None
