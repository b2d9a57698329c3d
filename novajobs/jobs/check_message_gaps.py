"""check-message-gaps: missing ``seq`` numbers per channel in recent ``chat_messages``.

The window is ``[until - window - overlap, until)`` with ``until = now - settle``: the
overlap makes consecutive runs (every ``gaps_window_sec``) check every message at least
once; the settle time leaves the newest messages, whose transactions may still commit
out of ``seq`` order, to the next run. ``--since/--until`` check any range ad hoc.

Index-friendly steps, so the cost stays close to counting the window:

1. One grouped scan of the window by ``created_at`` (partition pruning plus the index)
   gives per channel the count, min, max and sum of ``seq``. A channel whose count is
   ``max - min + 1`` and whose sum is that of ``min..max`` has no gap inside the window
   (exact when ``seq`` is unique per channel; a duplicate hides a gap only if the
   duplicates and the missing numbers have equal counts and equal sums). The scan starts
   MARGIN earlier and also keeps each channel's last seq before the window: for a busy
   channel that is the message right before its first one here.
2. Only for the channels that fail that test, the seqs from min to max are read through
   the ``(channel_id, seq)`` index and every hole is listed.
3. Only for channels whose predecessor was not in the margin, one ``(channel_id, seq)``
   index probe finds the closest earlier seq (the last day's partitions first, then all),
   so a gap straddling the window start is reported too. A channel with no earlier
   message although its first one here is not seq 1 (were old partitions dropped?) is
   counted as without history, not reported.

Required index: ``chat_messages (channel_id, seq)``. Recommended:
``(created_at) INCLUDE (channel_id, seq)`` so step 1 reads the index only (a plain
``(created_at)`` index works, with heap reads). Exit 3 ("problem found") on any gap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from novajobs.context import JobContext, Result
from novajobs.dates import resolve_range
from novajobs.errors import Outcome
from novajobs.pgsession import pg_session
from novajobs.schema import require_tables

if TYPE_CHECKING:
    from novajobs.settings import Settings

RECENT_LOOKBACK = timedelta(days=1)  # where a predecessor is looked for first
MARGIN = timedelta(seconds=30)  # scanned before the window for predecessors (step 1)

WINDOW_SQL = """
SELECT channel_id, n, first_seq, last_seq, prev_seq,
       n <> last_seq - first_seq + 1
           OR seq_sum * 2 <> (first_seq + last_seq)::numeric * (last_seq - first_seq + 1)
           AS suspect
FROM (
    SELECT channel_id,
           count(*) FILTER (WHERE created_at >= %(since)s) AS n,
           min(seq) FILTER (WHERE created_at >= %(since)s) AS first_seq,
           max(seq) FILTER (WHERE created_at >= %(since)s) AS last_seq,
           sum(seq) FILTER (WHERE created_at >= %(since)s) AS seq_sum,
           max(seq) FILTER (WHERE created_at < %(since)s) AS prev_seq
    FROM chat_messages
    WHERE created_at >= %(margin)s AND created_at < %(until)s
    GROUP BY channel_id
) per_channel
WHERE n > 0
"""

# Holes inside [first_seq, last_seq] of the suspect channels, whatever their created_at
# (a message stamped just outside the window is present, not missing).
INNER_GAPS_SQL = """
SELECT channel_id, prev_seq + 1 AS gap_from, seq - 1 AS gap_to
FROM (
    SELECT s.channel_id, m.seq,
           lag(m.seq) OVER (PARTITION BY s.channel_id ORDER BY m.seq) AS prev_seq
    FROM unnest(%(channels)s::bigint[], %(firsts)s::bigint[], %(lasts)s::bigint[])
         AS s(channel_id, first_seq, last_seq)
    CROSS JOIN LATERAL (
        SELECT DISTINCT seq FROM chat_messages c
        WHERE c.channel_id = s.channel_id AND c.seq BETWEEN s.first_seq AND s.last_seq
    ) m
) ordered
WHERE seq > prev_seq + 1
ORDER BY channel_id, gap_from
"""

# The closest earlier seq of each channel asked about (NULL: none at all). coalesce()
# evaluates the probe over all partitions only when the recent one found nothing.
EDGE_SQL = """
SELECT w.channel_id, w.first_seq,
       coalesce(
           (SELECT max(c.seq) FROM chat_messages c
            WHERE c.channel_id = w.channel_id AND c.seq < w.first_seq
              AND c.created_at >= %(recent)s),
           (SELECT max(c.seq) FROM chat_messages c
            WHERE c.channel_id = w.channel_id AND c.seq < w.first_seq)
       ) AS prev_seq
FROM unnest(%(channels)s::bigint[], %(firsts)s::bigint[]) AS w(channel_id, first_seq)
"""


class ChannelWindow(NamedTuple):
    """A row of WINDOW_SQL: one channel's messages in the window."""

    channel_id: int
    n: int
    first_seq: int
    last_seq: int
    prev_seq: int | None  # the last seq in the margin before the window
    suspect: bool  # the window's seqs are not exactly first..last


def check_window(ctx: JobContext, since: datetime, until: datetime) -> dict[str, Any]:
    """Every gap of the window, plus what was looked at."""
    from psycopg.rows import class_row

    conn = ctx.pg
    window = {"since": since, "until": until, "margin": since - MARGIN}
    stats = conn.cursor(row_factory=class_row(ChannelWindow)).execute(WINDOW_SQL, window).fetchall()
    gaps = inner_gaps(ctx, [row for row in stats if row.suspect])
    # A first seq of 1 starts the channel; otherwise its predecessor must be first - 1.
    unsure = [row for row in stats if row.first_seq > 1 and row.prev_seq != row.first_seq - 1]
    no_history = 0
    if unsure:
        edges = {"channels": [r.channel_id for r in unsure],
                 "firsts": [r.first_seq for r in unsure], "recent": since - RECENT_LOOKBACK}
        for channel, first, prev in conn.execute(EDGE_SQL, edges):
            if prev is None:
                no_history += 1
            elif prev < first - 1:
                gaps.append(_gap(channel, prev + 1, first - 1, "before the window"))
    gaps.sort(key=lambda g: (g["channel_id"], g["from_seq"]))
    return {
        "channels": len(stats),
        "messages": sum(row.n for row in stats),
        "channels_without_history": no_history,
        "gaps": gaps,
    }


def inner_gaps(ctx: JobContext, suspects: list[ChannelWindow]) -> list[dict[str, Any]]:
    if not suspects:
        return []
    params = {"channels": [r.channel_id for r in suspects],
              "firsts": [r.first_seq for r in suspects], "lasts": [r.last_seq for r in suspects]}
    return [_gap(channel, lo, hi, "inside the window")
            for channel, lo, hi in ctx.pg.execute(INNER_GAPS_SQL, params)]


def _gap(channel: int, lo: int, hi: int, where: str) -> dict[str, Any]:
    return {"channel_id": channel, "from_seq": lo, "to_seq": hi, "missing": hi - lo + 1,
            "where": where}


def window(s: Settings, since: str | None, until: str | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return resolve_range(
        s.timezone,
        since=since,
        until=until,
        default_until=now - timedelta(seconds=s.gaps_settle_sec),
        default_span=timedelta(seconds=s.gaps_window_sec + s.gaps_overlap_sec),
        now=now,
    )


def check_params(settings: Settings, since: str | None = None, until: str | None = None) -> None:
    window(settings, since, until)


def run(ctx: JobContext, since: str | None = None, until: str | None = None) -> Result:
    s = ctx.settings
    start, end = window(s, since, until)
    with pg_session(ctx):
        require_tables(ctx.pg, read=("chat_messages",))
        found = check_window(ctx, start, end)
    gaps = found["gaps"]
    missing = sum(g["missing"] for g in gaps)
    ctx.count("channels_checked", found["channels"])
    ctx.count("messages_checked", found["messages"])
    ctx.count("channels_without_history", found["channels_without_history"])
    ctx.count("gaps", len(gaps))
    ctx.count("missing_messages", missing)
    shown = gaps[: s.gaps_report_limit]
    for gap in shown:
        ctx.log.warning("seq gap", **gap)
    span = f"{start.isoformat(timespec='seconds')} .. {end.isoformat(timespec='seconds')}"
    details = {
        "listing": "gaps",
        "since": start.isoformat(),
        "until": end.isoformat(),
        "channels_checked": found["channels"],
        "messages_checked": found["messages"],
        "gap_count": len(gaps),
        "missing_messages": missing,
        "gaps": shown,
        "truncated": len(shown) < len(gaps),
    }
    if gaps:
        channels = len({g["channel_id"] for g in gaps})
        return Result(
            Outcome.PROBLEM_FOUND,
            f"{len(gaps)} seq gaps ({missing} missing messages) in {channels} of "
            f"{found['channels']} channels, {span}",
            details,
        )
    return Result(
        Outcome.SUCCESS,
        f"no seq gaps in {found['channels']} channels ({found['messages']} messages), {span}",
        details,
    )
