"""The named queries of both dialects: state names come from webhookd/states.py only."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from webhookd.states import Status
from webhookd.store.base import Ordering
from webhookd.store.duckdb import queries as duckdb_queries
from webhookd.store.postgres import queries as postgres_queries

DIALECTS = ("postgresql", "duckdb")


def raw(dialect: str) -> str:
    return (
        resources.files("webhookd.store")
        .joinpath("sql", dialect, "queries.sql")
        .read_text(encoding="utf-8")
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_state_literal_in_queries_sql(dialect: str) -> None:
    """A state or an ordering is written {PENDING}, {FIFO}: a literal would not follow
    states.py if a name changed there."""
    names = [s.value for s in Status] + [o.value for o in Ordering]
    found = re.findall(r"'(" + "|".join(names) + r")'", raw(dialect))
    assert found == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_placeholders_become_the_names_of_states_py(dialect: str) -> None:
    engine = {"postgresql": postgres_queries, "duckdb": duckdb_queries}[dialect]
    loaded = engine.queries()
    text = "\n".join(loaded.values())
    assert f"'{Status.PENDING}'" in text and f"'{Status.INFLIGHT}'" in text
    assert not re.search(r"\{[A-Z_]+\}", text)
