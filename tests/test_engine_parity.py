"""The same requests to a daemon on DuckDB and to one on PostgreSQL get the same answers.

Two real daemons run side by side (each in this process, with its own engine); every
request goes to both, and the test compares what they answer: the status, the error
code, the JSON body with generated ids and times replaced by placeholders; and, for
what they deliver, the exact bytes and the webhook-id each receiver gets. The inputs are
the ones engines disagree on: numbers written 1, 1.0 and 1e2, keys in any order,
unicode, deep nesting, 100 KB strings, bad input of every kind, and thousands of
deliveries paged through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, make_settings, running
from tests.receivers import Recorder
from tests.test_ordering_and_limits import database

ENGINES = ("duckdb", "postgresql")
DEADLINE = 60.0  # bounds waits only a broken daemon runs into
OCCURRED = "2026-01-02T03:04:05.678901Z"

Answer = tuple[int, Any]

GENERATED = re.compile(r"\b(?:evt|wh|tok)_[0-9a-f]{16,32}\b")
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")


# Counters of the engine's own work in /v1/status (its transactions), not answers.
ENGINE_OWN = frozenset({"writer"})


def normal(value: Any) -> Any:
    """`value` with what each daemon makes up for itself (ids, secrets, times) replaced."""
    if isinstance(value, dict):
        return {
            k: "<secret>" if k == "secret" and v else normal(v)
            for k, v in sorted(value.items())
            if k not in ENGINE_OWN
        }
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, str):
        return INSTANT.sub("<time>", GENERATED.sub("<id>", value))
    return value


def _sorted(answer: Answer) -> Answer:
    status, body = answer
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        items = sorted(body["items"], key=lambda i: json.dumps(normal(i), sort_keys=True))
        body = {**body, "items": items}
    return status, body


def _difference(duck: Answer, pg: Answer) -> str:
    """Where two answers differ, briefly: the status, or the paths whose values differ."""
    if duck[0] != pg[0]:
        return f"duckdb {duck!r:.300}, postgresql {pg!r:.300}"
    found: list[str] = []

    def walk(a: Any, b: Any, at: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{at}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{at}[{i}]")
        elif a != b:
            found.append(f"{at}: duckdb {a!r:.120}, postgresql {b!r:.120}")

    walk(normal(duck[1]), normal(pg[1]), "")
    return "; ".join(found)


class Pair:
    """Both daemons' APIs; `send` asks both the same and keeps any difference."""

    def __init__(self, apis: dict[str, Api]) -> None:
        self.apis = apis
        self.differences: list[str] = []

    async def send(
        self,
        label: str,
        method: str,
        path: str | dict[str, str],
        body: Any = None,
        *,
        raw: bytes | None = None,
        unordered: bool = False,
    ) -> dict[str, Answer]:
        """`path`: the same for both, or each engine's own (a webhook's id differs).
        `unordered`: a list in the order of ids each daemon drew at random."""
        answers = {
            engine: await api.request(
                method, path if isinstance(path, str) else path[engine], body, raw=raw
            )
            for engine, api in self.apis.items()
        }
        duck, pg = (_sorted(answers[e]) if unordered else answers[e] for e in ENGINES)
        if (duck[0], normal(duck[1])) != (pg[0], normal(pg[1])):
            self.differences.append(f"{label}: {_difference(duck, pg)}")
        return answers

    async def post_event(self, label: str, raw: bytes) -> dict[str, Answer]:
        return await self.send(label, "POST", "/v1/events", raw=raw)


@contextlib.asynccontextmanager
async def daemons(
    request: pytest.FixtureRequest, tmp_path: Path, **overrides: Any
) -> AsyncIterator[Pair]:
    async with contextlib.AsyncExitStack() as stack:
        apis: dict[str, Api] = {}
        for engine in ENGINES:
            home = tmp_path / engine
            home.mkdir()
            settings = make_settings(home, database=database(engine, request), **overrides)
            running_daemon = await stack.enter_async_context(running(settings))
            apis[engine] = await stack.enter_async_context(Api(running_daemon.url))
        yield Pair(apis)


def event(event_id: str, data_json: str, *, event_type: str = "t") -> bytes:
    """An event's JSON with `data` written exactly as given (json.dumps would rewrite it)."""
    head = json.dumps({"id": event_id, "type": event_type, "occurred_at": OCCURRED})
    return (head[:-1] + f', "data": {data_json}}}').encode()


NUMBERS = {
    "one": "1",
    "one point zero": "1.0",
    "one e two": "1e2",
    "one E plus two": "1E+2",
    "hundred": "100",
    "minus zero": "-0",
    "minus zero point zero": "-0.0",
    "a tenth": "0.1",
    "small": "1.5e-7",
    "beyond int64": "12345678901234567890",
    "beyond a double's integers": "9007199254740993",
    "largest double": "1.7976931348623157e308",
    "many digits": "3.141592653589793238462643383279",
    "zero e zero": "0e0",
}

TEXTS = {
    "accents": '"caf\\u00e9 é"',
    "cjk": '"日本語のテキスト"',
    "emoji raw": '"😀 🎉"',
    "emoji escaped as a surrogate pair": '"\\ud83d\\ude00"',
    "line and paragraph separators": '"a\\u2028b\\u2029c"',
    "nul": '"a\\u0000b"',
    "control characters": '"\\t\\n\\r\\u0001\\u001f"',
    "escaped slash and quotes": '"\\/ \\" \\\\"',
    "unicode keys": '{"ключ": 1, "é": 2, "😀": 3}',
    "100 KB string": '"' + "x" * 100_000 + '"',
    "100 KB of multibyte": '"' + "é" * 50_000 + '"',
}

SHAPES = {
    "keys in order": '{"a": 1, "b": {"c": 2, "d": [3, {"e": 4, "f": 5}]}}',
    "nested 64 deep": "[" * 64 + "1" + "]" * 64,
    "nested 500 deep": '{"k": ' * 500 + "null" + "}" * 500,
    "empty object": "{}",
    "empty list": "[]",
    "null": "null",
    "booleans": "[true, false]",
    "a bare string": '"s"',
    "a bare number": "7",
}

BAD = {
    "bad json": b'{"type": "t", "data": ',
    "not utf-8": b'{"type": "t", "data": "\xff"}',
    "type a number": b'{"type": 5, "data": {}}',
    "data missing": b'{"type": "t"}',
    "id a number": b'{"id": 5, "type": "t", "data": {}}',
    "id empty": b'{"id": "", "type": "t", "data": {}}',
    "id with a newline": b'{"id": "a\\nb", "type": "t", "data": {}}',
    "id with a tab": b'{"id": "a\\tb", "type": "t", "data": {}}',
    "id with DEL": b'{"id": "a\\u007fb", "type": "t", "data": {}}',
    "id with a nul": b'{"id": "a\\u0000b", "type": "t", "data": {}}',
    "id with C1 control": b'{"id": "a\\u0085b", "type": "t", "data": {}}',
    "id non-ASCII": b'{"id": "\\u00e9v\\u00e9nement", "type": "t", "data": {}}',
    "id too long": b'{"id": "' + b"i" * 300 + b'", "type": "t", "data": {}}',
    "type with a newline": b'{"type": "a\\nb", "data": {}}',
    "unknown field": b'{"type": "t", "data": {}, "colour": "red"}',
    "occurred_at not a time": b'{"type": "t", "data": {}, "occurred_at": "soon"}',
    "NaN": b'{"type": "t", "data": NaN}',
    "number beyond a float": b'{"type": "t", "data": 1e999}',
    "lone surrogate": b'{"type": "t", "data": "\\ud800"}',
    "duplicate key": b'{"type": "t", "data": {"n": 1, "n": 2}}',
    "nested too deeply": b'{"type": "t", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "empty list": b"[]",
    "a list with one bad event": b'[{"type": "t", "data": 1}, {"type": 2, "data": 1}]',
    "oversize": b'{"type": "t", "data": "' + b"x" * 1_100_000 + b'"}',
}


async def test_events_get_the_same_answers_and_bytes_on_both_engines(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with Recorder(status=204) as rx, daemons(request, tmp_path) as pair:
        for engine, api in pair.apis.items():
            await api.create_webhook(rx.url_for(f"/{engine}"))
        accepted: list[str] = []
        cases = [("n", NUMBERS), ("u", TEXTS), ("s", SHAPES)]
        for prefix, table in cases:
            for n, (label, data) in enumerate(table.items()):
                event_id = f"{prefix}{n}"
                answers = await pair.post_event(label, event(event_id, data))
                if all(status == 202 for status, _ in answers.values()):
                    accepted.append(event_id)
                # The same again, byte for byte: accepted, nothing new.
                await pair.post_event(f"{label} (again)", event(event_id, data))
        # The same content with its keys in another order and other white space.
        await pair.post_event(
            "keys reordered", event("s0", '{"b":{"d":[3,{"f":5,"e":4}],"c":2},"a":1}')
        )
        # Other content under an id already stored.
        await pair.post_event("other content", event("s0", '{"a": 2}'))
        await pair.post_event("other type", event("s0", SHAPES["keys in order"], event_type="u"))
        for label, raw in BAD.items():
            await pair.post_event(label, raw)
        # The tenant is part of the event: the same id under another tenant is a conflict.
        acme = {"id": "t1", "type": "t", "data": {"a": 1}, "tenant": "acme"}
        await pair.send("a tenant's event", "POST", "/v1/events", acme)
        await pair.send("a tenant's event again", "POST", "/v1/events", acme)
        await pair.send("another tenant", "POST", "/v1/events", {**acme, "tenant": "other"})
        await pair.send(
            "no tenant", "POST", "/v1/events", {k: v for k, v in acme.items() if k != "tenant"}
        )
        await pair.send("a bad tenant", "POST", "/v1/events", {**acme, "id": "t2", "tenant": "a b"})
        # A list: all or nothing.
        both = b"[" + event("l1", "1") + b", " + event("l2", "2") + b"]"
        await pair.post_event("a list of two", both)
        accepted += ["l1", "l2"]
        await pair.send("an event without an id", "POST", "/v1/events", {"type": "t", "data": 1})
        assert pair.differences == [], "\n".join(pair.differences)

        # What each receiver got: the same bytes for the same event.
        end = time.monotonic() + DEADLINE
        while True:
            got = {e: _bodies(rx, f"/{e}") for e in ENGINES}
            if all(set(accepted) <= set(g) for g in got.values()):
                break
            assert time.monotonic() < end, {
                e: sorted(set(accepted) - set(g)) for e, g in got.items()
            }
            await asyncio.sleep(0.05)
        unequal = [e for e in accepted if got["duckdb"][e] != got["postgresql"][e]]
        assert unequal == [], [
            (e, got["duckdb"][e][:200], got["postgresql"][e][:200]) for e in unequal
        ]
        for engine, api in pair.apis.items():
            for event_id in accepted:
                stored = await api.ok("GET", "/v1/deliveries", params={"event_id": event_id})
                assert [d["status"] for d in stored["items"]] == ["delivered"], (engine, event_id)


def _bodies(rx: Recorder, path: str) -> dict[str, bytes]:
    """The body of each event `path` received, by its webhook-id (the event id)."""
    return {r.headers["webhook-id"]: r.body for r in rx.requests if r.path == path}


async def test_a_number_rewritten_is_other_content_on_both_engines(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """SPEC: "same content" is the same canonical data bytes, so 1 and 1.0 differ: 409."""
    async with daemons(request, tmp_path) as pair:
        await pair.post_event("first", event("r1", '{"a": 1}'))
        answers = await pair.post_event("1.0 for 1", event("r1", '{"a": 1.0}'))
        statuses = {engine: answer[0] for engine, answer in answers.items()}
        assert statuses == {"duckdb": 409, "postgresql": 409}, answers


async def test_thousands_of_deliveries_page_the_same_on_both_engines(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Every row exactly once, in the same order, whatever the page size."""
    n_events = 2500
    async with Recorder(status=204) as rx, daemons(request, tmp_path) as pair:
        for engine, api in pair.apis.items():
            await api.create_webhook(rx.url_for(f"/{engine}"))
        ids = [f"p{i:05d}" for i in range(n_events)]
        for start in range(0, n_events, 500):
            batch = b"[" + b",".join(event(e, "{}") for e in ids[start : start + 500]) + b"]"
            await pair.post_event(f"batch at {start}", batch)
        for api in pair.apis.values():
            await api.wait_status({"delivered": n_events}, deadline=DEADLINE)
        for limit in (1000, 97):
            pages: dict[str, list[str]] = {}
            for engine, api in pair.apis.items():
                seen: list[str] = []
                cursor: str | None = None
                while True:
                    query = {"limit": str(limit)}
                    if cursor:
                        query["cursor"] = cursor
                    page = await api.ok("GET", "/v1/deliveries", params=query)
                    assert len(page["items"]) <= limit
                    seen += [d["event_id"] for d in page["items"]]
                    cursor = page["next"]
                    if not cursor:
                        break
                assert sorted(seen) == ids, (engine, limit, len(seen), len(set(seen)))
                pages[engine] = seen
            assert pages["duckdb"] == pages["postgresql"], limit
        assert pair.differences == [], "\n".join(pair.differences)


WEBHOOKS: list[tuple[str, str, str, Any]] = [
    ("create", "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/a", "description": "é 😀"}),
    (
        "create with settings",
        "POST",
        "/v1/webhooks",
        {
            "url": "http://127.0.0.1:9/b",
            "event_types": ["b", "a"],
            "rate_limit": 2.5,
            "max_in_flight": 3,
            "ordering": "fifo",
        },
    ),
    ("list", "GET", "/v1/webhooks", None),
    (
        "create for a tenant",
        "POST",
        "/v1/webhooks",
        {"url": "http://127.0.0.1:9/c", "tenant": "acme"},
    ),
    ("a bad tenant", "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/", "tenant": "a/b"}),
    ("a tenant's webhooks", "GET", "/v1/webhooks?tenant=acme", None),
    ("a tenant's status", "GET", "/v1/status?tenant=acme", None),
    ("url not a string", "POST", "/v1/webhooks", {"url": 5}),
    ("url not http", "POST", "/v1/webhooks", {"url": "ftp://127.0.0.1/"}),
    (
        "rate_limit a string",
        "POST",
        "/v1/webhooks",
        {"url": "http://127.0.0.1:9/", "rate_limit": "x"},
    ),
    (
        "ordering unknown",
        "POST",
        "/v1/webhooks",
        {"url": "http://127.0.0.1:9/", "ordering": "lifo"},
    ),
    ("unknown field", "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/", "colour": 1}),
    ("unknown webhook", "GET", "/v1/webhooks/wh_00000000000000000000000000000000", None),
    ("patch unknown", "PATCH", "/v1/webhooks/wh_0", {"active": False}),
    ("deliveries of nothing", "GET", "/v1/deliveries", None),
    ("attempts of nothing", "GET", "/v1/deliveries/wh_0/e0/attempts", None),
    ("redrive nothing", "POST", "/v1/redrive", {"status": "dead"}),
    ("redrive a bad status", "POST", "/v1/redrive", {"status": "pending"}),
    ("replay unknown", "POST", "/v1/replay", {"event_id": "nope"}),
    ("bad cursor", "GET", "/v1/deliveries?cursor=not-a-cursor", None),
    ("bad limit", "GET", "/v1/deliveries?limit=0", None),
]


async def test_webhook_and_operator_routes_answer_the_same_on_both_engines(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with daemons(request, tmp_path) as pair:
        for label, method, path, body in WEBHOOKS:
            await pair.send(label, method, path, body, unordered=True)
        # Change each one's first webhook alike.
        first = {
            engine: next(
                w["webhook_id"]
                for w in (await api.ok("GET", "/v1/webhooks"))["items"]
                if w["url"].endswith("/a")
            )
            for engine, api in pair.apis.items()
        }
        paths = {engine: f"/v1/webhooks/{wid}" for engine, wid in first.items()}
        await pair.send("patch", "PATCH", paths, {"active": False, "max_in_flight": None})
        await pair.send("patch a bad type", "PATCH", paths, {"active": "no"})
        await pair.send("patch to fifo", "PATCH", paths, {"ordering": "fifo", "active": True})
        await pair.send("show", "GET", paths)
        await pair.send("list after the changes", "GET", "/v1/webhooks", unordered=True)
        # Enabling wrote an operational event (webhookd.webhook.enabled): PostgreSQL's
        # scanner passes it a moment later, DuckDB's cursor at once; compare once both have.
        for api in pair.apis.values():
            end = time.monotonic() + DEADLINE
            while (await api.ok("GET", "/v1/status"))["scanner_lag_events"]:
                assert time.monotonic() < end, "the scanner never caught up"
                await asyncio.sleep(0.02)
        await pair.send("status", "GET", "/v1/status")
        assert pair.differences == [], "\n".join(pair.differences)
