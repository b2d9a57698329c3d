"""clean-token-blacklist against a real Redis: every branch, dry-run, races, 100k keys, CLI."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import Any

import pytest

from novajobs.context import JobContext
from novajobs.errors import Outcome
from novajobs.jobs import clean_token_blacklist as job
from novajobs.runner import RunOptions, run_job

BLOCK = "auth:block:token:"


def snapshot(r: Any, prefix: str) -> dict[bytes, tuple[Any, int]]:
    """Every auth key of the test: (value or type, expiry: absolute, so that a second
    ticking by between two snapshots changes nothing; -1 without one)."""
    out = {}
    for key in r.scan_iter(match=prefix + "auth:*", count=1000):
        kind = r.type(key)
        value = r.get(key) if kind == b"string" else kind
        out[key] = (value, r.expiretime(key))
    return out


def make_keys(r: Any, prefix: str, now: float) -> None:
    p = prefix + BLOCK
    r.set(p + "ttl", str(int(now) + 600), ex=600)  # normal: left alone
    r.set(p + "past", str(int(now) - 10))  # no TTL, expired -> deleted
    r.set(p + "past-frac", f"{now - 0.5:.3f}")  # fractional expiry, past -> deleted
    r.set(p + "future", str(int(now) + 3600))  # no TTL, valid -> EXPIREAT
    r.set(p + "json-past", json.dumps({"exp": int(now) - 5, "sub": "u1"}))
    r.set(p + "json-future", json.dumps({"exp": now + 7200.25, "sub": "u2"}))
    r.set(p + "garbage", "not-a-time")  # unreadable
    r.set(p + "json-no-exp", json.dumps({"sub": "u3"}))  # unreadable
    r.set(p + "binary", b"\xff\xfe")  # unreadable
    r.hset(p + "hash", "exp", "1")  # not a string: unreadable
    r.set(prefix + "auth:block:other", "1")  # outside the pattern
    r.set(p[len(prefix):] + "not-ours", "1")  # another namespace (no test prefix)


@pytest.mark.cluster
def test_every_branch_on_hand_made_keys(redis_client, settings, names):
    prefix, now = names["prefix"], time.time()
    make_keys(redis_client, prefix, now)

    rec = run_job("clean-token-blacklist", settings)

    assert rec.outcome is Outcome.SUCCESS, rec.error
    p = prefix + BLOCK
    left = {k.decode()[len(p):] for k in redis_client.scan_iter(match=p + "*")}
    assert left == {"ttl", "future", "json-future", "garbage", "json-no-exp", "binary", "hash"}
    assert redis_client.expiretime(p + "future") == int(now) + 3600
    assert redis_client.expiretime(p + "json-future") == math.ceil(now + 7200.25)  # rounded up
    assert redis_client.get(p + "future") == str(int(now) + 3600).encode()  # value untouched
    for name in ("garbage", "json-no-exp", "binary", "hash"):
        assert redis_client.ttl(p + name) == -1
    assert redis_client.exists(prefix + "auth:block:other", BLOCK + "not-ours") == 2
    assert rec.counters == {"scanned": 10, "with_ttl": 1, "repaired": 2, "deleted": 3,
                            "unreadable": 4}
    assert set(rec.details["unreadable_examples"]) == {
        p + n for n in ("garbage", "json-no-exp", "binary", "hash")}
    redis_client.delete(BLOCK + "not-ours")


@pytest.mark.cluster
def test_delete_unreadable_only_with_the_flag(redis_client, settings, names):
    prefix = names["prefix"]
    make_keys(redis_client, prefix, time.time())

    rec = run_job("clean-token-blacklist", settings, delete_unreadable=True)

    p = prefix + BLOCK
    left = {k.decode()[len(p):] for k in redis_client.scan_iter(match=p + "*")}
    assert left == {"ttl", "future", "json-future"}
    assert rec.counters["deleted"] == 7 and rec.counters["unreadable"] == 4
    redis_client.delete(BLOCK + "not-ours")


@pytest.mark.cluster
def test_dry_run_changes_nothing(redis_client, settings, names):
    prefix = names["prefix"]
    make_keys(redis_client, prefix, time.time())
    before = snapshot(redis_client, prefix)

    rec = run_job("clean-token-blacklist", settings, RunOptions(dry_run=True),
                  delete_unreadable=True)

    assert rec.outcome is Outcome.DRY_RUN
    assert snapshot(redis_client, prefix) == before
    assert rec.counters["would_delete"] == 7 and rec.counters["would_repair"] == 2
    assert rec.counters["deleted"] == 0 and rec.counters["repaired"] == 0
    redis_client.delete(BLOCK + "not-ours")


@pytest.mark.cluster
def test_an_entry_rewritten_meanwhile_is_left_alone(redis_client, settings, names):
    p = names["prefix"] + BLOCK
    now = time.time()
    redis_client.set(p + "a", str(int(now) - 10))  # expired: would be deleted
    redis_client.set(p + "b", str(int(now) + 100))  # would get EXPIREAT now+100
    redis_client.set(p + "c", str(int(now) - 10))  # would be deleted
    with JobContext(settings, "clean-token-blacklist") as ctx:
        tally: Counter[str] = Counter()
        fixes = job.classify(ctx, [(p + k).encode() for k in "abc"], now, False, tally, [])
        # the auth service re-blacklists a and b with new values, and gives c a TTL
        redis_client.set(p + "a", str(int(now) + 900))
        redis_client.set(p + "b", str(int(now) + 5000))
        redis_client.expire(p + "c", 300)
        job.apply_fixes(ctx, fixes, tally)

    assert tally["changed_meanwhile"] == 3 and tally["deleted"] == tally["repaired"] == 0
    assert redis_client.get(p + "a") == str(int(now) + 900).encode()
    assert redis_client.ttl(p + "b") == -1  # not shortened to the old expiry
    assert 0 < redis_client.ttl(p + "c") <= 300


def test_token_expiry_parsing():
    assert job.token_expiry(b"1700000000") == 1700000000.0
    assert job.token_expiry(b" 1700000000.5\n") == 1700000000.5
    assert job.token_expiry(b'{"exp": 1700000000}') == 1700000000.0
    assert job.token_expiry(b'{"exp": "1700000000"}') == 1700000000.0
    for bad in (b"", b"nan", b"inf", b"1e300", b'{"exp": true}', b'{"exp": null}', b"[1]",
                b'{"exp": [1]}', b"{broken", b"\xff"):
        assert job.token_expiry(bad) is None, bad


@pytest.mark.cluster
def test_scan_over_100k_keys(redis_client, make_settings, names):
    p = names["prefix"] + BLOCK
    now = int(time.time())
    pipe = redis_client.pipeline(transaction=False)
    for i in range(100_000):
        if i % 50 == 0:
            pipe.set(f"{p}{i}", now - 100)  # 2000 expired without TTL
        elif i % 50 == 1:
            pipe.set(f"{p}{i}", json.dumps({"exp": now + 3600}))  # 2000 to repair
        else:
            pipe.set(f"{p}{i}", now + 600, ex=600)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()

    rec = run_job("clean-token-blacklist", make_settings(token_blacklist_scan_count=500))

    assert rec.outcome is Outcome.SUCCESS, rec.error
    assert rec.counters == {"scanned": 100_000, "with_ttl": 96_000, "repaired": 2000,
                            "deleted": 2000, "unreadable": 0}
    assert redis_client.exists(f"{p}0", f"{p}50") == 0
    assert redis_client.expiretime(f"{p}1") == now + 3600
    # a second run finds nothing left to do
    again = run_job("clean-token-blacklist", make_settings())
    assert again.outcome is Outcome.NOTHING_TO_DO
    assert again.counters["with_ttl"] == 98_000
    # 100k keys would slow every other test's SCAN of the shared server
    keys = list(redis_client.scan_iter(match=p + "*", count=5000))
    for i in range(0, len(keys), 5000):
        redis_client.unlink(*keys[i : i + 5000])


@pytest.mark.cluster
def test_cli_dry_run_json_and_pattern_flag(redis_client, cli, names):
    p = names["prefix"]
    redis_client.set(p + "tokens:revoked:1", "1")  # expired, no TTL
    redis_client.set(p + BLOCK + "2", "1")

    dry = cli("clean-token-blacklist", "--pattern", "tokens:revoked:*", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["counters"]["would_delete"] == 1
    assert redis_client.exists(p + "tokens:revoked:1") == 1

    real = cli("clean-token-blacklist", "--pattern", "tokens:revoked:*", "--json")
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["counters"]["deleted"] == 1
    assert redis_client.exists(p + "tokens:revoked:1", p + BLOCK + "2") == 1
    assert "Example:" in cli("clean-token-blacklist", "--help").stdout
