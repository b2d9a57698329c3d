"""One duration grammar for every flag and setting that takes a length of time: an age
(--since/--until of check-message-gaps) and a setting (gc-files' --grace, run log
retention) accept the same spellings and refuse the same ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from novajobs.dates import parse_instant
from novajobs.errors import UsageError
from novajobs.settings import load_settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90min", 5400), ("90m", 5400), ("1.5h", 5400), ("5400s", 5400), ("5400sec", 5400),
    ("2d", 172800), ("2 D", 172800),
])
def test_a_grace_and_an_age_read_the_same_spellings(text, seconds):
    settings = load_settings(environ={}, overrides={"gc_grace": text})
    assert settings.gc_grace == text
    assert parse_instant(text, "--since", "UTC", NOW) == NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["24", "-1h", "1w", "h", "1.h"])
def test_a_grace_and_an_age_refuse_the_same_spellings(text):
    with pytest.raises(UsageError, match="gc_grace"):
        load_settings(environ={}, overrides={"gc_grace": text})
    with pytest.raises(UsageError, match="--since"):
        parse_instant(text, "--since", "UTC", NOW)
