"""Bad arguments are checked before the lock, the record and any connection: exit 2, one
line, nothing recorded -- whether the lock is held (and ``--skip-ok`` would turn a skip
into 0), Redis is down, or the job is called from Python."""

from __future__ import annotations

import pytest

from novajobs.errors import UsageError
from novajobs.lock import lock_key
from novajobs.registry import ALL_JOBS
from novajobs.runner import RunOptions, run_job
from novajobs_dev.netfaults import refused_port

BAD_ARGUMENTS = [
    ("daily-stats", "--date", "2026-13-01"),
    ("daily-stats", "--from", "2026-02-30"),
    ("group-activity-rank", "--week", "2026-60"),
    ("refresh-suggestions", "--user", "-5"),
    ("refresh-suggestions", "--shard", "0/2"),
    ("check-message-gaps", "--since", "someday"),
    ("restore-partition", "chat_messages", "2026-13"),
    ("create-partitions", "--table", "a.b.c"),
    ("archive-partitions", "--table", "not_configured"),
    ("drain-stream", "--concurrency", "0"),
    ("gc-files", "--grace", "soon"),
    ("forcemerge-indices", "--min-age-days", "-1"),
]


def one_usage_line(done) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=lambda a: " ".join(a))
def test_bad_arguments_exit_2_even_when_the_lock_is_held(args, redis_client, names, cli):
    key = lock_key(names["prefix"], args[0], None)
    redis_client.set(key, '{"run_id": "someone-else"}', px=60_000)

    one_usage_line(cli(*args, "--skip-ok"))
    assert redis_client.keys(f"{names['prefix']}*") == [key.encode()]  # nothing recorded


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=lambda a: " ".join(a))
def test_bad_arguments_exit_2_with_redis_down(args, cli):
    one_usage_line(cli(*args, extra_env={"REDIS_URL": f"redis://127.0.0.1:{refused_port()}/0"}))


def test_python_callers_get_a_usage_error_before_anything_happens(settings, redis_client,
                                                                   names):
    for spec in ALL_JOBS:
        with pytest.raises(UsageError, match=f"{spec.name} takes no parameter 'bogus'"):
            run_job(spec, settings, bogus=1)
    with pytest.raises(UsageError, match="2026-13-01"):
        run_job("daily-stats", settings, on="2026-13-01")
    with pytest.raises(UsageError, match="--user"):
        run_job("refresh-suggestions", settings, user="42")
    with pytest.raises(UsageError, match="--timeout"):
        run_job("refresh-trending", settings, RunOptions(timeout_sec=0))
    assert redis_client.keys(f"{names['prefix']}*") == []
