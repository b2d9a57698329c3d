"""Secrets never leave the process: every job and every command, on a healthy stack and
with stores refusing, black-holed or answering "wrong password", with a distinctive
secret in every secret-bearing setting and URL form; then all stdout, stderr, the log
file and every key and value in Redis are searched for them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from support import run_novajobs

from novajobs.registry import ALL_JOBS
from novajobs_dev.netfaults import black_hole, refused_port

SECRETS = {
    "redis_password": "RdsPw-7Qx2kq",
    "redis_query_password": "RdsQ-5Lm8zt",
    "pg_password": "PgPw-3Hn4vb",
    "pg_sslpassword": "SslPw-8Kd1wq",
    "ch_password": "ChPw-2Vb6ns",
    "minio_wrong_secret": "MinioSk-6Tz3rp",
    "neo4j_password": "NeoPw-4Wr9jd",
    "neo4j_uri_password": "NeoUri-1Jq5mx",
    "es_api_key": "EsKey-9Pf2hc",
    "webhook_path_token": "HookTok-5Gs7ly",
    "webhook_query_token": "HookQ-3Yd8ek",
    "healthcheck_token": "HcTok-6Ur1ob",
    "pushgateway_password": "PushPw-2Ne4ua",
    "console_token": "ConTok-8Ma3iw",
    "smtp_password": "SmtpPw-7Cv5gf",
}
ARGS = {"restore-partition": ("chat_messages", "2020-01"), "drain-stream": ("--max-seconds", "2")}
COMMANDS = [
    ("status",), ("status", "--json"), ("history", "refresh-trending"),
    ("history", "daily-stats", "--json"), ("logs", "refresh-trending"), ("logs", "daily-stats"),
    ("config",), ("config", "--json"), ("locks",), ("locks", "--json"), ("dlq", "list"),
    ("schedule",),
]


@pytest.fixture
def redis_user(redis_client: Any) -> Any:
    user = f"nj_{uuid.uuid4().hex[:8]}"
    redis_client.execute_command("ACL", "SETUSER", user, "on", f">{SECRETS['redis_password']}",
                                 "~*", "&*", "+@all")
    yield user
    redis_client.execute_command("ACL", "DELUSER", user)


@pytest.fixture
def secret_env(env: dict[str, str], redis_user: str, tmp_path: Path, pg_server: None,
               neo4j_server: None, es_server: None, s3_server: None) -> dict[str, str]:
    """The test's stack, every secret setting set: the stores that check a password get
    the right one, the others (trust, FalkorDB, the ES emulator) take any."""
    s = SECRETS
    dead = refused_port()
    base, _, query = env["DATABASE_URL"].partition("?")
    return {
        **env,
        "REDIS_URL": env["REDIS_URL"].replace("redis://", f"redis://{redis_user}:"
                                              f"{s['redis_password']}@"),
        "DATABASE_URL": base.replace("postgres@", f"postgres:{s['pg_password']}@")
        + f"?sslpassword={s['pg_sslpassword']}&{query}",
        "NEO4J_PASSWORD": s["neo4j_password"],
        "ELASTICSEARCH_API_KEY": s["es_api_key"],
        "NOVAJOBS_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{dead}/hooks/{s['webhook_path_token']}"
                                      f"?token={s['webhook_query_token']}",
        "NOVAJOBS_HEALTHCHECK_URL": f"http://127.0.0.1:{dead}/ping/{s['healthcheck_token']}/{{job}}",
        "NOVAJOBS_PUSHGATEWAY_URL": f"http://push:{s['pushgateway_password']}@127.0.0.1:{dead}",
        "NOVAJOBS_CONSOLE_TOKEN": s["console_token"],
        "NOVAJOBS_ALERT_SMTP_HOST": "127.0.0.1",
        "NOVAJOBS_ALERT_SMTP_PORT": str(dead),
        "NOVAJOBS_ALERT_SMTP_USERNAME": "alerts",
        "NOVAJOBS_ALERT_SMTP_PASSWORD": s["smtp_password"],
        "NOVAJOBS_ALERT_EMAIL_TO": "ops@example.invalid",
        "NOVAJOBS_LOG_FILE": str(tmp_path / "logs" / "novajobs.log"),
        "NOVAJOBS_RETRY_ATTEMPTS": "2",
        "NOVAJOBS_CONNECT_TIMEOUT_SEC": "2",
        "NOVAJOBS_HTTP_TIMEOUT_SEC": "2",
        "NOVAJOBS_REPORT_TIMEOUT_SEC": "1",
    }


def failures(secret_env: dict[str, str], hole_port: int) -> list[dict[str, str]]:
    """Settings that make stores fail: refused, black-holed, wrong credentials. Redis
    first: every job and command meets it first, so the first two fail them all alike."""
    s, dead = SECRETS, refused_port()
    redis_base = secret_env["REDIS_URL"].split("@", 1)[1]
    return [
        {"REDIS_URL": f"redis://{redis_base}?password={quote(s['redis_query_password'])}"},
        {"REDIS_URL": f"redis://u:{s['redis_password']}@127.0.0.1:{hole_port}/0",
         "NOVAJOBS_REDIS_TIMEOUT_SEC": "1"},
        {"NEO4J_URI": f"bolt://neo:{s['neo4j_uri_password']}@127.0.0.1:{dead}"},
        {"DATABASE_URL": f"postgresql://postgres:{s['pg_password']}@127.0.0.1:{dead}/db"
                         f"?sslpassword={s['pg_sslpassword']}",
         "CLICKHOUSE_URL": f"http://reader:{s['ch_password']}@127.0.0.1:{dead}/analytics",
         "MINIO_SECRET_KEY": s["minio_wrong_secret"],
         "ELASTICSEARCH_URL": f"http://127.0.0.1:{dead}",
         "NEO4J_URI": f"bolt://127.0.0.1:{dead}"},
    ]


def test_no_secret_in_any_output_log_file_or_redis(secret_env, redis_client, tmp_path, ch,
                                                    pg_tables):
    pg_tables()  # the contract tables: the jobs run for real, not only fail on a missing one
    ch.release()
    outputs: list[tuple[str, str]] = []

    def run(*args: str, extra: dict[str, str] | None = None) -> None:
        done = run_novajobs({**secret_env, **(extra or {})}, *args, timeout=180)
        outputs.append((" ".join(args) + f" {sorted(extra or {})}",
                        done.stdout + done.stderr))

    jobs = [(spec.name, *ARGS.get(spec.name, ())) for spec in ALL_JOBS]
    run("init-db")
    for job in jobs:
        run(*job, "--json")
    for command in COMMANDS:
        run(*command)
    run("render-deploy", "--out", str(tmp_path / "deploy"))
    with black_hole() as hole:
        for n, extra in enumerate(failures(secret_env, hole.port)):
            for job in jobs if n == 3 else jobs[:2]:
                run(*job, extra=extra)
            run("status", extra=extra)
            run("config", "--json", extra=extra)

    codes = {what.split()[0]: text for what, text in outputs[1:len(jobs) + 1]}
    assert '"exit_code": 0' in codes["clean-token-blacklist"]  # the right passwords work
    assert '"exit_code": 0' in codes["daily-stats"], codes["daily-stats"]
    shown = dict(outputs)
    assert "redis://nj_" in shown["config --json []"] and ":****@" in shown["config --json []"]
    leaks = [(what, name) for what, text in outputs for name, secret in SECRETS.items()
             if secret in text]
    assert leaks == []
    log = Path(secret_env["NOVAJOBS_LOG_FILE"]).read_text()
    assert "run started" in log
    assert [name for name, secret in SECRETS.items() if secret in log] == []
    deployed = "".join(p.read_text() for p in (tmp_path / "deploy").rglob("*") if p.is_file())
    assert [name for name, secret in SECRETS.items() if secret in deployed] == []
    stored = redis_dump(redis_client)
    assert "run started" in stored  # run logs are kept in Redis: searched too
    assert [name for name, secret in SECRETS.items() if secret in stored] == []


def redis_dump(r: Any) -> str:
    """Every key and value in the test Redis, as text."""
    parts: list[Any] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        parts.append(key)
        if kind == "string":
            parts.append(r.get(key))
        elif kind == "hash":
            parts.extend(x for kv in r.hgetall(key).items() for x in kv)
        elif kind == "list":
            parts.extend(r.lrange(key, 0, -1))
        elif kind == "set":
            parts.extend(r.smembers(key))
        elif kind == "zset":
            parts.extend(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            parts.extend(str(fields) for _, fields in r.xrange(key))
    return "\n".join(p.decode(errors="replace") if isinstance(p, bytes) else str(p)
                     for p in parts)
