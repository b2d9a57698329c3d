"""check-message-gaps: missing ``seq`` numbers per channel in recent ``chat_messages``.

The window is ``[until - window - overlap, until)`` with ``until = now - settle``: the
overlap makes consecutive runs (every ``gaps_window_sec``) check every message at least
once; the settle time leaves the newest messages, whose transactions may still commit
out of ``seq`` order, to the next run. ``--since/--until`` check any range ad hoc.

Three index-friendly steps, so the cost stays close to counting the window:

1. One grouped scan of the window (by ``created_at``: partition pruning plus an index on
   ``created_at``) gives per channel the count, min, max and sum of ``seq``. A channel
   whose count is ``max - min + 1`` and whose sum is that of ``min..max`` has no gap
   inside the window (exact when ``seq`` is unique per channel; a duplicate hides a gap
   only if duplicates and missing numbers have equal counts and equal sums).
2. Only for the channels that fail that test, the seqs from min to max are read through
   the ``(channel_id, seq)`` index and every hole is listed.
3. For every channel, the message right before its first one in the window is found
   with one ``(channel_id, seq)`` index probe (the last day's partitions first, then all
   of them), so a gap straddling the window start is reported too. A channel with no
   earlier message although its first one here is not seq 1 (were its old partitions
   dropped?) is only counted as without history, not reported.

Required index: ``chat_messages (channel_id, seq)``; recommended: ``(created_at)``.
Exit 3 ("problem found") when any gap exists.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from novajobs.context import JobContext, Result
from novajobs.dates import resolve_range
from novajobs.errors import Outcome
from novajobs.pgsession import open_session, pg_errors
from novajobs.schema import require_tables

RECENT_LOOKBACK = timedelta(days=1)  # where a predecessor is looked for first

WINDOW_SQL = """
SELECT channel_id, count(*) AS n, min(seq) AS first_seq, max(seq) AS last_seq,
       sum(seq) AS seq_sum
FROM chat_messages
WHERE created_at >= %(since)s AND created_at < %(until)s
GROUP BY channel_id
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

# The closest earlier seq of each channel; rows only where it is not first_seq - 1.
# coalesce() evaluates the probe over all partitions only when the recent one found none.
EDGE_SQL = """
SELECT channel_id, first_seq, prev_seq
FROM (
    SELECT w.channel_id, w.first_seq,
           coalesce(
               (SELECT max(c.seq) FROM chat_messages c
                WHERE c.channel_id = w.channel_id AND c.seq < w.first_seq
                  AND c.created_at >= %(recent)s),
               (SELECT max(c.seq) FROM chat_messages c
                WHERE c.channel_id = w.channel_id AND c.seq < w.first_seq)
           ) AS prev_seq
    FROM unnest(%(channels)s::bigint[], %(firsts)s::bigint[]) AS w(channel_id, first_seq)
) edges
WHERE prev_seq IS NULL OR prev_seq < first_seq - 1
ORDER BY channel_id
"""


def check_window(ctx: JobContext, since: datetime, until: datetime) -> dict[str, Any]:
    """Every gap of the window, plus what was looked at."""
    conn = ctx.pg
    stats = conn.execute(WINDOW_SQL, {"since": since, "until": until}).fetchall()
    suspects = [row for row in stats if not _contiguous(*row[1:])]
    gaps: list[dict[str, Any]] = []
    if suspects:
        params = {"channels": [r[0] for r in suspects], "firsts": [r[2] for r in suspects],
                  "lasts": [r[3] for r in suspects]}
        for channel, lo, hi in conn.execute(INNER_GAPS_SQL, params):
            gaps.append(_gap(channel, lo, hi, "inside the window"))
    no_history = 0
    if stats:
        edges: dict[str, Any] = {"channels": [r[0] for r in stats],
                                 "firsts": [r[2] for r in stats],
                                 "recent": since - RECENT_LOOKBACK}
        for channel, first, prev in conn.execute(EDGE_SQL, edges):
            if prev is None:
                no_history += first > 1  # seq 1 is a channel's start, not a loss
            else:
                gaps.append(_gap(channel, prev + 1, first - 1, "before the window"))
    gaps.sort(key=lambda g: (g["channel_id"], g["from_seq"]))
    return {
        "channels": len(stats),
        "messages": sum(row[1] for row in stats),
        "channels_without_history": no_history,
        "gaps": gaps,
    }


def _contiguous(n: int, first: int, last: int, seq_sum: Any) -> bool:
    span = last - first + 1
    return n == span and int(seq_sum) * 2 == (first + last) * span


def _gap(channel: int, lo: int, hi: int, where: str) -> dict[str, Any]:
    return {"channel_id": channel, "from_seq": lo, "to_seq": hi, "missing": hi - lo + 1,
            "where": where}


def run(ctx: JobContext, since: str | None = None, until: str | None = None) -> Result:
    s = ctx.settings
    now = datetime.now(UTC)
    start, end = resolve_range(
        s.timezone,
        since=since,
        until=until,
        default_until=now - timedelta(seconds=s.gaps_settle_sec),
        default_span=timedelta(seconds=s.gaps_window_sec + s.gaps_overlap_sec),
        now=now,
    )
    with pg_errors("check-message-gaps"):
        open_session(ctx)
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
        "table": "gaps",
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
