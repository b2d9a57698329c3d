"""The dead-letter stream (``dlq:{stream}``, see keys.py): read, select, replay, purge, cap.

Entries are read raw (through a one-line script: redis-py's dict would keep the LAST
of a repeated field, and old versions wrote ``novajobs:id`` twice), so the first value
of a meta field always wins.

- ``replay`` rebuilds each entry's fields with entries.with_meta (the producer's fields
  and the first id; the attempt count starts over) and moves it back with a script
  that adds it to the stream and deletes it from the DLQ in one step, only if it is
  still there (so two operators replaying at once cannot double it).
- A dead letter whose first id is older than the dedupe retention
  (``stream_dedupe_retention_days``) is not replayed: the audit-log handler may have
  forgotten it was handled, and would write it twice. It is counted as ``too_old``;
  the DLQ's age cap (``stream_dlq_max_age``, checked to be below the retention) keeps
  such entries from piling up in the first place.
- ``cap`` trims the DLQ to ``stream_dlq_max_len`` entries and ``stream_dlq_max_age``
  (by the time in the entry id: when it was dead-lettered) and adds what it dropped to
  ``dlq-dropped:{stream}``, in one script: an overflow is never silent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novajobs.conversions import text
from novajobs.errors import ConfigError, UsageError
from novajobs.streams.entries import (
    META_ATTEMPTS,
    META_ERROR,
    META_FAILED_AT,
    META_ID,
    first_values,
    is_meta,
    meta,
    with_meta,
)

if TYPE_CHECKING:
    import redis

    from novajobs.settings import Settings
    from novajobs.streams.keys import StreamKeys

DAY = 86400.0


@dataclass(frozen=True)
class DeadLetter:
    id: str  # the DLQ entry's own id (its time: when it was dead-lettered)
    first_id: str
    attempts: int
    failed_at: str
    error: str
    fields: dict[str, str]  # the producer's fields (bytes shown with replacement chars)
    raw: dict[bytes, bytes] = field(repr=False, compare=False)  # every field, as stored

    @property
    def replayable(self) -> bool:
        return any(not is_meta(name) for name in self.raw)

    def summary(self) -> dict[str, Any]:
        """What ``dlq list --json`` and the console show (text only)."""
        return {"id": self.id, "first_id": self.first_id, "attempts": self.attempts,
                "failed_at": self.failed_at, "error": self.error, "fields": self.fields}


@dataclass(frozen=True)
class Selection:
    """Which dead letters a replay or purge takes. Times are Unix seconds."""

    ids: tuple[str, ...] = ()  # these only; else every entry present now that matches
    error: str | None = None  # substring of the error
    error_regex: re.Pattern[str] | None = None
    since: float | None = None  # dead-lettered at or after
    until: float | None = None  # dead-lettered before
    min_attempts: int | None = None
    max_attempts: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        a = letter.attempts
        return ((self.error is None or self.error in letter.error)
                and (self.error_regex is None or bool(self.error_regex.search(letter.error)))
                and (self.min_attempts is None or a >= self.min_attempts)
                and (self.max_attempts is None or a <= self.max_attempts))


_XRANGE = "return redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])"


ENTRY_ID = re.compile(r"[0-9]+(-[0-9]+)?")


def parse_selection(verb: str, ids: Sequence[str], all_: bool, error: str | None = None,
                    error_regex: str | None = None, since: str | None = None,
                    until: str | None = None, min_attempts: int | None = None,
                    max_attempts: int | None = None) -> Selection:
    """The selection `novajobs dlq replay|purge` and the console take, checked: entry ids,
    or all, or filters (which narrow all too). Raises UsageError with one line."""
    filtered = any(x is not None for x in (error, error_regex, since, until, min_attempts,
                                           max_attempts))
    if ids and all_:
        raise UsageError(f"dlq {verb}: give entry IDs or --all, not both")
    if not (ids or all_ or filtered):
        raise UsageError(f"dlq {verb}: give entry IDs, --all, or a filter (see --help)")
    check_ids(ids, verb)
    try:
        pattern = re.compile(error_regex) if error_regex is not None else None
    except re.error as exc:
        raise UsageError(f"dlq {verb}: --error-regex {error_regex!r}: {exc}") from None
    return Selection(tuple(ids), error, pattern, parse_when(verb, "--since", since),
                     parse_when(verb, "--until", until), min_attempts, max_attempts)


def check_ids(ids: Sequence[str], verb: str) -> None:
    bad = [i for i in ids if not ENTRY_ID.fullmatch(i)]
    if bad:
        raise UsageError(f"dlq {verb}: {bad[0]!r} is not a stream entry id (e.g. 1700000000000-0)")


def parse_when(verb: str, flag: str, text: str | None) -> float | None:
    """An ISO time (UTC if it names no zone) or a duration ago, as Unix seconds."""
    from datetime import UTC, datetime

    from novajobs.dates import parse_duration

    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"dlq {verb}: {flag} {text!r} is neither an ISO time "
                         "(2026-11-30T08:00) nor a duration ago (2h, 7d)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def read(r: redis.Redis, keys: StreamKeys, start: str = "-", end: str = "+",
         count: int = 100) -> list[DeadLetter]:
    rows: Any = r.eval(_XRANGE, 1, keys.dlq, start, end, count)
    return [_dead_letter(text(entry_id), first_values(pairs)) for entry_id, pairs in rows]


def show(r: redis.Redis, keys: StreamKeys, entry_id: str) -> DeadLetter | None:
    found = read(r, keys, entry_id, entry_id, 1)
    return found[0] if found else None


def select(r: redis.Redis, keys: StreamKeys, sel: Selection,
           batch: int = 200) -> Iterator[tuple[list[DeadLetter], int]]:
    """(matching dead letters, ids not found) in batches; without ids, every entry up to
    the newest one present at the start (entries dead-lettered meanwhile wait)."""
    if sel.ids:
        for i in range(0, len(sel.ids), batch):
            found = [show(r, keys, entry_id) for entry_id in sel.ids[i : i + batch]]
            letters = [letter for letter in found if letter is not None]
            yield [x for x in letters if sel.matches(x)], len(found) - len(letters)
        return
    last: Any = r.xrevrange(keys.dlq, count=1)
    if not last:
        return
    start = _id_at(sel.since) if sel.since is not None else "-"
    end = text(last[0][0])
    if sel.until is not None and _id_order(_id_at(sel.until)) <= _id_order(end):
        end = "(" + _id_at(sel.until)  # dead-lettered before `until`
    while letters := read(r, keys, start, end, batch):
        yield [letter for letter in letters if sel.matches(letter)], 0
        start = "(" + letters[-1].id


def length(r: redis.Redis, keys: StreamKeys) -> int:
    return int(r.xlen(keys.dlq))


# KEYS[1] DLQ, KEYS[2] stream; ARGV: for each entry its DLQ id, the number N of field
# names and values that follow, then those N. An entry still in the DLQ goes back to the
# stream and leaves the DLQ in the same step; one already gone is counted as missing.
_REPLAY = """
local i, moved, missing = 1, 0, 0
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    missing = missing + 1
  else
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 2, i + 1 + n))
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
  i = i + 2 + n
end
return {moved, missing}
"""


@dataclass
class ReplayResult:
    replayed: int = 0
    missing: int = 0  # ids not (or no longer) in the DLQ
    unreplayable: int = 0  # entries without producer fields (an unreadable retry member)
    too_old: int = 0  # first id older than the dedupe retention: could be written twice


def replay(r: redis.Redis, keys: StreamKeys, letters: Sequence[DeadLetter],
           oldest_ms: int = 0) -> ReplayResult:
    """Move ``letters`` back into the stream (those whose first id is at least
    ``oldest_ms``, Unix ms, and that have producer fields)."""
    result = ReplayResult()
    args: list[Any] = []
    for letter in letters:
        refusal = refused(letter, oldest_ms)
        if refusal:
            setattr(result, refusal, getattr(result, refusal) + 1)
        else:
            fields = with_meta(letter.raw, meta(letter.first_id))
            args += [letter.id, 2 * len(fields), *(x for pair in fields.items() for x in pair)]
    if args:
        moved, missing = r.eval(_REPLAY, 2, keys.dlq, keys.stream, *args)
        result.replayed, result.missing = int(moved), int(missing)
    return result


def refused(letter: DeadLetter, oldest_ms: int) -> str | None:
    """Why ``letter`` is not replayed (a ReplayResult count's name), or None."""
    if not letter.replayable:
        return "unreplayable"
    if id_ms(letter.first_id) < oldest_ms:
        return "too_old"
    return None


def purge(r: redis.Redis, keys: StreamKeys, ids: Sequence[str]) -> int:
    return int(r.xdel(keys.dlq, *ids)) if ids else 0


@dataclass
class Done:
    """What a replay or purge of a selection did (or, in a dry run, would do)."""

    matched: int = 0
    moved: int = 0  # replayed or purged
    missing: int = 0
    unreplayable: int = 0
    too_old: int = 0
    letters: list[DeadLetter] = field(default_factory=list)  # dry run: what would move

    def add(self, result: ReplayResult) -> None:
        self.moved += result.replayed
        self.missing += result.missing
        self.unreplayable += result.unreplayable
        self.too_old += result.too_old


def replay_selected(r: redis.Redis, keys: StreamKeys, sel: Selection, *, oldest_ms: int,
                    dry_run: bool = False, rate: float | None = None) -> Done:
    """Replay the selection a batch at a time; ``rate``: at most that many entries a
    second on average (for a live system)."""
    done = Done()
    started, batch = time.monotonic(), max(1, min(200, int(rate or 200)))
    for letters, missing in select(r, keys, sel, batch):
        done.matched += len(letters)
        done.missing += missing
        if dry_run:
            for letter in letters:
                refusal = refused(letter, oldest_ms)
                if refusal:
                    setattr(done, refusal, getattr(done, refusal) + 1)
                else:
                    done.letters.append(letter)
            continue
        done.add(replay(r, keys, letters, oldest_ms))
        if rate:  # sleep until the average is back at the rate
            time.sleep(max(0.0, done.moved / rate - (time.monotonic() - started)))
    return done


def purge_selected(r: redis.Redis, keys: StreamKeys, sel: Selection, *,
                   dry_run: bool = False) -> Done:
    done = Done()
    for letters, missing in select(r, keys, sel):
        done.matched += len(letters)
        done.missing += missing
        if dry_run:
            done.letters += letters
        else:
            done.moved += purge(r, keys, [letter.id for letter in letters])
    return done


# KEYS[1] DLQ, KEYS[2] dropped counter; ARGV[1] oldest id to keep ('' = no age cap),
# ARGV[2] most entries to keep. Returns how many were dropped (and counts them).
_CAP = """
local dropped = 0
if ARGV[1] ~= '' then dropped = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1]) end
dropped = dropped + redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
if dropped > 0 then redis.call('INCRBY', KEYS[2], dropped) end
return dropped
"""


def cap(r: redis.Redis, keys: StreamKeys, max_len: int, max_age_sec: float,
        now: float | None = None) -> int:
    """Drop the dead letters beyond the caps; returns how many (also added to the counter)."""
    oldest = _id_at((now or time.time()) - max_age_sec) if max_age_sec > 0 else ""
    return int(r.eval(_CAP, 2, keys.dlq, keys.dropped, oldest, max_len))


def max_age_sec(s: Settings) -> float:
    """``stream_dlq_max_age`` in seconds, checked against the dedupe retention (with a
    day's margin): no dead letter may outlive the memory of having been handled."""
    from novajobs.dates import parse_duration

    age = parse_duration(s.stream_dlq_max_age)
    limit = (s.stream_dedupe_retention_days - 1) * DAY
    if age <= 0 or age > limit:
        raise ConfigError(
            f"setting stream_dlq_max_age ({s.stream_dlq_max_age}) must be above 0 and at most "
            f"stream_dedupe_retention_days - 1 day ({s.stream_dedupe_retention_days - 1}d): a "
            "dead letter replayed after its handled id was forgotten could be written twice")
    return age


def oldest_replayable_ms(s: Settings, now: float) -> int:
    """Dead letters whose first id is older than this (Unix ms) are not replayed."""
    return int((now - (s.stream_dedupe_retention_days - 1) * DAY) * 1000)


def dropped_total(r: redis.Redis, keys: StreamKeys) -> int:
    return int(r.get(keys.dropped) or 0)


def id_ms(entry_id: str) -> int:
    """The Unix-ms time in a stream id (0 for one that is not an id)."""
    ms = entry_id.partition("-")[0]
    return int(ms) if ms.isdigit() else 0


def _id_at(unix: float) -> str:
    return f"{max(0, int(unix * 1000))}-0"


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _dead_letter(entry_id: str, raw: dict[bytes, bytes]) -> DeadLetter:
    attempts = text(raw.get(META_ATTEMPTS.encode(), b""))
    return DeadLetter(
        id=entry_id,
        first_id=text(raw.get(META_ID.encode(), b"")),
        attempts=int(attempts) if attempts.isdigit() else 0,
        failed_at=text(raw.get(META_FAILED_AT.encode(), b"")),
        error=text(raw.get(META_ERROR.encode(), b"")),
        fields={text(k): text(v) for k, v in raw.items() if not is_meta(k)},
        raw=raw,
    )
