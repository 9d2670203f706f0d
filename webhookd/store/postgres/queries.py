"""The named queries of webhookd/store/sql/postgresql/queries.sql ("-- name: X" sections)."""

from __future__ import annotations

import functools
import re
from importlib import resources

from webhookd.store.postgres.common import MATCHES

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@functools.cache
def queries() -> dict[str, str]:
    text = (
        resources.files("webhookd.store")
        .joinpath("sql", "postgresql", "queries.sql")
        .read_text(encoding="utf-8")
    )
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, sql in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise ValueError(f"queries.sql: {name!r} defined twice")
        found[name] = sql.replace("{MATCHES}", MATCHES).strip().rstrip(";")
    return found


def query(name: str) -> str:
    return queries()[name]
