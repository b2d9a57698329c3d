"""check-consistency: PostgreSQL ``users`` against Neo4j ``(:User {id})`` nodes.

The counts of both sides are compared; their difference relative to the larger count
beyond the tolerance is a problem (exit 3, alert). With a sample size, that many random
ids are also drawn from each side and looked up on the other in batches (one
``UNWIND`` query per batch, one ``= ANY`` query per batch), naming the ids missing; the
share of sampled ids missing is held to the same tolerance, which catches the case the
counts cannot: as many ids missing on one side as extra ones on it.

An unreachable or refusing Neo4j is the run's failure ("unavailable", exit 69 — the
driver's connection errors are transient ones, retried first), never "problem found":
nothing was compared. The two counts are read one after the other, not at one instant:
users created in between show up as a difference, which is what the tolerance is for.
"""

from __future__ import annotations

from typing import Any

from novajobs.context import JobContext, Result
from novajobs.conversions import batched
from novajobs.errors import ConfigError, Outcome
from novajobs.pgsession import open_session, pg_errors
from novajobs.schema import require_tables

COUNT_USERS = "SELECT count(*) FROM users"
SAMPLE_USERS = """
SELECT id
FROM users
ORDER BY random()
LIMIT %(n)s
"""
FIND_USERS = """
SELECT id
FROM users
WHERE id = ANY(%(ids)s)
"""

COUNT_NODES = "MATCH (u:User) RETURN count(u) AS n"
SAMPLE_NODES = "MATCH (u:User) RETURN u.id AS id ORDER BY rand() LIMIT $n"
FIND_NODES = """
UNWIND $ids AS id
MATCH (u:User {id: id})
RETURN DISTINCT u.id AS id
"""

SHOWN_IDS = 20  # ids named in the message and log line (all are in the details)


def run(ctx: JobContext) -> Result:
    s = ctx.settings
    pg = open_session(ctx)
    require_tables(pg, read=("users",))
    pg_count = pg_rows(ctx, pg, COUNT_USERS)[0][0]
    neo_count = cypher(ctx, COUNT_NODES, "count Neo4j :User nodes")[0]["n"]
    diff, share = abs(pg_count - neo_count), relative(pg_count, neo_count)
    tolerance = s.consistency_tolerance_percent / 100
    ctx.count("postgres_users", pg_count)
    ctx.count("neo4j_users", neo_count)
    ctx.count("difference", diff)
    problems = []
    if share > tolerance:
        problems.append("counts")
    message = (
        f"PostgreSQL users {pg_count}, Neo4j :User nodes {neo_count}: difference {diff} "
        f"({share:.3%}, tolerance {tolerance:.3%})"
    )
    details: dict[str, Any] = {"postgres_users": pg_count, "neo4j_users": neo_count,
                               "difference": diff, "difference_share": share,
                               "tolerance_share": tolerance}
    if s.consistency_sample_size:
        sample = compare_sample(ctx, pg, s.consistency_sample_size)
        details["sample"] = sample
        message += "; " + describe_sample(sample)
        if sample_share(sample) > tolerance:
            problems.append("sample")
    ctx.log.info("users compared", postgres_users=pg_count, neo4j_users=neo_count,
                 difference=diff, difference_percent=round(share * 100, 4),
                 tolerance_percent=s.consistency_tolerance_percent)
    if problems:
        return Result(Outcome.PROBLEM_FOUND, f"{message}: beyond tolerance", details)
    return Result(Outcome.SUCCESS, f"{message}: within tolerance", details)


def relative(a: int, b: int) -> float:
    """|a - b| relative to the larger of the two (0 when both are 0)."""
    larger = max(a, b)
    return abs(a - b) / larger if larger else 0.0


# -- the sample -----------------------------------------------------------------------


def compare_sample(ctx: JobContext, pg: Any, n: int) -> dict[str, Any]:
    pg_ids = [row[0] for row in pg_rows(ctx, pg, SAMPLE_USERS, {"n": n})]
    raw_nodes = [row["id"] for row in cypher(ctx, SAMPLE_NODES, "sample Neo4j :User ids", n=n)]
    node_ids = [i for i in (as_id(v) for v in raw_nodes) if i is not None]
    bad = [repr(v) for v in raw_nodes if as_id(v) is None]
    missing_in_neo4j = sorted(set(pg_ids) - found_in_neo4j(ctx, pg_ids))
    missing_in_postgres = sorted(set(node_ids) - found_in_postgres(ctx, pg, node_ids))
    ctx.count("sampled_postgres", len(pg_ids))
    ctx.count("sampled_neo4j", len(raw_nodes))
    ctx.count("missing_in_neo4j", len(missing_in_neo4j))
    ctx.count("missing_in_postgres", len(missing_in_postgres))
    if bad:
        ctx.count("neo4j_bad_ids", len(bad))
        ctx.log.warning(":User nodes without an integer id", examples=bad[:SHOWN_IDS])
    if missing_in_neo4j or missing_in_postgres:
        ctx.log.warning("sampled ids missing on the other side",
                        missing_in_neo4j=missing_in_neo4j[:SHOWN_IDS],
                        missing_in_postgres=missing_in_postgres[:SHOWN_IDS])
    return {"sampled_postgres": len(pg_ids), "sampled_neo4j": len(raw_nodes),
            "missing_in_neo4j": missing_in_neo4j, "missing_in_postgres": missing_in_postgres,
            "neo4j_bad_ids": bad}


def sample_share(sample: dict[str, Any]) -> float:
    sampled = sample["sampled_postgres"] + sample["sampled_neo4j"]
    missing = (len(sample["missing_in_neo4j"]) + len(sample["missing_in_postgres"])
               + len(sample["neo4j_bad_ids"]))
    return missing / sampled if sampled else 0.0


def describe_sample(sample: dict[str, Any]) -> str:
    text = (f"sample of {sample['sampled_postgres']} + {sample['sampled_neo4j']} ids: "
            f"{_ids('missing in Neo4j', sample['missing_in_neo4j'])}, "
            f"{_ids('missing in PostgreSQL', sample['missing_in_postgres'])}")
    if sample["neo4j_bad_ids"]:
        text += f", {len(sample['neo4j_bad_ids'])} nodes without an integer id"
    return text


def _ids(label: str, ids: list[int]) -> str:
    if not ids:
        return f"0 {label}"
    shown = ", ".join(map(str, ids[:SHOWN_IDS])) + (", ..." if len(ids) > SHOWN_IDS else "")
    return f"{len(ids)} {label} ({shown})"


def as_id(value: Any) -> int | None:
    """A node's id as an integer (ids stored as numeric strings count), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def found_in_neo4j(ctx: JobContext, ids: list[int]) -> set[int]:
    found: set[int] = set()
    for chunk in batched(ids, ctx.settings.consistency_lookup_batch):
        rows = cypher(ctx, FIND_NODES, "look up ids in Neo4j", ids=chunk)
        found.update(i for i in (as_id(r["id"]) for r in rows) if i is not None)
    return found


def found_in_postgres(ctx: JobContext, pg: Any, ids: list[int]) -> set[int]:
    found: set[int] = set()
    for chunk in batched(ids, ctx.settings.consistency_lookup_batch):
        found.update(row[0] for row in pg_rows(ctx, pg, FIND_USERS, {"ids": chunk}))
    return found


# -- the stores -----------------------------------------------------------------------


def pg_rows(ctx: JobContext, conn: Any, query: str, params: dict[str, Any] | None = None
            ) -> list[Any]:
    """Rows of a read query on the job's autocommit session (no transaction left open)."""
    with pg_errors(ctx.job):
        return ctx.retry(lambda: conn.execute(query, params).fetchall(),
                         "query PostgreSQL users")


def cypher(ctx: JobContext, query: str, what: str, **params: Any) -> list[dict[str, Any]]:
    """Run one read query in its own session, retried on the driver's transient errors."""
    from neo4j.exceptions import AuthError

    def call() -> list[dict[str, Any]]:
        with ctx.neo4j.session() as session:
            return [record.data() for record in session.run(query, params)]

    try:
        return ctx.retry(call, what)
    except AuthError as exc:
        raise ConfigError(f"Neo4j refused the credentials of neo4j_username ({exc.message})") \
            from None
