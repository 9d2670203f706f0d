"""The named queries of webhookd/store/sql/<dialect>/queries.sql, for both engines.

A file is sections headed "-- name: X"; both dialects use the same name for the same
operation. State names are never written in SQL: `{PENDING}` stands for 'pending' (every
Status of webhookd/states.py likewise), `{SOURCES_CLAIM}` for the parenthesised states an
Event applies to (every Event likewise), `{FIFO}` and `{NONE}` for a webhook's ordering;
an engine adds fragments of its own (its `{MATCHES}`), and a section named in capitals
is a fragment the others use as `{NAME}`. Each is substituted once, when the file is
loaded, and a placeholder left over is an error then, not at run time. A lowercase
`{name}` is a hole the engine fills at run time with text it composes (the SET list of a
webhook patch, update_webhook), and the only text of a statement not in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

from webhookd.states import Event, Status, sources
from webhookd.store.base import Ordering

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{[A-Z_]+\}")


def quoted(values: tuple[str, ...]) -> str:
    """A parenthesised list of SQL strings: ('pending', 'inflight')."""
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def names() -> dict[str, str]:
    """What the placeholders common to both dialects stand for."""
    found = {f"{{{s.name}}}": f"'{s.value}'" for s in Status}
    found.update({f"{{SOURCES_{e.name}}}": quoted(sources(e)) for e in Event if sources(e)})
    found.update({f"{{{o.name}}}": f"'{o.value}'" for o in Ordering})
    return found


def load(
    dialect: str, fragments: Mapping[str, str] | None = None, *, comments: bool = True
) -> dict[str, str]:
    """Every query of sql/<dialect>/queries.sql by name, placeholders substituted, and
    without its comment lines unless `comments`."""
    text = (
        resources.files("webhookd.store")
        .joinpath("sql", dialect, "queries.sql")
        .read_text(encoding="utf-8")
    )
    substitutions = names()
    substitutions.update({f"{{{k}}}": v for k, v in (fragments or {}).items()})
    parts = _NAME.split(text)
    sections = list(zip(parts[1::2], parts[2::2], strict=True))
    # A section named in capitals is a fragment, written into the others as {NAME}: a
    # rule that runs inside a statement, kept where a test can run it alone.
    for name, sql in sections:
        if name.isupper():
            substitutions[f"{{{name}}}"] = _without_comments(sql).strip().rstrip(";")
    found: dict[str, str] = {}
    for name, sql in sections:
        if name in found:
            raise ValueError(f"{dialect}/queries.sql: {name!r} defined twice")
        for _ in range(2):  # a fragment may hold placeholders of its own
            for placeholder, value in substitutions.items():
                sql = sql.replace(placeholder, value)
        left = _PLACEHOLDER.search(sql)
        if left is not None:
            raise ValueError(f"{dialect}/queries.sql: {name!r} has unknown {left.group()}")
        if not comments:
            sql = _without_comments(sql)
        found[name] = sql.strip().rstrip(";")
    return found


def _without_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
