"""Elasticsearch fixtures shared by the index jobs' tests (forcemerge, expire)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

DAY_MS = 86_400_000


@pytest.fixture
def es(es_server: None, stack: Any, names: dict[str, str]) -> Iterator[Any]:
    """A client of the emulator; the test's indices (``p`` prefix) are deleted afterwards."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(stack.env()["ELASTICSEARCH_URL"], request_timeout=30)
    yield client
    mine = client.cat.indices(index=f"{names['schema']}-*", format="json", h="index",
                              expand_wildcards="open,closed")
    if mine:  # the emulator refuses wildcard deletes
        client.indices.delete(index=",".join(row["index"] for row in mine))
    client.close()


@pytest.fixture
def p(names: dict[str, str]) -> str:
    """This test's index name prefix."""
    return f"{names['schema']}-"


def make_index(es: Any, name: str, age_days: float = 10, docs: int = 2,
               aliases: dict[str, Any] | None = None) -> None:
    created = int(time.time() * 1000 - age_days * DAY_MS)
    es.indices.create(index=name, settings={"index.creation_date": created},
                      aliases=aliases or None)
    for n in range(docs):
        es.index(index=name, document={"n": n, "msg": "hello"}, refresh=True)
