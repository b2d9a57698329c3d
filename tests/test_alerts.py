"""Alerts from the run contract, received by real local servers: an HTTP receiver
(conftest's webhook_receiver) and aiosmtpd SMTP servers (plain, STARTTLS + AUTH, TLS)."""

from __future__ import annotations

import email
import email.policy
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import probe_job, wait_for

from novajobs.context import JobContext, Result
from novajobs.errors import JobFailed, Outcome
from novajobs.records import status_key
from novajobs.runner import RunOptions, run_job
from novajobs_dev.netfaults import black_hole, refused_port

# -- a job whose outcome the test chooses: the runner and the receivers are the real ones --

def _probe_run(ctx: JobContext, outcome: str = "problem_found", message: str = "") -> Result:
    ctx.count("things_checked", 7)
    if outcome == "failed":
        raise JobFailed(message or "the probe failed on purpose")
    return Result(Outcome(outcome), message or "3 of 7 things are wrong")


SPEC = probe_job("alert-probe", _probe_run)


def probe(settings: Any, outcome: str = "problem_found", **kw: Any) -> Any:
    return run_job(SPEC, settings, RunOptions(), outcome=outcome, **kw)


# -- SMTP servers ---------------------------------------------------------------------


class Inbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
            "login": session.auth_data.login.decode() if session.auth_data else None,
            # STARTTLS sets session.ssl; on a TLS-from-the-start server the transport knows.
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        })
        return "250 OK"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the test's CA file as well)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def start_smtp(inbox: Inbox, **kwargs: Any) -> Any:
    from aiosmtpd.controller import Controller

    controller = Controller(inbox, hostname="127.0.0.1", port=refused_port(), **kwargs)
    controller.start()
    return controller


@pytest.fixture
def smtp_plain() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = start_smtp(inbox)
    yield inbox, controller.port
    controller.stop()


def _accept_user(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    from aiosmtpd.smtp import AuthResult

    ok = data.login == b"alerts" and data.password == b"s3cret-pw"
    return AuthResult(success=ok, handled=False, auth_data=data)


@pytest.fixture
def smtp_starttls(certificate: tuple[Path, Path]) -> Iterator[tuple[Inbox, int]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    inbox = Inbox()
    controller = start_smtp(inbox, tls_context=context, require_starttls=True,
                            authenticator=_accept_user, auth_required=True)
    yield inbox, controller.port
    controller.stop()


@pytest.fixture
def smtp_tls(certificate: tuple[Path, Path]) -> Iterator[tuple[Inbox, int]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    inbox = Inbox()
    # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; this one is TLS throughout.
    controller = start_smtp(inbox, ssl_context=context, authenticator=_accept_user,
                            auth_require_tls=False)
    yield inbox, controller.port
    controller.stop()


# -- webhook --------------------------------------------------------------------------


def test_problem_found_posts_a_slack_compatible_webhook(redis_server, make_settings,
                                                       webhook_receiver, redis_client, names):
    settings = make_settings(alert_webhook_url=webhook_receiver.url)

    rec = probe(settings, message="PostgreSQL users 1000, Neo4j 990")

    assert rec.outcome is Outcome.PROBLEM_FOUND and rec.exit_code == 3
    [body] = webhook_receiver.bodies
    assert webhook_receiver.headers[0]["Content-Type"] == "application/json"
    assert body["text"].startswith("*novajobs alert-probe: problem found (exit 3)*\n")
    assert "PostgreSQL users 1000, Neo4j 990" in body["text"]
    assert "things_checked=7" in body["text"]
    assert body["novajobs"]["kind"] == "problem"
    assert body["novajobs"]["outcome"] == "problem_found"
    assert body["novajobs"]["run_id"] == rec.run_id
    assert rec.counters == {"things_checked": 7, "alerts_sent": 1}
    status = redis_client.hgetall(status_key(names["prefix"], "alert-probe"))
    assert json.loads(status[b"counters"]) == {"things_checked": 7, "alerts_sent": 1}


def test_success_skip_interrupt_and_usage_errors_send_nothing(redis_server, make_settings,
                                                               webhook_receiver):
    settings = make_settings(alert_webhook_url=webhook_receiver.url, alert_cooldown_sec=0)

    for outcome in ("success", "nothing_to_do", "dry_run", "interrupted", "usage_error"):
        assert probe(settings, outcome).outcome.value == outcome
    # An operator's --dry-run that fails or finds a problem: they are looking already.
    for outcome in ("failed", "problem_found"):
        rec = run_job(SPEC, settings, RunOptions(dry_run=True), outcome=outcome)
        assert rec.outcome.value == outcome

    assert webhook_receiver.bodies == []


def test_every_kind_of_failure_alerts(redis_server, make_settings, webhook_receiver):
    settings = make_settings(alert_webhook_url=webhook_receiver.url, alert_cooldown_sec=0)
    failures = ("failed", "unavailable", "timeout", "lock_lost", "config_error")

    codes = [probe(settings, outcome).exit_code for outcome in failures]

    assert codes == [1, 69, 124, 4, 78]
    assert [b["novajobs"]["outcome"] for b in webhook_receiver.bodies] == list(failures)
    assert {b["novajobs"]["kind"] for b in webhook_receiver.bodies} == {"failure"}


def test_failure_alerts_only_for_the_chosen_jobs(redis_server, make_settings, webhook_receiver):
    url = webhook_receiver.url
    others = make_settings(alert_webhook_url=url, alert_on_failure=("refresh-trending",),
                           alert_cooldown_sec=0)
    nobody = make_settings(alert_webhook_url=url, alert_on_failure=(), alert_on_problem=(),
                           alert_cooldown_sec=0)

    assert probe(others, "failed").outcome is Outcome.FAILED
    assert probe(nobody, "failed").outcome is Outcome.FAILED
    assert probe(nobody, "problem_found").outcome is Outcome.PROBLEM_FOUND
    assert webhook_receiver.bodies == []

    rec = probe(make_settings(alert_webhook_url=url), "failed", message="disk full")

    [body] = webhook_receiver.bodies
    assert body["text"].startswith("*novajobs alert-probe: failed (exit 1)*\ndisk full")
    assert body["novajobs"]["kind"] == "failure"
    assert rec.counters["alerts_sent"] == 1


def test_a_real_job_that_cannot_reach_its_store_alerts(redis_server, make_settings,
                                                       webhook_receiver):
    settings = make_settings(alert_webhook_url=webhook_receiver.url, retry_attempts=1,
                             alert_on_failure=("refresh-trending",),
                             clickhouse_url=f"http://127.0.0.1:{refused_port()}")

    rec = run_job("refresh-trending", settings)

    assert rec.outcome is Outcome.UNAVAILABLE and rec.exit_code == 69
    [body] = webhook_receiver.bodies
    assert body["text"].startswith("*novajobs refresh-trending: unavailable (exit 69)*")
    assert body["novajobs"]["error"] == rec.error


def test_cooldown_sends_one_alert_per_job_and_kind(redis_server, make_settings, webhook_receiver,
                                                   redis_client, names):
    settings = make_settings(alert_webhook_url=webhook_receiver.url, alert_cooldown_sec=600)

    first, second = probe(settings), probe(settings)
    failure = probe(settings, "failed")  # another kind: not held back

    assert [b["novajobs"]["kind"] for b in webhook_receiver.bodies] == ["problem", "failure"]
    assert first.counters["alerts_sent"] == 1
    assert second.counters["alerts_suppressed"] == 1 and "alerts_sent" not in second.counters
    assert failure.counters["alerts_sent"] == 1
    assert 590 < redis_client.ttl(f"{names['prefix']}job:alert:alert-probe:problem") <= 600


# -- email ----------------------------------------------------------------------------


def test_failure_sends_an_email(redis_server, make_settings, smtp_plain):
    inbox, port = smtp_plain
    settings = make_settings(alert_smtp_host="127.0.0.1", alert_smtp_port=port,
                             alert_email_from="jobs@example.org",
                             alert_email_to=("sre@example.org", "oncall@example.org"))

    rec = probe(settings, "failed", message="partition for 2026-12 missing")

    assert rec.outcome is Outcome.FAILED and rec.counters["alerts_sent"] == 1
    [mail] = inbox.messages
    assert mail["from"] == "jobs@example.org"
    assert mail["to"] == ["sre@example.org", "oncall@example.org"]
    message = mail["message"]
    assert message["Subject"] == "novajobs alert-probe: failed (exit 1)"
    assert message["To"] == "sre@example.org, oncall@example.org"
    body = message.get_content()
    assert "partition for 2026-12 missing" in body and rec.run_id in body
    assert mail["login"] is None and not mail["tls"]


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_email_over_tls_with_login(redis_server, make_settings, certificate, smtp_starttls,
                                   smtp_tls, mode):
    inbox, port = smtp_starttls if mode == "starttls" else smtp_tls
    settings = make_settings(alert_smtp_host="127.0.0.1", alert_smtp_port=port,
                             alert_smtp_tls=mode, alert_smtp_ca_file=str(certificate[0]),
                             alert_smtp_username="alerts", alert_smtp_password="s3cret-pw",
                             alert_email_to=("sre@example.org",))

    rec = probe(settings)

    assert rec.counters["alerts_sent"] == 1, rec.counters
    wait_for(lambda: inbox.messages, what="the mail")
    [mail] = inbox.messages
    assert mail["login"] == "alerts" and mail["tls"]
    assert mail["message"]["Subject"] == "novajobs alert-probe: problem found (exit 3)"


def test_an_untrusted_certificate_or_wrong_password_is_not_sent(redis_server, make_settings,
                                                                certificate, smtp_starttls):
    inbox, port = smtp_starttls
    base = {"alert_smtp_host": "127.0.0.1", "alert_smtp_port": port, "alert_smtp_tls": "starttls",
            "alert_smtp_username": "alerts", "alert_email_to": ("sre@example.org",),
            "alert_cooldown_sec": 0}
    untrusted = make_settings(**base, alert_smtp_password="s3cret-pw")  # system CAs only
    wrong_pw = make_settings(**base, alert_smtp_password="nope",
                             alert_smtp_ca_file=str(certificate[0]))

    for settings in (untrusted, wrong_pw):
        rec = probe(settings)
        assert rec.outcome is Outcome.PROBLEM_FOUND and rec.exit_code == 3
        assert rec.counters == {"things_checked": 7, "alerts_failed": 1}
    assert inbox.messages == []


# -- sending must never fail or hang the job -------------------------------------------


def test_broken_receivers_do_not_change_the_outcome(redis_server, make_settings, webhook_receiver,
                                                    redis_client, names, caplog):
    webhook_receiver.status = 500
    settings = make_settings(alert_webhook_url=webhook_receiver.url, alert_cooldown_sec=600,
                             alert_smtp_host="127.0.0.1", alert_smtp_port=refused_port(),
                             alert_email_to=("sre@example.org",))

    rec = probe(settings)

    assert rec.outcome is Outcome.PROBLEM_FOUND and rec.exit_code == 3
    assert rec.counters == {"things_checked": 7, "alerts_failed": 2}
    assert len(webhook_receiver.bodies) == 1  # it was tried
    failures = {r.fields["channel"]: r.fields["error"] for r in caplog.records
                if r.getMessage() == "alert not sent"}
    assert failures["webhook"] == "HTTPError: HTTP Error 500: Internal Server Error"
    assert failures["email"].startswith("ConnectionRefusedError")
    status = redis_client.hgetall(status_key(names["prefix"], "alert-probe"))
    assert status[b"outcome"] == b"problem_found"
    # Nobody heard it, so the cooldown does not hold the next run's alert back.
    assert not redis_client.exists(f"{names['prefix']}job:alert:alert-probe:problem")
    webhook_receiver.status = 200
    assert probe(settings).counters["alerts_sent"] == 1


def test_a_receiver_that_never_answers_costs_at_most_the_alert_timeout(redis_server,
                                                                       make_settings):
    with black_hole() as silent:  # accepts connections, never answers
        port = silent.port
        settings = make_settings(alert_webhook_url=f"http://127.0.0.1:{port}/hook",
                                 alert_smtp_host="127.0.0.1", alert_smtp_port=port,
                                 alert_email_to=("sre@example.org",), alert_timeout_sec=0.5)
        started = time.monotonic()
        rec = probe(settings, "failed")
        elapsed = time.monotonic() - started

    assert rec.outcome is Outcome.FAILED and rec.exit_code == 1
    assert rec.counters["alerts_failed"] == 2
    assert elapsed < 5  # two 0.5 s timeouts plus the run; never a hang


# -- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "complaint"), [
    ("NOVAJOBS_ALERT_ON_FAILURE", "refresh-trending,nope", "names unknown job 'nope'"),
    ("NOVAJOBS_ALERT_EMAIL_TO", "sre@example.org,oncall", "'oncall' is not an email address"),
    ("NOVAJOBS_ALERT_WEBHOOK_URL", "hooks.slack.com/x", "must be a URL starting with http://"),
    ("NOVAJOBS_ALERT_SMTP_TLS", "yes", "must be one of none, starttls, ssl"),
])
def test_bad_alert_settings_fail_before_any_connection(cli, name, value, complaint):
    done = cli("check-consistency", extra_env={name: value, "NEO4J_URI": "bolt://127.0.0.1:1"})

    assert done.returncode == 78, done.stderr
    assert complaint in done.stderr and name in done.stderr


def test_config_hides_the_webhook_token_and_smtp_password(cli):
    done = cli("config", "--json", extra_env={
        "NOVAJOBS_ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/tok3n",
        "NOVAJOBS_ALERT_SMTP_PASSWORD": "s3cret-pw"})

    assert done.returncode == 0, done.stderr
    assert "tok3n" not in done.stdout and "s3cret-pw" not in done.stdout
