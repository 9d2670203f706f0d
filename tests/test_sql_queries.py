"""The named queries of both dialects: state names come from webhookd/states.py only."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path

import pytest

import webhookd
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


# -- one name per operation, every statement in the files ------------------------------

ENGINES = {"postgresql": "postgres", "duckdb": "duckdb"}
PACKAGE = Path(webhookd.__file__).parent / "store"
# The modules of the webhook and operator functions, on each engine.
ADMIN_PATH = ("admin.py", "operational.py", "tenant_tokens.py")
# The names the admin path of one engine uses that the other has no use for. Every other
# name it uses must exist in both dialects, for the same operation.
ONE_DIALECT = {
    "duckdb": {
        # PostgreSQL's fifo_blocked finds the head's first failure in the same statement.
        "fifo_blocked_since",
        # DuckDB's replay scans up to the event first and counts what that scan enqueued;
        # PostgreSQL's inserts with ON CONFLICT, which the scanner then finds taken.
        "replay_pending",
        # DuckDB enqueues an operational event in the transaction that writes it and moves
        # the scan cursor past it; PostgreSQL's scanner enqueues it like any other event.
        "operational_enqueue",
        "operational_seqs",
        "scan_cursor",
        "scan_advance",
    },
    "postgresql": {
        # Only on PostgreSQL do producers write events in SQL, with no body until one is
        # built (replay builds and stores it) or the scanner sets the event aside.
        "replay_body",
        "status_rejected",
    },
}


def loaded(dialect: str) -> dict[str, str]:
    engine = {"postgresql": postgres_queries, "duckdb": duckdb_queries}[dialect]
    return {name: sql for name, sql in engine.queries().items() if not name.isupper()}


def strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module but its docstrings (f-strings: their fixed parts),
    with their lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def used(dialect: str, modules: tuple[str, ...] | None = None) -> set[str]:
    """The query names an engine's modules name (`query("claim")`, or a name handed to a
    helper that runs it: `_set_due(con, "enable", ...)`)."""
    names = loaded(dialect)
    folder = PACKAGE / ENGINES[dialect]
    paths = [folder / m for m in modules] if modules else sorted(folder.glob("*.py"))
    return {value for path in paths for _, value in strings(path) if value in names}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_name_a_module_asks_for_is_in_its_file(dialect: str) -> None:
    """A query("...") of a name the file lacks fails at run time only: here at once."""
    folder = PACKAGE / ENGINES[dialect]
    asked = {
        (path.name, name)
        for path in folder.glob("*.py")
        for name in re.findall(r"\bquery\(\s*\"(\w+)\"", path.read_text(encoding="utf-8"))
    }
    assert asked, "no query(...) found: the pattern no longer matches the engine's calls"
    assert sorted((m, n) for m, n in asked if n not in loaded(dialect)) == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_admin_path_names_its_statements_alike_in_both_dialects(dialect: str) -> None:
    """Every statement of the webhook and operator functions has one name in both files,
    but those ONE_DIALECT lists (and says why)."""
    other = "duckdb" if dialect == "postgresql" else "postgresql"
    names = used(dialect, ADMIN_PATH)
    assert {"get_webhook", "list_deliveries", "redrive", "replay"} <= names
    assert sorted(names - set(loaded(other)) - ONE_DIALECT[dialect]) == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_list_of_names_in_one_dialect_only_is_true(dialect: str) -> None:
    """A name of ONE_DIALECT that both files have by now, or that the engine no longer
    uses, leaves the list."""
    other = "duckdb" if dialect == "postgresql" else "postgresql"
    assert sorted(ONE_DIALECT[dialect] & set(loaded(other))) == []
    assert sorted(ONE_DIALECT[dialect] - used(dialect, ADMIN_PATH)) == []


# A statement in a string: its verb and what follows it in SQL (an UPDATE ... SET, a
# DELETE FROM), uppercase as the engines write SQL, so a word in a message is not one.
STATEMENT = re.compile(
    r"\bSELECT\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+(\s+(AS\s+)?\w+)?\s+SET\b|\bDELETE\s+FROM\b"
)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_engine_module_writes_sql_of_its_own(dialect: str) -> None:
    """Every statement of an engine is a named query of its queries.sql; migrate.py alone
    keeps its few (it runs before the schema, and the file, apply)."""
    folder = PACKAGE / ENGINES[dialect]
    inline = [
        f"{path.name}:{line}: {value.strip()[:60]!r}"
        for path in sorted(folder.glob("*.py"))
        if path.name != "migrate.py"
        for line, value in strings(path)
        if STATEMENT.search(value)
    ]
    assert inline == []


def test_the_scan_for_inline_sql_sees_a_statement() -> None:
    """The scan above would see a statement written in a module (an f-string's fixed part
    included), and not a docstring that names one."""
    sample = PACKAGE.parent.parent / "tests" / "test_sql_queries.py"
    assert STATEMENT.search("UPDATE webhooks SET active = false")
    assert STATEMENT.search("UPDATE webhook_delivery_queue q SET status = $1")
    assert STATEMENT.search("DELETE FROM daemons WHERE daemon_id = $1")
    assert not STATEMENT.search("the row is read FOR UPDATE, then updated")
    assert any(STATEMENT.search(v) for _, v in strings(sample) if v.startswith("UPDATE web"))
