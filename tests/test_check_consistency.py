"""check-consistency against real PostgreSQL and FalkorDB speaking Bolt (the stand-in for
Neo4j, through the official neo4j driver)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from novajobs.errors import Outcome
from novajobs.records import status_key
from novajobs.runner import run_job
from novajobs_dev.netfaults import refused_port


class Graph:
    """Test-side access to the FalkorDB graph. FalkorDB's Bolt listener lets every other
    fresh connection hang at the handshake, so calls are retried; and it crashes on
    requests over ~4 KB, so nodes are created in small batches."""

    def __init__(self, uri: str) -> None:
        import neo4j

        self.driver = neo4j.GraphDatabase.driver(uri, auth=("falkordb", ""),
                                                 connection_timeout=1,
                                                 connection_acquisition_timeout=2)

    def run(self, query: str, **params: Any) -> list[dict[str, Any]]:
        from neo4j.exceptions import ServiceUnavailable, SessionExpired

        for attempt in range(8):
            try:
                with self.driver.session() as session:
                    return [r.data() for r in session.run(query, params)]
            except (ServiceUnavailable, SessionExpired):
                if attempt == 7:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def add_users(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 100):
            self.run("UNWIND $ids AS id CREATE (:User {id: id})", ids=ids[start:start + 100])

    def clear(self) -> None:
        self.run("MATCH (u:User) DELETE u")


@pytest.fixture(scope="module")
def graph_driver(neo4j_server: None, stack: Any) -> Iterator[Graph]:
    graph = Graph(stack.env()["NEO4J_URI"])
    yield graph
    graph.driver.close()


@pytest.fixture
def graph(graph_driver: Graph) -> Iterator[Graph]:
    # Bolt ignores the database name on FalkorDB: every test shares one graph.
    graph_driver.clear()
    yield graph_driver
    graph_driver.clear()


@pytest.fixture
def users(pg: Any, pg_tables: Any) -> Any:
    pg_tables("users")

    def add(ids: list[int]) -> None:
        with pg.cursor() as cur:
            cur.executemany("INSERT INTO users (id) VALUES (%s)", [(i,) for i in ids])

    return add


@pytest.fixture
def check_settings(make_settings: Any, redis_server: None) -> Any:
    def make(**overrides: Any) -> Any:
        # A 1 s connect timeout keeps FalkorDB's handshake hangs short; 100 ids per
        # lookup stays under the request size FalkorDB survives (Neo4j takes 1000 fine).
        return make_settings(connect_timeout_sec=1, consistency_lookup_batch=100, **overrides)

    return make


def test_equal_counts_are_consistent(graph, users, check_settings):
    users(list(range(1, 501)))
    graph.add_users(list(range(1, 501)))

    rec = run_job("check-consistency", check_settings())

    assert rec.outcome is Outcome.SUCCESS and rec.exit_code == 0, rec.error
    assert rec.message == ("PostgreSQL users 500, Neo4j :User nodes 500: difference 0 "
                           "(0.000%, tolerance 0.100%): within tolerance")
    assert rec.counters == {"postgres_users": 500, "neo4j_users": 500, "difference": 0}


def test_a_difference_within_the_tolerance_passes(graph, users, check_settings):
    users(list(range(1, 2001)))
    graph.add_users(list(range(1, 2000)))  # one missing: 0.05 %

    default = run_job("check-consistency", check_settings())
    strict = run_job("check-consistency", check_settings(consistency_tolerance_percent=0.01))

    assert default.outcome is Outcome.SUCCESS, default.error
    assert "difference 1 (0.050%, tolerance 0.100%): within tolerance" in default.message
    assert strict.outcome is Outcome.PROBLEM_FOUND
    assert strict.message.endswith("difference 1 (0.050%, tolerance 0.010%): beyond tolerance")


def test_beyond_the_tolerance_exits_3_records_and_alerts(graph, users, cli, webhook_receiver,
                                                         redis_client, names):
    users(list(range(1, 1001)))
    graph.add_users(list(range(1, 991)))

    done = cli("check-consistency", "--json", "--log-format", "json", "-s", "connect_timeout_sec=1",
               extra_env={"NOVAJOBS_ALERT_WEBHOOK_URL": webhook_receiver.url})

    assert done.returncode == 3, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "problem_found"
    assert result["message"] == ("PostgreSQL users 1000, Neo4j :User nodes 990: difference 10 "
                                 "(1.000%, tolerance 0.100%): beyond tolerance")
    assert result["details"]["difference"] == 10
    [alert] = webhook_receiver.bodies
    assert alert["novajobs"]["kind"] == "problem"
    assert "PostgreSQL users 1000, Neo4j :User nodes 990" in alert["text"]
    status = redis_client.hgetall(status_key(names["prefix"], "check-consistency"))
    assert status[b"outcome"] == b"problem_found" and status[b"exit_code"] == b"3"


@pytest.mark.parametrize(("in_pg", "in_graph", "outcome"), [
    (0, 0, Outcome.SUCCESS),
    (0, 5, Outcome.PROBLEM_FOUND),
    (5, 0, Outcome.PROBLEM_FOUND),
])
def test_empty_sides(graph, users, check_settings, in_pg, in_graph, outcome):
    users(list(range(1, in_pg + 1)))
    graph.add_users(list(range(1, in_graph + 1)))

    rec = run_job("check-consistency", check_settings())

    assert rec.outcome is outcome, rec.error
    assert rec.counters["postgres_users"] == in_pg and rec.counters["neo4j_users"] == in_graph
    share = "0.000%" if in_pg == in_graph else "100.000%"
    assert f"difference {abs(in_pg - in_graph)} ({share}," in rec.message


def test_the_sample_names_exactly_the_missing_ids(graph, users, check_settings):
    users([i for i in range(1, 301) if i not in (7, 150)])
    graph.add_users([i for i in range(1, 301) if i != 42] + [1001, 1002])

    # Counts alone: 298 vs 301, 1 % -- but a sample of everything names each id.
    rec = run_job("check-consistency", check_settings(consistency_sample_size=1000))

    assert rec.outcome is Outcome.PROBLEM_FOUND, rec.error
    sample = rec.details["sample"]
    assert sample["missing_in_neo4j"] == [42]
    assert sample["missing_in_postgres"] == [7, 150, 1001, 1002]
    assert sample["sampled_postgres"] == 298 and sample["sampled_neo4j"] == 301
    assert rec.counters["missing_in_neo4j"] == 1 and rec.counters["missing_in_postgres"] == 4
    assert ("sample of 298 + 301 ids: 1 missing in Neo4j (42), "
            "4 missing in PostgreSQL (7, 150, 1001, 1002)") in rec.message


def test_a_small_sample_names_only_truly_missing_ids(graph, users, check_settings):
    missing_in_graph = set(range(1, 401, 4))  # every 4th user never reached Neo4j
    users(list(range(1, 401)))
    graph.add_users([i for i in range(1, 401) if i not in missing_in_graph])

    rec = run_job("check-consistency", check_settings(consistency_sample_size=120))

    sample = rec.details["sample"]
    assert sample["sampled_postgres"] == 120 and sample["sampled_neo4j"] == 120
    assert sample["missing_in_neo4j"] and set(sample["missing_in_neo4j"]) <= missing_in_graph
    assert sample["missing_in_postgres"] == []


def test_same_counts_but_different_ids_are_caught_by_the_sample(graph, users, check_settings):
    users(list(range(1, 201)))
    graph.add_users([*range(1, 200), 5000])  # 200 each, one id swapped

    counts_only = run_job("check-consistency", check_settings())
    sampled = run_job("check-consistency", check_settings(consistency_sample_size=500))

    assert counts_only.outcome is Outcome.SUCCESS
    assert sampled.outcome is Outcome.PROBLEM_FOUND
    assert sampled.details["sample"]["missing_in_neo4j"] == [200]
    assert sampled.details["sample"]["missing_in_postgres"] == [5000]


def test_neo4j_down_is_unavailable_not_a_problem(users, cli, webhook_receiver):
    users([1, 2, 3])
    dead = refused_port()
    done = cli("check-consistency", "--json", extra_env={
        "NEO4J_URI": f"bolt://127.0.0.1:{dead}", "NOVAJOBS_CONNECT_TIMEOUT_SEC": "1",
        "NOVAJOBS_ALERT_WEBHOOK_URL": webhook_receiver.url})

    assert done.returncode == 69, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "unavailable"
    assert result["error"].startswith("ServiceUnavailable")
    assert [a["novajobs"]["kind"] for a in webhook_receiver.bodies] == ["failure"]


def test_a_missing_users_table_is_a_configuration_error(pg, graph, check_settings):
    rec = run_job("check-consistency", check_settings())

    assert rec.outcome is Outcome.CONFIG_ERROR and rec.exit_code == 78
    assert rec.error == ("table users does not exist in this database (it belongs to another "
                         "service: check DATABASE_URL and its search_path)")


def test_neo4j_uri_schemes_are_checked_up_front(cli):
    done = cli("check-consistency", extra_env={"NEO4J_URI": "http://127.0.0.1:7474"})

    assert done.returncode == 78
    assert "setting neo4j_uri (env NEO4J_URI) must be a URL starting with bolt://" in done.stderr
