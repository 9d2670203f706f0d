"""The API owns its page cursors: the store takes and returns typed keys, never a cursor."""

from __future__ import annotations

import ast
from datetime import datetime
from pathlib import Path

import pytest

from webhookd.api.cursors import delivery_cursor, parse_delivery_cursor

ROOT = Path(__file__).resolve().parent.parent / "webhookd"


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_module_of_the_store_makes_or_reads_a_cursor() -> None:
    for path in (ROOT / "store").rglob("*.py"):
        names = imported_names(path)
        assert "base64" not in names, path
        assert not [n for n in names if "cursor" in n.rsplit(".", 1)[-1]], path


def test_the_api_models_parse_cursors_without_the_store() -> None:
    names = imported_names(ROOT / "api" / "models.py")
    assert not [n for n in names if n.startswith("webhookd.store.records")]


def test_a_delivery_cursor_round_trips_and_refuses_what_it_did_not_make() -> None:
    key = (datetime(2026, 1, 2, 3, 4, 5, 6), "wh_1", "evt_1")
    assert parse_delivery_cursor(delivery_cursor(key)) == key
    with pytest.raises(ValueError):
        parse_delivery_cursor("not-a-cursor")
