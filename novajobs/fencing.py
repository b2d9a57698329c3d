"""Fencing tokens: every write a locked run makes is checked where it lands.

The lease check (novajobs/lock.py) stops a run that wakes after a pause, but a pause
*between* that check and the write (a GC pause, a slow send, SIGSTOP) still lets a
stale holder write after another run took the lock. So each acquisition also gets a
*fence*: a number from Redis that only grows per lock key (``INCR`` of a counter next to
the lock, in the same script as the ``SET NX``, so the newest holder always has the
highest fence). The stores then refuse a write that carries an older fence than one
they have seen (Kleppmann's fencing tokens):

- **Redis**: every write goes through a Lua script whose prelude compares the run's
  fence with the highest fence its *slot* has seen for this lock and refuses an older
  one (``NOVAJOBS_FENCED``), else remembers it and writes. On a single Redis (and for
  keys in the lock's own slot on a cluster) that record is the lock's fence counter
  itself, so a write is refused as soon as a newer run *took the lock*, before it wrote
  anything. On a Redis Cluster a script may only touch one slot: the record is a small
  key per lock and slot (``novajobs:fence:{tag}:<lock>``, the tag chosen to hash to the
  written key's slot), so there a stale write is refused once the newer run has written
  anything in that slot; a stale write to a slot the newer run has not reached yet
  lands, but it can never overwrite a newer run's write.
- **PostgreSQL**: a write transaction first advances the lock's row in
  ``novajobs_fences`` (``UPDATE ... WHERE fence <= mine``) and rolls back when a newer
  fence is there. The row lock it takes orders the transactions of two holders: a
  stale one either commits before the newer one starts writing, or is refused.
- **S3** (gc-files) cannot check a fence: a page's objects are deleted only after the
  page's PostgreSQL fence check, inside its transaction (and its row locks).

A refused write raises ``LockLost``: the run ends with exit 4 and a record naming both
fences; the refused write left nothing behind (the script wrote nothing, the
transaction rolled back). Not covered: a failover to a replica that missed the latest
``INCR`` (asynchronous replication) can hand out a fence twice; Elasticsearch merges
and Kubernetes are not fenced; a run without the lock (``--no-lock``) has no fence and
writes unchecked.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from novajobs.errors import LockLost
from novajobs.redisconn import Call, is_cluster, pipelined

if TYPE_CHECKING:
    import redis

    from novajobs.context import JobContext

REFUSED = "NOVAJOBS_FENCED"

# KEYS[1] the lock, KEYS[2] its fence counter; ARGV[1] the lock value, ARGV[2] ttl ms.
# A missing counter starts at the server's time in ms, so fences keep growing even if
# the counter is deleted (FLUSHALL, an operator's cleanup): no older fence is reissued.
ACQUIRE = """
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
if redis.call('exists', KEYS[2]) == 0 then
  local now = redis.call('time')
  redis.call('set', KEYS[2], string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000)))
end
return redis.call('incr', KEYS[2])
"""

_ACQUIRE_SCRIPTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def acquire_script(r: redis.Redis) -> Any:
    """ACQUIRE as a redis-py Script of ``r`` (EVALSHA once loaded)."""
    if r not in _ACQUIRE_SCRIPTS:
        _ACQUIRE_SCRIPTS[r] = r.register_script(ACQUIRE)
    return _ACQUIRE_SCRIPTS[r]


# Put in front of a write script: it takes KEYS[1] (the fence record in the written
# keys' slot) and ARGV[1] (the run's fence, '' = no lock) off the lists, so the body
# sees its own keys and arguments from 1 as before.
PRELUDE = f"""
local fence_key = table.remove(KEYS, 1)
local fence_arg = table.remove(ARGV, 1)
if fence_arg ~= '' then
  local seen = tonumber(redis.call('get', fence_key) or '0')
  local fence = tonumber(fence_arg)
  if fence < seen then return redis.error_reply('{REFUSED} ' .. seen) end
  if fence > seen then redis.call('set', fence_key, fence_arg) end
end
"""

# One command on one key: ARGV[1] the command, the rest its arguments after the key.
COMMAND_BODY = "return redis.call(ARGV[1], KEYS[1], unpack(ARGV, 2))"

_TAG = re.compile(r"\{([^}]+)\}")  # the first non-empty {...} decides a key's slot


@dataclass(frozen=True)
class Fence:
    """The fence of one lock acquisition."""

    lock_key: str
    token: int
    prefix: str = ""

    @property
    def counter_key(self) -> str:
        return colocated(self.lock_key, ":fence")

    def key_for(self, target: str | bytes, cluster: bool) -> str:
        """Where the highest fence seen for this lock lives, in ``target``'s slot."""
        if not cluster:
            return self.counter_key
        slot = key_slot(target)
        if slot == key_slot(self.counter_key):
            return self.counter_key
        unit = self.lock_key[len(self.prefix):]
        return f"{self.prefix}novajobs:fence:{{{slot_tag(slot)}}}:{unit}"


def fence_of(ctx: JobContext) -> Fence | None:
    """The fence of the run's lock; None when the run holds no lock (``--no-lock``)."""
    lock = ctx.guard.lock
    if lock is None or lock.fence is None:
        return None
    return Fence(lock.key, lock.fence, ctx.settings.redis_prefix)


def colocated(key: str, suffix: str) -> str:
    """A key in the same cluster slot as ``key``: its hash tag kept, or ``key`` as one."""
    return key + suffix if _TAG.search(key) else f"{{{key}}}{suffix}"


def key_slot(key: str | bytes) -> int:
    from redis.crc import key_slot as slot

    return slot(key.encode() if isinstance(key, str) else key)


_SLOT_TAGS: dict[int, str] = {}
_next_tag = 0


def slot_tag(slot: int) -> str:
    """A short hash tag that lands in ``slot``; found once per process, then remembered
    (about 16k CRCs for the first slot, 315k for all 16384)."""
    global _next_tag
    while slot not in _SLOT_TAGS:
        tag = format(_next_tag, "x")
        _next_tag += 1
        _SLOT_TAGS.setdefault(key_slot(tag), tag)
    return _SLOT_TAGS[slot]


# --- Redis -------------------------------------------------------------------------------


class FencedScript:
    """A Lua write script behind the fence prelude; called like redis-py's Script.
    ``FencedScript.of(client, body)`` reuses one per client and body."""

    _cache: ClassVar[weakref.WeakKeyDictionary[Any, dict[str, FencedScript]]] = (
        weakref.WeakKeyDictionary())

    @classmethod
    def of(cls, r: redis.Redis, body: str) -> FencedScript:
        scripts = cls._cache.setdefault(r, {})
        if body not in scripts:
            scripts[body] = cls(r, body)
        return scripts[body]

    def __init__(self, r: redis.Redis, body: str) -> None:
        self.cluster = is_cluster(r)
        self.script = r.register_script(PRELUDE + body)

    def __call__(
        self,
        fence: Fence | None,
        keys: Sequence[str | bytes],
        args: Sequence[Any] = (),
        client: Any = None,
    ) -> Any:
        first = keys[0]
        guard = (fence.key_for(first, self.cluster), fence.token) if fence else (first, "")
        return self.script(keys=[guard[0], *keys], args=[guard[1], *args], client=client)


# ARGV: the commands one after the other, each as: name, key index (in KEYS), argument
# count, arguments. Binary-safe (stream fields may be any bytes), unlike JSON.
EXEC_BODY = """
local i, n = 1, 0
while i <= #ARGV do
  local count = tonumber(ARGV[i + 2])
  redis.call(ARGV[i], KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + count))
  i, n = i + 3 + count, n + 1
end
return n
"""


class Refused(Exception):
    """A fenced write was refused: a newer fence has been seen (``seen``)."""

    def __init__(self, seen: str) -> None:
        super().__init__(f"refused: a newer fence {seen} has been seen")
        self.seen = seen


class FencedTransaction:
    """Write commands collected like a redis-py transaction pipeline (``hset``, ``hdel``,
    ``lpush``, ``ltrim``, ``execute``) and run as one script behind the fence; without a
    fence, a plain MULTI/EXEC pipeline. Its keys must share a cluster slot, as in MULTI.
    ``execute`` raises ``Refused`` when the fence is older than one already seen."""

    def __init__(self, r: redis.Redis, fence: Fence | None) -> None:
        self.redis, self.fence = r, fence
        self.keys: list[str | bytes] = []
        self.commands: list[tuple[str, int, tuple[Any, ...]]] = []

    def command(self, name: str, key: str | bytes, *args: Any) -> None:
        """Any write command on ``key``, e.g. ``command("xack", stream, group, *ids)``."""
        if key not in self.keys:
            self.keys.append(key)
        self.commands.append((name, self.keys.index(key) + 1, args))

    def hset(self, key: str, field: str | None = None, value: Any = None,
             mapping: dict[Any, Any] | None = None) -> None:
        pairs = [] if field is None else [field, value]
        self.command("hset", key, *pairs, *(x for kv in (mapping or {}).items() for x in kv))

    def hdel(self, key: str, *fields: str) -> None:
        self.command("hdel", key, *fields)

    def lpush(self, key: str, *values: str) -> None:
        self.command("lpush", key, *values)

    def ltrim(self, key: str, start: int, end: int) -> None:
        self.command("ltrim", key, start, end)

    def execute(self) -> None:
        if not self.commands:
            return
        if self.fence is None:
            pipe: Any = self.redis.pipeline(transaction=True)  # execute_command is untyped
            for name, index, args in self.commands:
                pipe.execute_command(name.upper(), self.keys[index - 1], *args)
            pipe.execute()
            return
        import redis

        flat: list[Any] = []
        for name, index, args in self.commands:
            flat += [name, index, len(args), *args]
        try:
            FencedScript.of(self.redis, EXEC_BODY)(self.fence, self.keys, flat)
        except redis.ResponseError as exc:
            if REFUSED not in str(exc):
                raise
            raise Refused(str(exc).rsplit(REFUSED, 1)[1].split()[0]) from None


ZADD_BODY = """
for i = 1, #ARGV, 2 do redis.call('zadd', KEYS[1], ARGV[i], ARGV[i + 1]) end
return #ARGV / 2
"""


class FencedPipeline:
    """Fenced writes to many keys (each its own slot on a cluster) pipelined: one round
    trip per node (``redisconn.pipelined``), each write checked where it lands."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx, self.fence = ctx, fence_of(ctx)
        self.calls: list[Call] = []

    def call(self, body: str, keys: Sequence[str | bytes], args: Sequence[Any] = ()) -> None:
        script = FencedScript.of(self.ctx.redis, body)
        self.calls.append((keys[0], partial(script, self.fence, keys, args)))

    def command(self, name: str, key: str, *args: Any) -> None:
        """One write command on ``key`` (``"set", key, value, "EX", 90``)."""
        self.call(COMMAND_BODY, [key], [name, *args])

    def set(self, key: str, value: str, *args: Any) -> None:
        self.command("set", key, value, *args)

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        self.call(ZADD_BODY, [key], [x for member, score in mapping.items()
                                     for x in (repr(score), member)])

    def execute(self, what: str) -> list[Any]:
        """The replies in order; the first error raised once every write was sent (a
        refusal as the run's LockLost)."""
        replies = pipelined(self.ctx.redis, self.calls)
        with refused_as_lock_lost(self.ctx, what):
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


def fenced_command(ctx: JobContext, name: str, key: str, *args: Any) -> Any:
    """One write command (``"zremrangebyscore", key, "-inf", 5``), refused from an
    older fence."""
    script = FencedScript.of(ctx.redis, COMMAND_BODY)
    with refused_as_lock_lost(ctx, f"{name.upper()} {key}"):
        return script(fence_of(ctx), [key], [name, *args])


def fenced_set(ctx: JobContext, key: str, value: str, *args: Any) -> Any:
    """``SET key value [args]`` (e.g. ``"EX", 90``), refused from an older fence."""
    return fenced_command(ctx, "set", key, value, *args)


@contextmanager
def refused_as_lock_lost(ctx: JobContext, what: str) -> Iterator[None]:
    """A script's (or a pipeline's) fence refusal becomes the run's LockLost."""
    import redis

    try:
        yield
    except Refused as exc:
        raise lost(ctx, what, exc.seen) from None
    except redis.ResponseError as exc:
        if REFUSED not in str(exc):
            raise
        seen = str(exc).rsplit(REFUSED, 1)[1].split()[0]
        raise lost(ctx, what, seen) from None


def lost(ctx: JobContext, what: str, seen: object) -> LockLost:
    fence = fence_of(ctx)
    mine = fence.token if fence else "?"
    key = fence.lock_key if fence else "?"
    ctx.log.error("write refused by the fence: another run holds the lock",
                  lock_key=key, fence=mine, newer_fence=seen)
    return LockLost(
        f"{what} refused: this run's fence {mine} is older than {seen} (another run took "
        f"the lock {key}); nothing of it was written"
    )
