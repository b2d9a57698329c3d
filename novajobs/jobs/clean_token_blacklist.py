"""clean-token-blacklist: repair or remove blacklist entries that would never expire (docs/jobs.md).

``auth:block:token:{jti}`` holds the revoked token's expiry (Unix seconds, or JSON with
``exp``) and is normally written with a TTL, which Redis enforces by itself. An entry
without a TTL is a leak: if its expiry has passed it is deleted; if not, it gets
``EXPIREAT`` its expiry (deleting it would un-revoke a live token); if its value cannot
be read it is counted and reported, and deleted only with ``--delete-unreadable``.

The keyspace is walked with SCAN (COUNT ``token_blacklist_scan_count``), never KEYS; on a
Redis Cluster every primary is scanned, all at once (one thread each);
per SCAN batch one pipeline reads the TTLs and one reads the values of the keys without
TTL, so Redis never runs a big command and memory stays flat (one batch at a time).
Each change is one small Lua script that first re-checks the key has still no TTL and
the value read, so an entry re-written by the auth service meanwhile is left alone.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from novajobs.context import JobContext, Result
from novajobs.errors import Outcome
from novajobs.fencing import FencedPipeline
from novajobs.redisconn import node_name, pipelined, scan_nodes
from novajobs.registry import check_flag

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings

T = TypeVar("T")
R = TypeVar("R")

# KEYS[1] the key; ARGV[1] 'del' or 'expireat'; ARGV[2] 'string' or 'other' (its type
# when read); ARGV[3] the value read (strings); ARGV[4] the Unix time for EXPIREAT.
FIX_SCRIPT = """
if redis.call('ttl', KEYS[1]) ~= -1 then return 0 end
local kind = redis.call('type', KEYS[1])['ok']
if (kind == 'string') ~= (ARGV[2] == 'string') then return 0 end
if kind == 'string' and redis.call('get', KEYS[1]) ~= ARGV[3] then return 0 end
if ARGV[1] == 'del' then return redis.call('del', KEYS[1]) end
return redis.call('expireat', KEYS[1], ARGV[4])
"""
MAX_EXPIRY = 1e11  # Unix seconds (year 5138); larger values are read as garbage, not time
SAMPLES = 5  # unreadable keys named in the log and the result


@dataclass(frozen=True)
class Fix:
    key: bytes
    action: str  # "del" or "expireat"
    kind: str  # "string" or "other"
    value: bytes
    expire_at: int = 0


def check_params(settings: Settings, delete_unreadable: bool = False) -> None:
    check_flag("--delete-unreadable", delete_unreadable)


def run(ctx: JobContext, delete_unreadable: bool = False) -> Result:
    pattern = ctx.key(ctx.settings.token_blacklist_pattern)
    tally, samples = clean(ctx, pattern, delete_unreadable)
    for name in ("scanned", "with_ttl", "repaired", "deleted", "unreadable"):
        tally.setdefault(name, 0)
    ctx.counters.update(tally)
    if samples:
        ctx.log.warning("unreadable blacklist entries (no TTL, no expiry in the value)",
                        unreadable=tally["unreadable"], examples=", ".join(samples))
    return _result(ctx, pattern, tally, samples)


def clean(
    ctx: JobContext, pattern: str, delete_unreadable: bool, parallel: bool = True
) -> tuple[Counter[str], list[str]]:
    """Clean the keys matching ``pattern`` on every primary (one SCAN each; on a cluster
    the primaries are scanned at once, one thread each, unless not ``parallel``)."""
    nodes = scan_nodes(ctx.redis)
    lock = threading.Lock()
    with ctx.progress("scanning the token blacklist") as bar:

        def advance(n: int) -> None:
            with lock:
                bar.advance(n)

        def one(node: redis.Redis, stop: threading.Event) -> tuple[Counter[str], list[str]]:
            return _clean_node(ctx, node, pattern, delete_unreadable, advance, stop)

        results = _each(one, nodes, parallel)
    tally: Counter[str] = Counter()
    samples: list[str] = []
    for node_tally, node_samples in results:
        tally.update(node_tally)
        samples.extend(node_samples[: SAMPLES - len(samples)])
    return tally, samples


def _each(fn: Callable[[T, threading.Event], R], items: list[T], parallel: bool) -> list[R]:
    """``fn(item, stop)`` for each item, in threads when parallel. The first error is
    raised once the other threads have seen ``stop`` (set by it) and returned."""
    stop = threading.Event()
    if not parallel or len(items) < 2:
        return [fn(item, stop) for item in items]

    def guarded(item: T) -> R:
        try:
            return fn(item, stop)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(len(items), thread_name_prefix="scan") as pool:
        futures = [pool.submit(guarded, item) for item in items]
    return [f.result() for f in futures]


def _clean_node(
    ctx: JobContext,
    node: redis.Redis,
    pattern: str,
    delete_unreadable: bool,
    advance: Callable[[int], None],
    stop: threading.Event,
) -> tuple[Counter[str], list[str]]:
    """SCAN one node's keyspace; read and fix what it lists (``pipelined``: through the
    node serving each key now, should a slot have moved meanwhile)."""
    tally: Counter[str] = Counter()
    samples: list[str] = []
    cursor = 0
    while not stop.is_set():
        ctx.checkpoint()
        cursor, keys = _scan(ctx, node, cursor, pattern, ctx.settings.token_blacklist_scan_count)
        if keys:
            fixes = classify(ctx, keys, time.time(), delete_unreadable, tally, samples)
            apply_fixes(ctx, fixes, tally)
        advance(len(keys))
        if cursor == 0:
            break
    return tally, samples


def _scan(
    ctx: JobContext, node: redis.Redis, cursor: int, pattern: str, count: int
) -> tuple[int, list[bytes]]:
    # Re-running SCAN with the same cursor is harmless, so it may be retried.
    where = f"SCAN {node_name(node)}"
    reply: Any = ctx.retry(lambda: node.scan(cursor, match=pattern, count=count), where)
    return int(reply[0]), list(reply[1])


def classify(
    ctx: JobContext,
    keys: list[bytes],
    now: float,
    delete_unreadable: bool,
    tally: Counter[str],
    samples: list[str],
) -> list[Fix]:
    """Read TTLs (one pipeline), then the values of keys without one (another)."""
    tally["scanned"] += len(keys)
    ttls = _pipelined(ctx, keys, "ttl")
    tally["with_ttl"] += sum(1 for t in ttls if isinstance(t, int) and t >= 0)
    vanished = sum(1 for t in ttls if t == -2)  # expired or deleted since SCAN saw them
    if vanished:
        tally["vanished"] += vanished
    no_ttl = [k for k, t in zip(keys, ttls, strict=True) if t == -1]
    fixes = []
    for key, value in zip(no_ttl, _pipelined(ctx, no_ttl, "get"), strict=True):
        kind = "other" if isinstance(value, Exception) else "string"  # WRONGTYPE: not a string
        raw = value if isinstance(value, bytes) else b""
        expiry = token_expiry(raw) if kind == "string" else None
        if expiry is None:
            tally["unreadable"] += 1
            if len(samples) < SAMPLES:
                samples.append(key.decode(errors="replace"))
            if delete_unreadable:
                fixes.append(Fix(key, "del", kind, raw))
        elif expiry <= now:
            fixes.append(Fix(key, "del", kind, raw))
        else:
            fixes.append(Fix(key, "expireat", kind, raw, math.ceil(expiry)))
    return fixes


def _pipelined(ctx: JobContext, keys: list[bytes], command: str) -> list[Any]:
    if not keys:
        return []

    def read() -> list[Any]:
        calls = [(key, partial(_queue, command, key)) for key in keys]
        return pipelined(ctx.redis, calls)

    return ctx.retry(read, f"pipelined {command.upper()}")


def _queue(command: str, key: bytes, client: Any) -> Any:
    return getattr(client, command)(key)


def token_expiry(raw: bytes) -> float | None:
    """The token's expiry in Unix seconds: the value itself, or JSON ``{"exp": ...}``."""
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError:
        return None
    number: Any = text
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        number = data.get("exp") if isinstance(data, dict) else None
    if isinstance(number, bool) or not isinstance(number, str | int | float):
        return None
    try:
        expiry = float(number)
    except ValueError:
        return None
    return expiry if math.isfinite(expiry) and expiry < MAX_EXPIRY else None


def apply_fixes(ctx: JobContext, fixes: list[Fix], tally: Counter[str]) -> None:
    if not fixes:
        return
    if ctx.dry_run:
        for fix in fixes:
            tally["would_delete" if fix.action == "del" else "would_repair"] += 1
        return
    ctx.checkpoint()

    def write() -> list[Any]:
        pipe = FencedPipeline(ctx)  # each change refused if another run took the lock
        for fix in fixes:
            pipe.call(FIX_SCRIPT, [fix.key], [fix.action, fix.kind, fix.value, fix.expire_at])
        return pipe.execute("repair or delete blacklist entries")

    # Each script re-checks before it acts, so running the batch twice changes nothing more.
    for fix, done in zip(fixes, ctx.retry(write, "repair or delete entries"), strict=True):
        if not done:
            tally["changed_meanwhile"] += 1
        else:
            tally["deleted" if fix.action == "del" else "repaired"] += 1


def _result(ctx: JobContext, pattern: str, tally: Counter[str], samples: list[str]) -> Result:
    t = tally
    summary = (
        f"scanned {t['scanned']} keys matching {pattern}: {t['with_ttl']} with TTL, "
        f"{t['unreadable']} unreadable"
    )
    details: dict[str, Any] = {"pattern": pattern, **t, "unreadable_examples": samples}
    if ctx.dry_run:
        return Result(
            Outcome.DRY_RUN,
            f"{summary}; would repair {t['would_repair']} and delete {t['would_delete']}",
            details,
        )
    outcome = Outcome.SUCCESS if t["repaired"] or t["deleted"] else Outcome.NOTHING_TO_DO
    return Result(outcome, f"{summary}; repaired {t['repaired']}, deleted {t['deleted']}", details)
