#!/usr/bin/env python3
"""check-consistency --sample: batched id lookups vs one query per id, same ids, same run.

The job looks the sampled PostgreSQL ids up in Neo4j with one ``UNWIND`` query per batch,
and the sampled Neo4j ids up in PostgreSQL with one ``= ANY`` query per batch. The naive
baseline asks one query per id on each side (through one long-lived session, which is
generous to it). Both run in this process, alternating, against a stack of their own.

    .venv/bin/python scripts/bench_consistency.py [--users 100000] [--sample 2000] [--runs 5]

The graph is FalkorDB over Bolt (the Neo4j stand-in); it crashes on requests above ~4 KB,
so batches here are 100 ids (the default for a real Neo4j is 1000: fewer round trips).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from novajobs_dev.bench import interleaved, parse_args
from novajobs_dev.stack import temporary


def cypher(driver: Any, query: str, **params: Any) -> list[Any]:
    """FalkorDB lets every other fresh Bolt connection hang at the handshake: retry."""
    from neo4j.exceptions import ServiceUnavailable

    for attempt in range(10):
        try:
            with driver.session() as session:
                return list(session.run(query, params))
        except ServiceUnavailable:
            if attempt == 9:
                raise
    return []


def load(env: dict[str, str], users: int) -> None:
    """``users`` ids in PostgreSQL and in the graph; every 50th id is missing in the graph."""
    import neo4j
    import psycopg

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as pg:
        pg.execute("DROP TABLE IF EXISTS users")
        pg.execute("CREATE TABLE users (id bigint PRIMARY KEY, created_at timestamptz "
                   "NOT NULL DEFAULT now())")
        pg.execute("INSERT INTO users (id) SELECT generate_series(1, %s)", [users])
    driver = neo4j.GraphDatabase.driver(env["NEO4J_URI"], auth=("falkordb", ""),
                                        connection_timeout=1, connection_acquisition_timeout=2)
    cypher(driver, "MATCH (u:User) DELETE u")
    cypher(driver, "CREATE INDEX FOR (u:User) ON (u.id)")
    for start in range(1, users + 1, 50_000):
        end = min(start + 49_999, users)
        cypher(driver, f"UNWIND range({start}, {end}) AS i WITH i WHERE i % 50 <> 0 "
                       "CREATE (:User {id: i})")
    driver.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parse_args(parser, tiny={"users": 300, "sample": 50, "runs": 1})

    from novajobs.context import JobContext
    from novajobs.jobs.check_consistency import (
        SAMPLE_USERS,
        found_in_neo4j,
        found_in_postgres,
        pg_rows,
    )
    from novajobs.output import setup_logging
    from novajobs.pgsession import open_session
    from novajobs.runner import run_job
    from novajobs.settings import load_settings

    setup_logging("json", "critical")  # the numbers, not the job's log lines

    with temporary(("redis", "postgres", "neo4j")) as local:
        env = local.env()
        started = time.perf_counter()
        load(env, args.users)
        print(f"loaded {args.users:,} users on each side in "
              f"{time.perf_counter() - started:.1f} s")
        settings = load_settings(environ=env, overrides={
            "connect_timeout_sec": 1, "consistency_lookup_batch": 100, "retry_attempts": 5,
            "consistency_sample_size": args.sample})
        ctx = JobContext(settings, "check-consistency")
        pg = open_session(ctx)
        ids = [row[0] for row in pg_rows(ctx, pg, SAMPLE_USERS, {"n": args.sample})]
        session = ctx.neo4j.session()

        def batched() -> tuple[set[int], set[int]]:
            return found_in_neo4j(ctx, ids), found_in_postgres(ctx, pg, ids)

        def one_by_one() -> tuple[set[int], set[int]]:
            in_graph = {i for i in ids if session.run(
                "MATCH (u:User {id: $id}) RETURN u.id AS id", id=i).single() is not None}
            in_pg = {i for i in ids if pg.execute(
                "SELECT id FROM users WHERE id = %s", [i]).fetchone() is not None}
            return in_graph, in_pg

        assert batched() == one_by_one(), "the two ways disagree"
        fast, slow = interleaved(batched, one_by_one, args.runs)
        session.close()
        ctx.close()

        whole = []
        for _ in range(3):
            rec = run_job("check-consistency", settings)
            whole.append(rec.duration_ms / 1000)
        print(f"sample of {len(ids):,} ids, looked up on both sides "
              f"({args.runs} runs, median):")
        print(f"  batched (UNWIND / = ANY, 100 ids a query): {fast * 1000:8.1f} ms")
        print(f"  one query per id (baseline):               {slow * 1000:8.1f} ms")
        print(f"  ratio baseline / batched:                  {slow / fast:8.1f}x")
        print(f"whole job (--sample {args.sample}, lock, counts, record): "
              f"{statistics.median(whole):.2f} s median of 3 (FalkorDB's handshake hang on "
              f"a fresh connection costs up to 2 s of it); outcome {rec.outcome}, "
              f"{rec.counters.get('missing_in_neo4j')} sampled ids missing in the graph")
    return 0


if __name__ == "__main__":
    sys.exit(main())
