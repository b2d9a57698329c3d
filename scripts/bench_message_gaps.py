#!/usr/bin/env python3
"""Benchmark: check-message-gaps over a busy 10-minute window vs a plain count(*) of it.

    .venv/bin/python scripts/bench_message_gaps.py                # 20M rows, 1M in the window
    .venv/bin/python scripts/bench_message_gaps.py --messages 2000000 --recent 150000

Starts its own PostgreSQL 15 (scripts/stack.py) in a temporary directory and generates
``chat_messages`` inside PostgreSQL: ``--messages`` rows over ``--days`` days in monthly
partitions, the last ``--recent`` of them in the last 15 minutes (so the default
10-minute window holds about 2/3 of them), ``--channels`` channels, seq 1, 2, ... per
channel, and ``--gaps`` messages of the window deleted. Then, on the same window
``[now - 10 min 30 s, now - 30 s)`` and the same connection, it times:

- the job's check (``check_message_gaps.check_window``, the whole of its SQL work);
- ``SELECT count(*)`` of the window, the floor any check of the window pays.

Both run ``--repeat`` times; the best time counts (the machine is shared and noisy).
First with the recommended covering index ``(created_at) INCLUDE (channel_id, seq)``,
then with a plain ``(created_at)`` index. The deleted messages must be found exactly.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from novajobs_dev import demo_data
from novajobs_dev.bench import parse_args
from novajobs_dev.stack import temporary

RECENT = timedelta(minutes=15)

# Uniform channels: message i goes to channel i % C with seq i / C + 1, in time order.
MESSAGES_SQL = """
INSERT INTO chat_messages (id, channel_id, sender_id, seq, created_at)
SELECT i + 1, i %% %(channels)s + 1, (i * 31) %% 100000 + 1, i / %(channels)s + 1,
       CASE WHEN i < %(old)s
            THEN %(start)s::timestamptz + ((i + 0.5) / %(old)s)::float8 * %(old_span)s::interval
            ELSE %(recent_start)s::timestamptz
                 + ((i - %(old)s + 0.5) / %(recent)s)::float8 * %(recent_span)s::interval
       END
FROM generate_series(0::bigint, %(messages)s - 1) AS i
"""

# Every 97th busy channel loses one message in the middle of the window.
DELETE_SQL = """
DELETE FROM chat_messages WHERE (channel_id, seq) IN (
    SELECT channel_id, (min(seq) + max(seq)) / 2 FROM chat_messages
    WHERE created_at >= %(since)s AND created_at < %(until)s AND channel_id %% 97 = 0
    GROUP BY channel_id ORDER BY channel_id LIMIT %(gaps)s
) RETURNING channel_id, seq
"""

COUNT_SQL = "SELECT count(*) FROM chat_messages WHERE created_at >= %s AND created_at < %s"
COVERING = demo_data.POSTGRES_INDEXES["chat_messages_created_at"]
PLAIN = "CREATE INDEX chat_messages_created_at_plain_idx ON chat_messages (created_at)"


def load(conn: Any, args: argparse.Namespace, now: datetime) -> None:
    start, recent_start = now - timedelta(days=args.days), now - RECENT
    conn.execute(demo_data.POSTGRES_DDL["chat_messages"])
    demo_data.create_month_partitions(conn, "chat_messages", start.date(), now.date())
    conn.execute(MESSAGES_SQL, {
        "channels": args.channels, "messages": args.messages, "recent": args.recent,
        "old": args.messages - args.recent, "start": start, "old_span": recent_start - start,
        "recent_start": recent_start, "recent_span": RECENT,
    })
    conn.execute(demo_data.POSTGRES_INDEXES["chat_messages_channel_seq"])


def measure(ctx: Any, since: datetime, until: datetime, repeat: int) -> tuple[float, float, Any]:
    from novajobs.jobs.check_message_gaps import check_window

    checks, counts, found = [], [], None
    for _ in range(repeat):
        started = time.monotonic()
        ctx.pg.execute(COUNT_SQL, [since, until]).fetchone()
        counts.append(time.monotonic() - started)
        started = time.monotonic()
        found = check_window(ctx, since, until)
        checks.append(time.monotonic() - started)
    return min(checks), min(counts), found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000_000)
    parser.add_argument("--recent", type=int, default=1_500_000,
                        help="messages in the last 15 minutes (2/3 fall in the window)")
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--gaps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    args = parse_args(parser, tiny={"messages": 5000, "recent": 1000, "channels": 50, "days": 2,
                                    "gaps": 3, "repeat": 1})

    import psycopg

    from novajobs.context import JobContext
    from novajobs.pgsession import open_session
    from novajobs.settings import load_settings

    with temporary(("postgres",)) as stack:
        env = stack.env()
        conn = psycopg.connect(env["DATABASE_URL"], autocommit=True)
        now = datetime.now(UTC).replace(microsecond=0)
        until = now - timedelta(seconds=30)
        since = until - timedelta(minutes=10)
        started = time.monotonic()
        load(conn, args, now)
        deleted = sorted(conn.execute(DELETE_SQL, {"since": since, "until": until,
                                                   "gaps": args.gaps}).fetchall())
        conn.execute(COVERING)
        conn.execute("VACUUM ANALYZE chat_messages")
        total = conn.execute("SELECT count(*) FROM chat_messages").fetchall()[0][0]
        print(f"loaded in {time.monotonic() - started:.0f} s: chat_messages {total:,} rows, "
              f"{args.channels:,} channels, {len(deleted)} messages deleted")

        settings = load_settings(environ={"DATABASE_URL": env["DATABASE_URL"]})
        with JobContext(settings, "check-message-gaps") as ctx:
            open_session(ctx)
            results = []
            for label in ("covering (created_at) INCLUDE (channel_id, seq)",
                          "plain (created_at)"):
                if label.startswith("plain"):
                    conn.execute("DROP INDEX chat_messages_created_at_idx")
                    conn.execute(PLAIN)
                    conn.execute("VACUUM ANALYZE chat_messages")
                check, count, found = measure(ctx, since, until, args.repeat)
                gaps = [(g["channel_id"], g["from_seq"]) for g in found["gaps"]]
                if gaps != [(c, s) for c, s in deleted]:
                    print(f"MISMATCH: found {gaps[:5]}..., deleted {deleted[:5]}...")
                    return 1
                results.append((label, check, count, found["messages"]))
        for label, check, count, messages in results:
            print(f"index {label}: window of {messages:,} messages: count(*) {count * 1000:.0f} ms,"
                  f" check {check * 1000:.0f} ms, ratio {check / count:.2f}x (goal <= 3x)")
        print(f"all {len(deleted)} deleted messages reported as gaps, nothing else")
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
