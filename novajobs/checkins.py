"""Health-check pings in the healthchecks.io style (docs/operations.md): a dead-man's switch.

``healthcheck_url`` is one URL template for every job: ``{job}`` and ``{unit}`` (the
job, or ``job-2-of-4`` for a shard) are filled in, e.g.
``https://hc-ping.com/<ping-key>/{job}`` (healthchecks.io slugs) or a self-hosted
``https://hc.example.com/ping/<uuid>`` for a single job's config file.

| when | request |
| --- | --- |
| the lock is taken | POST ``<url>/start?rid=<run>`` |
| success, nothing to do | POST ``<url>?rid=<run>`` |
| any failure | POST ``<url>/<exit code>?rid=<run>`` (healthchecks.io: non-zero = fail) |
| skipped (lock held); any dry run | POST ``<url>/log?rid=<run>`` only (changes no state) |

``rid`` is the run id as a UUID (healthchecks.io requires one): the run id, left-padded
with zeros, so it still reads in the UUID's last digits. The body is the run as JSON
(outcome, exit code, counters, error). One try per ping with ``report_timeout_sec``: a
missed ping shows up as a late or missing check-in, which is what the check is for; a
failed ping is logged and never fails the run. The URL is never logged (it is a
credential).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from novajobs.errors import NovajobsError, Outcome
from novajobs.retry import describe_error

if TYPE_CHECKING:
    from novajobs.context import JobContext
    from novajobs.records import RunRecord


def ping_start(ctx: JobContext, rec: RunRecord) -> None:
    if ctx.dry_run:
        return  # a dry run does not do the job: it must not look like a run of it
    body = {k: v for k, v in rec.to_json(with_details=False).items()
            if k in ("job", "run_id", "shard", "host", "pid", "started_at")}
    _ping(ctx, rec, "start", body)


def ping_end(ctx: JobContext, rec: RunRecord) -> None:
    _ping(ctx, rec, end_signal(rec, ctx.dry_run), rec.to_json(with_details=False))


def end_signal(rec: RunRecord, dry_run: bool = False) -> str:
    """The path suffix that tells the checker how the run ended."""
    if dry_run or rec.outcome is Outcome.SKIPPED:
        return "log"
    return "" if rec.exit_code == 0 else str(rec.exit_code)


def ping_url(template: str, rec: RunRecord, signal: str) -> str:
    unit = f"{rec.job}-{rec.shard}" if rec.shard else rec.job
    parts = urlsplit(template.format(job=rec.job, unit=unit))
    path = parts.path.rstrip("/") + (f"/{signal}" if signal else "")
    query = "&".join(q for q in (parts.query, f"rid={run_uuid(rec.run_id)}") if q)
    return urlunsplit(parts._replace(path=path, query=query))


def run_uuid(run_id: str) -> str:
    try:
        return str(uuid.UUID(run_id.rjust(32, "0")))
    except ValueError:  # not hex (a caller's own run id): still stable per run
        return str(uuid.uuid5(uuid.NAMESPACE_URL, run_id))


def _ping(ctx: JobContext, rec: RunRecord, signal: str, body: dict[str, Any]) -> None:
    template = ctx.settings.healthcheck_url
    if not template:
        return
    from novajobs.httpreport import send

    what = signal if signal and not signal.isdigit() else ("fail" if signal else "success")
    try:
        url = ping_url(template, rec, signal)
        send(url, json.dumps(body, default=str).encode(), method="POST",
             timeout=ctx.settings.report_timeout_sec, content_type="application/json")
    except NovajobsError:
        raise  # a timeout or a stop signal is the run's business, not a ping failure
    except Exception as exc:
        error = describe_error(exc).replace(template, "<healthcheck_url>")
        ctx.log.warning(f"health-check ping ({what}) failed", error=error)
        return
    ctx.log.debug(f"health-check ping ({what}) sent")
