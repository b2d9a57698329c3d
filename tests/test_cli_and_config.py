"""Configuration precedence, bad input, and the CLI's promises (help, version, exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from novajobs.cli import cli as root
from novajobs.errors import ConfigError, UsageError
from novajobs.records import status_key
from novajobs.settings import load_settings
from novajobs_dev.netfaults import refused_port


def novajobs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NOVAJOBS_", "JOB_"))}
    return subprocess.run(
        [sys.executable, "-m", "novajobs", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- settings ------------------------------------------------------------------------------
def test_precedence_default_file_env_flag(tmp_path: Path):
    config = tmp_path / "novajobs.toml"
    config.write_text("trending_topk = 10\n[trending]\nwindow_hours = 2\ninterval_sec = 30\n")

    s = load_settings(
        config,
        environ={"JOB_TRENDING_WINDOW_HOURS": "3", "NOVAJOBS_TRENDING_INTERVAL_SEC": "40"},
        overrides={"trending_interval_sec": "50"},
    )

    assert (s.trending_topk, s.trending_window_hours, s.trending_interval_sec) == (10, 3, 50)
    assert s.suggestions_per_user == 20
    assert s.sources["trending_topk"] == f"file:{config}"
    assert s.sources["trending_window_hours"] == "env:JOB_TRENDING_WINDOW_HOURS"
    assert s.sources["trending_interval_sec"] == "flag"
    assert s.sources["suggestions_per_user"] == "default"


def test_config_file_comes_from_the_environment_too(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text("suggestion_batch_size = 7\n")
    assert load_settings(environ={"NOVAJOBS_CONFIG": str(config)}).suggestion_batch_size == 7


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"REDIS_URL": "localhost:6379"},
            "setting redis_url (env REDIS_URL) must be a URL starting with redis:// or rediss:// or unix://",
        ),
        (
            {"REDIS_URL": "redis://host:notaport/0"},
            "setting redis_url (env REDIS_URL) is not a valid URL",
        ),
        (
            {"CLICKHOUSE_URL": "tcp://ch:9000"},
            "setting clickhouse_url (env CLICKHOUSE_URL) must be a URL",
        ),
        (
            {"JOB_TRENDING_TOPK": "fifty"},
            "setting trending_topk (env JOB_TRENDING_TOPK): 'fifty' is not an integer",
        ),
        (
            {"JOB_TRENDING_TOPK": "0"},
            "setting trending_topk (env JOB_TRENDING_TOPK) must be greater than 0",
        ),
        (
            {"MINIO_SECURE": "maybe"},
            "setting minio_secure (env MINIO_SECURE): 'maybe' is not a boolean",
        ),
        (
            {"MINIO_ENDPOINT": "http://s3:9000"},
            "setting minio_endpoint (env MINIO_ENDPOINT) must be host:port",
        ),
        (
            {"NOVAJOBS_TIMEZONE": "Mars/Olympus"},
            "setting timezone (env NOVAJOBS_TIMEZONE) is not a known IANA time zone",
        ),
    ],
)
def test_invalid_settings_name_the_setting_and_its_source(environ, message):
    with pytest.raises(ConfigError) as err:
        load_settings(environ=environ)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_broken_and_unknown_config_files(tmp_path: Path):
    broken = tmp_path / "broken.toml"
    broken.write_text("trending_topk = [\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trending]\ntopkk = 3\n")
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text('trending_topk = "many"\n')

    with pytest.raises(ConfigError, match=r"config file .*broken.toml cannot be read"):
        load_settings(broken, environ={})
    with pytest.raises(
        ConfigError, match=r"unknown setting 'trending_topkk' .*did you mean trending_topk"
    ):
        load_settings(unknown, environ={})
    with pytest.raises(ConfigError, match=r"trending_topk \(file .*\): 'many' is not an integer"):
        load_settings(wrong_type, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_bad_flag_values_are_usage_errors():
    with pytest.raises(UsageError, match=r"trending_topk .*flag.* must be greater than 0"):
        load_settings(environ={}, overrides={"trending_topk": 0})


def test_secrets_are_redacted():
    s = load_settings(
        environ={
            "REDIS_URL": "redis://:hunter2@cache:6379/0",
            "MINIO_SECRET_KEY": "topsecret",
            "CLICKHOUSE_URL": "http://app:chpass@ch:8123/db",
        }
    )
    assert s.redacted("redis_url") == "redis://:****@cache:6379/0"
    assert s.redacted("clickhouse_url") == "http://app:****@ch:8123/db"
    assert s.redacted("minio_secret_key") == "****"


# -- the CLI as a process ------------------------------------------------------------------
def test_config_command_shows_sources_and_hides_secrets():
    result = novajobs(
        "config",
        "--json",
        "-s",
        "trending_topk=5",
        env={"REDIS_URL": "redis://:hunter2@cache:6379/0", "MINIO_SECRET_KEY": "s3cr3t"},
    )
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["redis_url"] == {
        "name": "redis_url",
        "value": "redis://:****@cache:6379/0",
        "source": "env:REDIS_URL",
        "env": "REDIS_URL",
    }
    assert rows["trending_topk"]["source"] == "flag" and rows["trending_topk"]["value"] == "5"
    assert "hunter2" not in result.stdout + result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr


def test_malformed_url_exits_78_with_one_line_before_connecting():
    result = novajobs("refresh-trending", env={"REDIS_URL": "redis//nope"})
    assert result.returncode == 78
    assert result.stderr.strip().count("\n") == 0
    assert "redis_url" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["refresh-trending", "--top-k", "abc"], "'abc' is not a valid integer"),
        (["refresh-trending", "--top-k", "0"], "must be greater than 0"),
        (["refresh-trending", "--timeout", "-1"], "--timeout"),
        (["refresh-suggestions", "--shard", "4/3"], "between 1 and 3"),
        (["refresh-suggestions", "--shard", "a/b"], "expected I/N"),
        (["refresh-suggestions", "--shard", "auto"], "JOB_COMPLETION_INDEX"),
        (["refresh-trending", "-s", "nonsense=1"], "unknown setting 'nonsense'"),
        (["no-such-job"], "No such command"),
    ],
)
def test_bad_arguments_exit_2(args, needle):
    result = novajobs(*args, env={"REDIS_URL": f"redis://127.0.0.1:{refused_port()}/0"})
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr


def test_unreachable_redis_exits_69_within_the_timeout():
    started = time.monotonic()
    result = novajobs(
        "refresh-trending",
        "--log-format",
        "json",
        env={"REDIS_URL": f"redis://127.0.0.1:{refused_port()}/0", "NOVAJOBS_RETRY_ATTEMPTS": "2"},
    )
    assert result.returncode == 69, result.stderr
    assert time.monotonic() - started < 20
    last = json.loads(result.stderr.strip().splitlines()[-1])
    assert last["outcome"] == "unavailable" and "Connection refused" in last["error"]


def test_unreachable_clickhouse_exits_69_writes_nothing_and_releases_the_lock(
    redis_client, cli, names
):
    result = cli(
        "refresh-trending",
        extra_env={
            "CLICKHOUSE_URL": f"http://default:chsecret@127.0.0.1:{refused_port()}/db",
            "NOVAJOBS_RETRY_ATTEMPTS": "2",
        },
    )

    assert result.returncode == 69
    assert "chsecret" not in result.stderr
    assert redis_client.get(f"{names['prefix']}nova:cache:trending:1h") is None
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-trending") is None
    status = redis_client.hgetall(status_key(names["prefix"], "refresh-trending"))
    assert status[b"outcome"] == b"unavailable"


def test_help_never_imports_a_database_driver():
    code = (
        "import sys\n"
        "from novajobs.cli import run_cli\n"
        "for args in (['--help'], ['refresh-trending', '--help'], ['status', '--help']):\n"
        "    assert run_cli(args) == 0\n"
        "drivers = {'redis', 'psycopg', 'clickhouse_connect', 'minio', 'neo4j', 'elasticsearch',"
        " 'rich', 'tenacity'}\n"
        "print(sorted(drivers & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_version():
    result = novajobs("--version")
    assert result.returncode == 0 and result.stdout.startswith("novajobs, version ")


def _all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, command in group.commands.items():
        out.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            out.extend(_all_commands(command, f"{prefix}{name} "))
    return out


@pytest.mark.parametrize(("name", "command"), _all_commands(root), ids=lambda v: str(v))
def test_every_command_has_help_ending_with_an_example(name, command):
    text = command.get_help(click.Context(command, info_name=name))
    assert "Example:" in text, name
    assert text.index("Example:") > text.index("Usage:")


def test_schedule_lists_every_job_with_next_runs():
    result = novajobs("schedule", "--json", "-n", "2", env={"NOVAJOBS_TIMEZONE": "Asia/Shanghai"})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["job"] for r in rows][:2] == ["refresh-trending", "refresh-suggestions"]
    suggestions = rows[1]
    assert suggestions["schedule"] == "*/10 * * * *"
    assert len(suggestions["next_runs"]) == 2
    assert all(
        t.endswith("+08:00") and t[14:16] in {"00", "10", "20", "30", "40", "50"}
        for t in suggestions["next_runs"]
    )


@pytest.mark.cluster
def test_locks_lists_and_releases_only_with_force(redis_client, cli, names):
    from novajobs.lock import JobLock

    lock = JobLock(
        redis_client,
        f"{names['prefix']}job:lock:refresh-trending",
        30,
        {"job": "refresh-trending", "host": "db7", "pid": 99, "run_id": "r1"},
    )
    assert lock.acquire()

    listed = json.loads(cli("locks", "--json").stdout)
    refused = cli("locks", "release", "refresh-trending")
    released = cli("locks", "release", "refresh-trending", "--force")

    assert [(r["job"], r["host"], r["pid"]) for r in listed] == [("refresh-trending", "db7", 99)]
    assert 0 < listed[0]["ttl_sec"] <= 30 and listed[0]["age_sec"] >= 0
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert released.returncode == 0 and "released" in released.stdout
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-trending") is None
    assert lock.lease_ok() and not lock.renew()  # the holder learns at its next renewal


@pytest.mark.cluster
def test_locks_release_takes_the_listed_name_shards_and_consumers_too(redis_client, cli, names):
    from novajobs.lock import JobLock

    held = {}
    for name in ("gc-files:2-of-3", "drain-stream:pod-7"):
        held[name] = JobLock(redis_client, f"{names['prefix']}job:lock:{name}", 30, {"pid": 1})
        assert held[name].acquire()

    listed = sorted(r["job"] for r in json.loads(cli("locks", "--json").stdout))
    results = [cli("locks", "release", name, "--force") for name in listed]

    assert listed == ["drain-stream:pod-7", "gc-files:2-of-3"]
    assert [r.returncode for r in results] == [0, 0]
    assert list(redis_client.scan_iter(f"{names['prefix']}job:lock:*")) == []
    assert cli("locks", "release", "no-such-job", "--force").returncode == 2
