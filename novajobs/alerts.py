"""Alerts: a webhook (Slack-compatible JSON) and/or an email when a run needs a human.

The runner calls ``send_alerts`` once per run, after the outcome is known. A check that
found a problem alerts for the jobs in ``alert_on_problem``; a failed run (failed,
unavailable, timeout, lock lost, or a configuration error found while running, such as a
missing table) for the jobs in ``alert_on_failure``. Skipped, interrupted (someone or
something stopped it on purpose), usage-error, successful and dry runs never alert.

Alerting is best effort by design: a webhook or SMTP server that is down must not turn a
good run into a failed one, nor hide the real outcome of a bad one. Every failure to send
is logged and counted (``alerts_failed`` in the run record), never raised. A cooldown key
in Redis keeps a job that fails every minute from sending an alert every minute.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.errors import Outcome
from novajobs.records import now_iso
from novajobs.retry import describe_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from novajobs.context import JobContext
    from novajobs.records import RunRecord
    from novajobs.settings import Settings

FAILURES = frozenset({Outcome.FAILED, Outcome.UNAVAILABLE, Outcome.TIMEOUT, Outcome.LOCK_LOST,
                      Outcome.CONFIG_ERROR})


@dataclass(frozen=True)
class Alert:
    kind: str  # "problem" or "failure"
    title: str
    lines: tuple[str, ...]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join((self.title, *self.lines))


def alert_kind(settings: Settings, rec: RunRecord) -> str | None:
    """"problem", "failure" or None: whether (and why) this run alerts."""
    if rec.outcome is Outcome.PROBLEM_FOUND:
        return "problem" if _selected(settings.alert_on_problem, rec.job) else None
    if rec.outcome in FAILURES:
        return "failure" if _selected(settings.alert_on_failure, rec.job) else None
    return None


def _selected(jobs: tuple[str, ...], job: str) -> bool:
    return "*" in jobs or job in jobs


def build_alert(kind: str, rec: RunRecord) -> Alert:
    if kind == "problem":
        title = f"novajobs {rec.unit}: problem found (exit {rec.exit_code})"
    else:
        title = f"novajobs {rec.unit}: {rec.outcome} (exit {rec.exit_code})"
    lines = [rec.message or rec.error or str(rec.outcome)]
    if rec.error and rec.message:
        lines.append(f"error: {rec.error}")
    lines.append(
        f"host {rec.host}, run {rec.run_id}, started {rec.started_at}, "
        f"took {rec.duration_ms / 1000:.1f} s"
    )
    if rec.counters:
        lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in rec.counters.items()))
    return Alert(kind, title, tuple(lines), rec.to_json(with_details=False))


def channels(settings: Settings) -> list[tuple[str, Callable[[Settings, Alert], None]]]:
    """The configured ways to send an alert, by name."""
    found: list[tuple[str, Callable[[Settings, Alert], None]]] = []
    if settings.alert_webhook_url:
        found.append(("webhook", send_webhook))
    if settings.alert_smtp_host:
        found.append(("email", send_email))
    return found


def send_alerts(ctx: JobContext, rec: RunRecord, use_redis: bool = True) -> None:
    """Send this run's alert if it needs one. Never raises; adds alerts_* counters.
    ``use_redis=False``: Redis just failed to answer, send without the cooldown."""
    try:
        _send_alerts(ctx, rec, use_redis)
    except Exception as exc:  # a bug or a broken setting here must not hide the outcome
        ctx.log.warning("alerting failed", error=describe_error(exc))
        _count(ctx, rec, "alerts_failed")


def _send_alerts(ctx: JobContext, rec: RunRecord, use_redis: bool) -> None:
    settings = ctx.settings
    kind = alert_kind(settings, rec)
    ways = channels(settings)
    # A dry run is someone at a terminal looking: they see the outcome, on-call need not.
    if kind is None or not ways or ctx.dry_run:
        return
    cooldown_key = ctx.key(f"job:alert:{rec.unit}:{kind}")
    if use_redis and not _start_cooldown(ctx, cooldown_key):
        ctx.log.info("alert suppressed: one was sent within alert_cooldown_sec",
                     redis_key=cooldown_key, cooldown_sec=settings.alert_cooldown_sec)
        _count(ctx, rec, "alerts_suppressed")
        return
    alert = build_alert(kind, rec)
    sent = 0
    for name, send in ways:
        try:
            send(settings, alert)
        except Exception as exc:
            ctx.log.warning("alert not sent", channel=name, error=describe_error(exc))
            _count(ctx, rec, "alerts_failed")
        else:
            ctx.log.info("alert sent", channel=name, kind=kind)
            _count(ctx, rec, "alerts_sent")
            sent += 1
    if not sent and use_redis:  # nobody heard it: let the next run try again
        _end_cooldown(ctx, cooldown_key)


def _start_cooldown(ctx: JobContext, key: str) -> bool:
    """True if no alert of this kind went out within the cooldown (and claim it now).

    SET NX makes the claim atomic, so shards failing together send one alert. If Redis
    itself is down (often the very reason the job failed) the alert goes out anyway.
    """
    seconds = ctx.settings.alert_cooldown_sec
    if seconds <= 0:
        return True
    try:
        return bool(ctx.redis.set(key, now_iso(), nx=True, ex=seconds))
    except Exception as exc:
        ctx.log.warning("alert cooldown unknown (Redis); sending anyway", error=describe_error(exc))
        return True


def _end_cooldown(ctx: JobContext, key: str) -> None:
    if ctx.settings.alert_cooldown_sec <= 0:
        return
    try:
        ctx.redis.delete(key)
    except Exception as exc:
        ctx.log.debug("could not clear the alert cooldown", error=describe_error(exc))


def _count(ctx: JobContext, rec: RunRecord, name: str) -> None:
    ctx.count(name)
    rec.counters[name] = rec.counters.get(name, 0) + 1


# -- channels -------------------------------------------------------------------------


def webhook_body(alert: Alert) -> dict[str, Any]:
    """Slack's incoming-webhook body (``text``, which Mattermost, Rocket.Chat, Teams'
    Slack connector... also read) plus the run record for receivers that want fields."""
    title, *rest = alert.text.splitlines()
    return {"text": f"*{title}*\n" + "\n".join(rest), "novajobs": {"kind": alert.kind,
                                                                    **alert.record}}


def send_webhook(settings: Settings, alert: Alert) -> None:
    import urllib.request

    from novajobs import __version__

    request = urllib.request.Request(
        settings.alert_webhook_url,
        data=json.dumps(webhook_body(alert), default=str).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"novajobs/{__version__}"},
        method="POST",
    )
    # urlopen raises HTTPError for any non-2xx answer: that is "not sent".
    with urllib.request.urlopen(request, timeout=settings.alert_timeout_sec) as response:
        response.read()


def email_message(settings: Settings, alert: Alert) -> Any:
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    msg = EmailMessage()
    msg["Subject"] = alert.title
    msg["From"] = settings.alert_email_from or f"novajobs@{socket.getfqdn()}"
    msg["To"] = ", ".join(settings.alert_email_to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="novajobs")
    msg.set_content(alert.text + "\n")
    return msg


def send_email(settings: Settings, alert: Alert) -> None:
    import smtplib

    if not settings.alert_email_to:
        raise ValueError("alert_smtp_host is set but alert_email_to names no recipient")
    host, port = settings.alert_smtp_host, settings.alert_smtp_port
    timeout = settings.alert_timeout_sec
    smtp: smtplib.SMTP
    if settings.alert_smtp_tls == "ssl":
        smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=_tls_context(settings))
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        if settings.alert_smtp_tls == "starttls":
            smtp.starttls(context=_tls_context(settings))
        if settings.alert_smtp_username:
            smtp.login(settings.alert_smtp_username, settings.alert_smtp_password)
        smtp.send_message(email_message(settings, alert))


def _tls_context(settings: Settings) -> Any:
    import ssl

    return ssl.create_default_context(cafile=settings.alert_smtp_ca_file or None)
