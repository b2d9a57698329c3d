"""The Redis keys of one stream, named so that Redis Cluster puts them in the stream's slot.

promote-retries (retry set -> stream), a DLQ replay (dead letters -> stream) and a
settle round (XACK + ZADD + XADD) each touch a stream and its companions in one atomic
script or MULTI, which a cluster allows only within one hash slot. So the companions
carry the stream key as their hash tag:

- stream ``stream:audit:log``: ``retry:{stream:audit:log}``, ``dlq:{stream:audit:log}``
  and ``dlq-dropped:{stream:audit:log}`` (how many dead letters the cap dropped);
- stream ``{orders}:created`` (its own tag): ``retry:{orders}:created``,
  ``dlq:{orders}:created``, ``dlq-dropped:{orders}:created``.

A key without a hash tag hashes whole, so ``{<stream key>}`` lands in its slot; a
stream key with its own tag keeps it. With a key prefix ``p:`` the names are
``p:retry:{p:stream:audit:log}`` and so on.

Before this naming, the keys were ``retry:<name>`` and ``dlq:<name>`` (still the names
for streams with their own tag). ``migrate_legacy`` moves what such keys hold into
the new ones, a batch per atomic script, and every stream command (drain-stream,
promote-retries, ``dlq``) runs it first, so an upgraded single-Redis deployment
migrates by itself on its next run. On a cluster the old keys live in other slots:
migrate on the single Redis before moving to a cluster (docs/jobs.md, Stream keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novajobs.errors import ConfigError

if TYPE_CHECKING:
    import redis


@dataclass(frozen=True)
class StreamKeys:
    name: str  # as configured (what records, metrics and messages show)
    stream: str
    retry: str
    dlq: str
    dropped: str  # how many dead letters the DLQ cap has dropped, ever
    legacy_retry: str
    legacy_dlq: str

    @property
    def companions(self) -> tuple[str, str, str]:
        return self.retry, self.dlq, self.dropped


def stream_keys(prefix: str, name: str) -> StreamKeys:
    """The keys of stream ``name``; ConfigError for a name no key can share a slot with
    (a ``}`` without a ``{`` before it)."""
    stream = prefix + name
    if hash_tag(stream) is None:
        retry, dlq, dropped = (f"{prefix}{kind}:{{{stream}}}" for kind in _KINDS)
    else:
        retry, dlq, dropped = (f"{prefix}{kind}:{name}" for kind in _KINDS)
    keys = StreamKeys(name, stream, retry, dlq, dropped, f"{prefix}retry:{name}",
                      f"{prefix}dlq:{name}")
    if any(slot(k) != slot(stream) for k in keys.companions):
        raise ConfigError(f"stream {name!r}: its retry and DLQ keys cannot share its Redis "
                          "Cluster hash slot (a '}' without a '{' before it); rename the stream")
    return keys


_KINDS = ("retry", "dlq", "dlq-dropped")


def hash_tag(key: str) -> str | None:
    """What Redis Cluster hashes instead of the whole key: the text between the first
    ``{`` and the first ``}`` after it, when that is not empty."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1 : end] if end > start + 1 else None


def slot(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


# -- migration of the pre-cluster key names ----------------------------------------------
# KEYS[1] legacy retry set, KEYS[2] retry set, KEYS[3] legacy DLQ, KEYS[4] DLQ;
# ARGV[1] batch size. Moves one batch of each atomically (so nothing is lost or doubled
# whenever the process dies); dead letters keep their ids where the new DLQ allows (the
# DLQ's age cap reads them), and a meta field written twice by old versions keeps its
# first value only. Returns what is left in the legacy keys.
_MIGRATE = """
local n = tonumber(ARGV[1])
local due = redis.call('ZRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[2], 'NX', due[i + 1], due[i])
  redis.call('ZREM', KEYS[1], due[i])
end
local rows = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', n)
for _, row in ipairs(rows) do
  local args, seen = {}, {}
  for j = 1, #row[2], 2 do
    local name = row[2][j]
    if string.sub(name, 1, 9) ~= 'novajobs:' or not seen[name] then
      seen[name] = true
      args[#args + 1] = name
      args[#args + 1] = row[2][j + 1]
    end
  end
  if not pcall(redis.call, 'XADD', KEYS[4], row[1], unpack(args)) then
    redis.call('XADD', KEYS[4], '*', unpack(args))
  end
  redis.call('XDEL', KEYS[3], row[1])
end
if #rows > 0 and redis.call('XLEN', KEYS[3]) == 0 then redis.call('DEL', KEYS[3]) end
return redis.call('ZCARD', KEYS[1]) + redis.call('XLEN', KEYS[3])
"""


def migrate_legacy(r: redis.Redis, keys: StreamKeys, batch: int = 500) -> int:
    """Move the pre-cluster ``retry:<name>``/``dlq:<name>`` contents into the new keys;
    returns how many members and entries moved (0, after one EXISTS, when none are left)."""
    if keys.legacy_retry == keys.retry:
        return 0  # a stream with its own hash tag: the names did not change
    pipe = r.pipeline(transaction=False)
    pipe.zcard(keys.legacy_retry)
    pipe.xlen(keys.legacy_dlq)
    left = sum(int(n) for n in pipe.execute())
    moved = 0
    while left:
        before = left
        left = int(_eval(r, _MIGRATE, keys.legacy_retry, keys.retry, keys.legacy_dlq, keys.dlq,
                         batch))
        moved += before - left
    return moved


def _eval(r: redis.Redis, script: str, *args: Any) -> Any:
    import redis as redis_module

    try:
        return r.eval(script, 4, *args)
    except (redis_module.ResponseError, redis_module.RedisClusterException) as exc:
        if "CROSSSLOT" in str(exc) or "same key slot" in str(exc):
            raise ConfigError(
                f"keys {args[0]} / {args[2]} (pre-cluster names) are on a Redis Cluster in "
                "another slot than the stream: migrate them on a single Redis first "
                "(docs/jobs.md, Stream keys)") from None
        raise
