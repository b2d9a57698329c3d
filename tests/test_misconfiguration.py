"""A configuration that can never work is exit 78 at once: one line, no traceback, no
retry (Kubernetes fails the Job instead of retrying a run that cannot succeed).

Every case is a real server answering "no" (a database or role that does not exist, a
wrong password for a real Redis user, a DB index the server does not have, a chdb path
that is a file), or a setting refused before anything connects.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from novajobs.records import status_key

FAST_GIVE_UP = {"NOVAJOBS_RETRY_ATTEMPTS": "6", "NOVAJOBS_RETRY_MAX_WAIT_SEC": "5"}


def one_line_78(done: Any, *needles: str) -> None:
    """Exit 78, not retried, one clear error and no traceback."""
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr and '"traceback"' not in done.stderr
    assert "retrying" not in done.stderr, done.stderr  # no retry can fix it
    said = done.stderr.replace('\\"', '"')  # JSON log lines escape quotes
    for needle in needles:
        assert needle in said, done.stderr


def with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{database}" + (f"?{query}" if query else "")


@pytest.mark.parametrize(("make_url", "needle"), [
    (lambda url: with_database(url, "no_such_db"), 'database "no_such_db" does not exist'),
    (lambda url: url.replace("postgres@", "no_such_role@", 1), 'role "no_such_role" does not'),
])
def test_postgres_names_that_do_not_exist_are_78(make_url, needle, pg_server, redis_server,
                                                 env, cli, redis_client, names):
    done = cli("daily-stats", "--date", "2026-01-05",
               extra_env={"DATABASE_URL": make_url(env["DATABASE_URL"]), **FAST_GIVE_UP})

    one_line_78(done, needle)
    status = redis_client.hgetall(status_key(names["prefix"], "daily-stats"))
    assert status[b"outcome"] == b"config_error"
    assert redis_client.get(f"{names['prefix']}job:lock:daily-stats") is None


@pytest.fixture
def pg_password_role(pg: Any) -> Any:
    """A PostgreSQL role that must give its password (scram), on the suite's server: a
    pg_hba line for this role alone, first, then a reload."""
    role = f"nj_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password'")
    hba = Path(pg.execute("SHOW hba_file").fetchone()[0])
    before = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{before}")
    pg.execute("SELECT pg_reload_conf()")
    yield role
    hba.write_text(before)
    pg.execute("SELECT pg_reload_conf()")
    pg.execute(f"DROP ROLE {role}")


def test_a_wrong_postgres_password_is_78(pg_password_role, env, cli, redis_server):
    url = env["DATABASE_URL"].replace("postgres@", f"{pg_password_role}:wrong-password@", 1)

    done = cli("daily-stats", "--date", "2026-01-05",
               extra_env={"DATABASE_URL": url, **FAST_GIVE_UP})

    one_line_78(done, "password authentication failed")
    assert "wrong-password" not in done.stderr


@pytest.fixture
def redis_user(redis_client: Any) -> Any:
    """A real Redis ACL user with a password of its own."""
    user = f"nj_{uuid.uuid4().hex[:8]}"
    redis_client.execute_command("ACL", "SETUSER", user, "on", ">right-password", "~*", "&*",
                                 "+@all")
    yield user
    redis_client.execute_command("ACL", "DELUSER", user)


@pytest.mark.parametrize("who", ["wrong password", "unknown user"])
def test_wrong_redis_credentials_are_78(who, redis_user, env, cli):
    user = redis_user if who == "wrong password" else "nobody_here"
    url = env["REDIS_URL"].replace("redis://", f"redis://{user}:wrong-password@")

    done = cli("clean-token-blacklist", extra_env={"REDIS_URL": url, **FAST_GIVE_UP})

    one_line_78(done)
    assert "wrong-password" not in done.stderr


def test_a_redis_db_index_the_server_does_not_have_is_78(env, cli, redis_server):
    url = env["REDIS_URL"].rsplit("/", 1)[0] + "/99"

    done = cli("clean-token-blacklist", extra_env={"REDIS_URL": url, **FAST_GIVE_UP})

    one_line_78(done, "DB index is out of range")


@pytest.mark.parametrize("command", [("status",), ("locks",), ("dlq", "list")])
def test_commands_outside_a_run_say_78_for_wrong_redis_credentials(command, redis_user, env,
                                                                    cli):
    url = env["REDIS_URL"].replace("redis://", f"redis://{redis_user}:wrong-password@")

    done = cli(*command, extra_env={"REDIS_URL": url})

    one_line_78(done)
    assert done.stderr.strip().count("\n") == 0 and "wrong-password" not in done.stderr


def test_a_clickhouse_database_that_does_not_exist_is_78(ch, env, cli, redis_client, names):
    ch.release()
    url = env["CLICKHOUSE_URL"].replace(f"database={names['database']}",
                                        "database=no_such_database")

    done = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": url, **FAST_GIVE_UP})

    one_line_78(done, "no_such_database")
    assert redis_client.keys(f"{names['prefix']}nova:*") == []


def test_a_chdb_path_that_is_a_file_is_78(tmp_path: Path, cli, redis_server):
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("x")

    done = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": f"chdb://{a_file}",
                                              **FAST_GIVE_UP})

    one_line_78(done, str(a_file))
    assert a_file.read_text() == "x"


def test_a_relative_chdb_path_is_refused_before_anything_connects(cli, redis_client, names):
    done = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": "chdb://relative/path"})

    one_line_78(done, "clickhouse_url", "absolute")
    assert done.stderr.strip().count("\n") == 0
    assert not Path("/path").exists()  # what chdb://relative/path used to open
    assert redis_client.keys(f"{names['prefix']}*") == []  # nothing locked or recorded


def test_a_missing_chdb_directory_is_78_and_not_created(cli, redis_client, names):
    missing = Path(f"/tmp/nonexistent-{uuid.uuid4().hex[:8]}/dir")

    done = cli("refresh-trending", extra_env={"CLICKHOUSE_URL": f"chdb://{missing}"})

    one_line_78(done, f"{missing} is not an existing directory")
    assert not missing.parent.exists()
    assert redis_client.get(f"{names['prefix']}job:lock:refresh-trending") is None


def test_neo4j_uri_with_credentials_in_it_is_78_and_never_shown(cli, redis_client, names):
    done = cli("check-consistency",
               extra_env={"NEO4J_URI": "bolt://neo:n3o-pass-word@127.0.0.1:7687"})

    one_line_78(done, "neo4j_uri")
    assert done.stderr.strip().count("\n") == 0
    assert "n3o-pass-word" not in done.stderr + done.stdout
    assert redis_client.keys(f"{names['prefix']}*") == []


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path, cli, redis_client, names):
    config = tmp_path / "latin1.toml"
    config.write_bytes('alert_webhook_url = "http://h\xe9/x"\n'.encode("latin-1"))

    for command in ("refresh-trending", "config", "status"):
        done = cli(command, "--config", str(config))
        one_line_78(done, "UTF-8", str(config))
        assert done.stderr.strip().count("\n") == 0, done.stderr
    assert redis_client.keys(f"{names['prefix']}*") == []


def test_a_misconfigured_run_is_recorded_with_its_one_line(pg_server, env, cli, redis_client,
                                                           names):
    done = cli("daily-stats", "--date", "2026-01-05", "--json",
               extra_env={"DATABASE_URL": with_database(env["DATABASE_URL"], "no_such_db")})

    assert done.returncode == 78
    record = json.loads(done.stdout)
    assert record["outcome"] == "config_error" and "\n" not in record["error"]
    assert 'database "no_such_db" does not exist' in record["error"]
