"""group-activity-rank: the week's most active channels into ``group_activity_rank``.

For one ISO week (Monday 00:00 to Monday 00:00 in the configured time zone; default
last week), per channel: ``msg_count`` (messages) and ``active_members`` (distinct
senders). The score, stored with 2 decimals, is

    score = msg_count * rank_weight_messages + active_members * rank_weight_members

(defaults 1 and 10: ten people talking outweigh one person posting ten times). The top
``rank_top_n`` (100) channels by score, ties broken by the lower channel id, get ranks
1..N. The week's rows are deleted and written again in one transaction, so readers see
the old ranking or the new one, never a mix; a transaction-scoped advisory lock per
week keeps two runs at once (``--no-lock``) from colliding on the unique key.

The scheduled run (no ``--week``) ranks last week of its scheduled time, then fills the
weeks missing from the table since its first week (novajobs.catchup). A week without
any message has no rows either way, so it is never counted as missed.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from novajobs.catchup import CatchUp, fill_missed, logical_now, with_catchup
from novajobs.context import JobContext, Result
from novajobs.dates import MAX_BACKFILL_DAYS, IsoWeek, local_today, parse_week, resolve_week
from novajobs.errors import Outcome, UsageError
from novajobs.pgfence import pg_transaction
from novajobs.pgsession import pg_session
from novajobs.registry import check_flag
from novajobs.schema import require_tables

if TYPE_CHECKING:
    from novajobs.settings import Settings

RANK_SQL = """
WITH per_channel AS (
    SELECT channel_id, count(*) AS msg_count, count(DISTINCT sender_id) AS active_members
    FROM chat_messages
    WHERE created_at >= %(start)s AND created_at < %(end)s
    GROUP BY channel_id
),
scored AS (
    SELECT channel_id, msg_count, active_members,
           round(msg_count * %(w_msgs)s::numeric
                 + active_members * %(w_members)s::numeric, 2) AS score
    FROM per_channel
)
SELECT channel_id, msg_count, active_members, score,
       row_number() OVER (ORDER BY score DESC, channel_id) AS rank
FROM scored
ORDER BY score DESC, channel_id
LIMIT %(top)s
"""

LOCK_WEEK_SQL = "SELECT pg_advisory_xact_lock(hashtext('novajobs:group_activity_rank:' || %s))"
DELETE_WEEK_SQL = "DELETE FROM group_activity_rank WHERE stat_week = %s"
INSERT_SQL = """
INSERT INTO group_activity_rank
    (stat_week, channel_id, msg_count, active_members, score, rank)
SELECT %s, * FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::numeric[], %s::int[])
"""

# Of the candidate weeks (their bounds), the ones with any message, by position (1-based).
WEEKS_WITH_MESSAGES_SQL = """
SELECT w.i FROM unnest(%s::timestamptz[], %s::timestamptz[]) WITH ORDINALITY AS w(s, e, i)
WHERE EXISTS (SELECT 1 FROM chat_messages m WHERE m.created_at >= w.s AND m.created_at < w.e)
ORDER BY w.i
"""

COLUMNS = ("channel_id", "msg_count", "active_members", "score", "rank")


def rank_channels(ctx: JobContext, week: IsoWeek) -> list[dict[str, Any]]:
    s = ctx.settings
    start, end = week.bounds(s.timezone)
    params = {
        "start": start,
        "end": end,
        "w_msgs": Decimal(str(s.rank_weight_messages)),
        "w_members": Decimal(str(s.rank_weight_members)),
        "top": s.rank_top_n,
    }
    rows = ctx.pg.execute(RANK_SQL, params).fetchall()
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def replace_week(ctx: JobContext, week: IsoWeek, ranked: list[dict[str, Any]]) -> int:
    """Swap the week's rows for ``ranked`` atomically; returns how many old rows went."""
    columns = [[row[name] for row in ranked] for name in COLUMNS]
    ctx.checkpoint()
    with pg_transaction(ctx, f"group_activity_rank week {week.label}") as conn:
        conn.execute(LOCK_WEEK_SQL, [week.label])
        deleted = conn.execute(DELETE_WEEK_SQL, [week.label]).rowcount
        if ranked:
            conn.execute(INSERT_SQL, [week.label, *columns])
    return deleted


def rank_week(ctx: JobContext, week: IsoWeek) -> tuple[list[dict[str, Any]], int]:
    """Rank one week and replace its rows: (the ranking, old rows replaced); counted."""
    ranked = rank_channels(ctx, week)
    replaced = replace_week(ctx, week, ranked)
    ctx.count("channels_ranked", len(ranked))
    ctx.count("rows_replaced", replaced)
    if not ranked:
        ctx.log.warning("no messages in the week; its ranking is now empty", stat_week=week.label)
    return ranked, replaced


def missed_weeks(ctx: JobContext, before: IsoWeek) -> list[IsoWeek]:
    """Weeks before ``before`` with messages but no ranking, since the table's first week."""
    rows = ctx.pg.execute(
        "SELECT DISTINCT stat_week FROM group_activity_rank WHERE stat_week < %s", [before.label]
    ).fetchall()
    present = {week for (label,) in rows if (week := _stored_week(label)) is not None}
    if not present:
        return []  # no history yet: nothing was missed (a backfill is --week)
    oldest = before.monday - timedelta(days=MAX_BACKFILL_DAYS)
    week = max(min(present, key=lambda w: w.monday), IsoWeek.of(oldest), key=lambda w: w.monday)
    candidates = []
    while week.monday < before.monday:
        if week not in present:
            candidates.append(week)
        week = week.next()
    if not candidates:
        return []
    tz = ctx.settings.timezone
    bounds = [w.bounds(tz) for w in candidates]
    rows = ctx.pg.execute(WEEKS_WITH_MESSAGES_SQL,
                          [[b[0] for b in bounds], [b[1] for b in bounds]]).fetchall()
    return [candidates[i - 1] for (i,) in rows]


def _stored_week(label: str | None) -> IsoWeek | None:
    try:
        return parse_week(label or "")
    except UsageError:  # not written by novajobs: not history it can reason about
        return None


def check_params(settings: Settings, week: str | None = None, no_catchup: bool = False) -> None:
    resolve_week(settings.timezone, week)
    check_flag("--no-catchup", no_catchup)


def run(ctx: JobContext, week: str | None = None, no_catchup: bool = False) -> Result:
    tz = ctx.settings.timezone
    now = logical_now(ctx) if week is None else None
    target = resolve_week(tz, week, now=now)
    if target.monday + timedelta(days=7) > local_today(tz):
        ctx.log.warning("the week is not over: its ranking will change", stat_week=target.label)
    catch: CatchUp[IsoWeek] | None = None
    with pg_session(ctx):
        require_tables(ctx.pg, owned=("group_activity_rank",), read=("chat_messages",))
        ranked, replaced = rank_week(ctx, target)
        if week is None:
            catch = fill_missed(ctx, missed_weeks(ctx, target), lambda w: rank_week(ctx, w),
                                enabled=not no_catchup, unit="weeks")
    start, end = target.bounds(tz)
    rows = [{**row, "score": float(row["score"])} for row in ranked]
    details: dict[str, Any] = {
        "listing": "channels",
        "stat_week": target.label,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "channels": rows,
    }
    return with_catchup(Result(
        Outcome.SUCCESS,
        f"week {target.label}: ranked {len(ranked)} channels (replaced {replaced} rows)",
        details,
    ), catch)
