"""Bad input to the HTTP API: every error is a fitting 4xx with {"error": {"code", "message"}}
naming what is wrong, nothing bad is stored, and the daemon keeps serving.

Webhook URLs here are validated only: no test posts an event to a webhook that is not a
local Recorder, so nothing else is ever connected to.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import duckdb
import pytest
from conftest import TOKEN, Api, make_settings, running
from receivers import Recorder

from webhookd.api import Services, build_app
from webhookd.config import Settings

# -- helpers --------------------------------------------------------------------------


def assert_error(got: tuple[int, Any], status: int, code: str | None = None, *mentions: str) -> str:
    """The documented error shape, the status, the code, and the names it must mention."""
    actual_status, body = got
    assert actual_status == status, got
    assert isinstance(body, dict) and set(body) == {"error"}, got
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, got
    assert isinstance(error["code"], str) and error["code"], got
    assert isinstance(error["message"], str) and error["message"], got
    if code is not None:
        assert error["code"] == code, got
    for mention in mentions:
        assert mention in error["message"], (mention, got)
    message: str = error["message"]
    return message


def db_rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the database file once the daemon has stopped and closed it."""
    con = duckdb.connect(str(path))
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def event_rows(path: Path, event_id: str) -> list[tuple[Any, ...]]:
    return db_rows(
        path,
        "SELECT event_type, payload::VARCHAR FROM pipeline_events WHERE event_id = ?",
        event_id,
    )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running(make_settings(tmp_path)) as d, Api(d.url) as client:
        yield client


GOOD_EVENT = {"type": "order.created", "data": {"order": 1}}


# -- malformed JSON ---------------------------------------------------------------------

MALFORMED = {
    "truncated": b'{"type": "a", "data": ',
    "not json": b"hello, daemon",
    "not utf-8": b"\xff\xfe\xfa",
    "empty body": b"",
    "trailing garbage": b'{"type": "a", "data": 1} x',
    "NaN": b'{"type": "a", "data": NaN}',
    "Infinity": b'{"type": "a", "data": [Infinity]}',
    "nested too deeply": b'{"type": "a", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "lone surrogate": b'{"type": "a", "data": "\\ud800"}',
    "number beyond a float": b'{"type": "a", "data": 1e999999}',
    "negative number beyond a float": b'{"type": "a", "data": [-2e400]}',
    "duplicate key": b'{"type": "a", "type": "b", "data": 1}',
    "duplicate nested key": b'{"type": "a", "data": {"n": 1, "n": 2}}',
    "duplicate key in a list member": b'[{"type": "a", "data": 1, "data": 2}]',
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_json_is_400_and_the_daemon_keeps_serving(api: Api, raw: bytes) -> None:
    assert_error(await api.request("POST", "/v1/events", raw=raw), 400, "invalid_json")
    # The same on an admin route.
    assert_error(await api.request("POST", "/v1/webhooks", raw=raw), 400, "invalid_json")
    ids = await api.emit({**GOOD_EVENT, "id": "evt_after_bad_json"})
    assert ids == ["evt_after_bad_json"]
    assert (await api.ok("GET", "/healthz")) == {"status": "ok"}


DUPLICATES = {
    "top level": (b'{"type": "a", "data": 1, "type": "a"}', '"type"'),
    "nested": (b'{"type": "a", "data": {"k": {"n": 1, "n": 1}}}', '"n"'),
    "escaped spelling of the same key": (
        b'{"type": "a", "data": {"\\u00e9": 1, "\xc3\xa9": 2}}',
        "\\u00e9",
    ),
}


@pytest.mark.parametrize(("raw", "key"), DUPLICATES.values(), ids=DUPLICATES.keys())
async def test_a_repeated_key_is_400_naming_it(api: Api, raw: bytes, key: str) -> None:
    """Parsers disagree on which of two equal keys wins; none is stored."""
    got = await api.request("POST", "/v1/events", raw=raw)
    assert_error(got, 400, "invalid_json", key, "once")
    webhook = b'{"url": "https://example.com/a", "url": "https://example.com/b"}'
    got = await api.request("POST", "/v1/webhooks", raw=webhook)
    assert_error(got, 400, "invalid_json", '"url"')
    assert (await api.ok("GET", "/v1/webhooks"))["items"] == []


async def test_a_number_beyond_a_float_is_named(api: Api) -> None:
    raw = b'{"type": "a", "data": {"amount": 1e999999}}'
    assert_error(await api.request("POST", "/v1/events", raw=raw), 400, "invalid_json", "1e999999")
    # Large but finite numbers are numbers.
    ok = b'{"id": "evt_big_number", "type": "a", "data": 1.7e308}'
    assert await api.request("POST", "/v1/events", raw=ok) == (202, {"ids": ["evt_big_number"]})


async def test_surrogate_pair_is_one_character_and_accepted(api: Api) -> None:
    """Escaped surrogate pairs are valid JSON for one character (here U+1F600)."""
    raw = b'{"id": "evt_emoji", "type": "a", "data": "\\ud83d\\ude00"}'
    status, body = await api.request("POST", "/v1/events", raw=raw)
    assert (status, body) == (202, {"ids": ["evt_emoji"]})


# -- events with wrong fields ---------------------------------------------------------

BAD_EVENTS: dict[str, tuple[Any, str]] = {
    "type not a string": ({"type": 5, "data": {}}, "events[0].type"),
    "type empty": ({"type": "", "data": {}}, "events[0].type"),
    "type missing": ({"data": {}}, "events[0].type"),
    "type too long": ({"type": "t" * 257, "data": {}}, "events[0].type"),
    "data missing": ({"type": "a"}, "events[0].data"),
    "unknown field": ({"type": "a", "data": {}, "colour": "red"}, "colour"),
    "id not a string": ({"type": "a", "data": {}, "id": 7}, "events[0].id"),
    "id empty": ({"type": "a", "data": {}, "id": ""}, "events[0].id"),
    "id too long": ({"type": "a", "data": {}, "id": "i" * 257}, "events[0].id"),
    "occurred_at not a time": (
        {"type": "a", "data": {}, "occurred_at": "yesterday"},
        "events[0].occurred_at",
    ),
    "occurred_at a number": (
        {"type": "a", "data": {}, "occurred_at": 1700000000},
        "events[0].occurred_at",
    ),
    "occurred_at out of range": (
        {"type": "a", "data": {}, "occurred_at": "0001-01-01T00:00:00+01:00"},
        "events[0].occurred_at",
    ),
    "not an object": ("just a string", "events[0]"),
    "null": (None, "events[0]"),
    "list member not an object": ([GOOD_EVENT, 42], "events[1]"),
}


@pytest.mark.parametrize(("event", "field"), BAD_EVENTS.values(), ids=list(BAD_EVENTS.keys()))
async def test_event_with_wrong_fields_is_400_naming_the_field(
    api: Api, event: Any, field: str
) -> None:
    got = await api.request("POST", "/v1/events", raw=json.dumps(event).encode())
    assert_error(got, 400, "invalid_event", field)


async def test_empty_list_of_events_is_400(api: Api) -> None:
    assert_error(await api.request("POST", "/v1/events", []), 400, "invalid_request", "empty")


async def test_one_bad_event_rejects_the_whole_list(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running(settings) as d, Api(d.url) as api:
        batch = [
            {"id": "evt_good_1", **GOOD_EVENT},
            {"id": "evt_good_2", **GOOD_EVENT},
            {"id": "evt_bad", "type": 5, "data": {}},
        ]
        assert_error(await api.request("POST", "/v1/events", batch), 400, "invalid_event", "[2]")
        await d.stop()
    assert db_rows(settings.database.path, "SELECT count(*) FROM pipeline_events") == [(0,)]


async def test_one_conflicting_event_rejects_the_whole_list(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running(settings) as d, Api(d.url) as api:
        await api.emit({"id": "evt_known", "type": "a", "data": {"v": 1}})
        batch = [
            {"id": "evt_new", "type": "a", "data": {"v": 1}},
            {"id": "evt_known", "type": "a", "data": {"v": 2}},
        ]
        assert_error(await api.request("POST", "/v1/events", batch), 409, "conflict", "evt_known")
        await d.stop()
    assert event_rows(settings.database.path, "evt_new") == []
    assert event_rows(settings.database.path, "evt_known") == [("a", '{"v":1}')]


# -- size limits ----------------------------------------------------------------------


async def test_oversize_body_is_413_with_the_error_shape(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin={"max_body_bytes": 2048})
    async with running(settings) as d, Api(d.url) as api:
        big = {"id": "evt_big", "type": "a", "data": "x" * 4096}
        assert_error(await api.request("POST", "/v1/events", big), 413, "payload_too_large")
        hook = {"url": "https://example.com/hook", "description": "d" * 4096}
        assert_error(await api.request("POST", "/v1/webhooks", hook), 413, "payload_too_large")
        # Just under the limit is fine, and the daemon still serves.
        fits = {"id": "evt_fits", "type": "a", "data": "x" * 1500}
        assert await api.emit(fits) == ["evt_fits"]
        assert (await api.ok("GET", "/v1/webhooks"))["items"] == []
        await d.stop()
    assert event_rows(settings.database.path, "evt_big") == []
    assert len(event_rows(settings.database.path, "evt_fits")) == 1


async def test_oversize_chunked_body_is_413(tmp_path: Path) -> None:
    """No Content-Length to trust: the limit holds while the body streams in."""
    settings = make_settings(tmp_path, admin={"max_body_bytes": 2048})

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b'{"id": "evt_chunked", "type": "a", "data": "'
        for _ in range(8):
            yield b"x" * 512
        yield b'"}'

    async with running(settings) as d, aiohttp.ClientSession() as session:
        async with session.post(
            d.url + "/v1/events",
            data=chunks(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ) as resp:
            got = (resp.status, await resp.json())
        assert_error(got, 413, "payload_too_large")
        async with Api(d.url) as api:
            assert await api.emit({"id": "evt_after", **GOOD_EVENT}) == ["evt_after"]
        await d.stop()
    assert event_rows(settings.database.path, "evt_chunked") == []


async def test_too_many_events_in_one_batch_is_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin={"max_batch_events": 3})
    async with running(settings) as d, Api(d.url) as api:
        four = [{"id": f"evt_{i}", **GOOD_EVENT} for i in range(4)]
        assert_error(
            await api.request("POST", "/v1/events", four),
            413,
            "too_many_events",
            "admin.max_batch_events",
        )
        assert await api.emit(four[:3]) == ["evt_0", "evt_1", "evt_2"]
        await d.stop()
    assert event_rows(settings.database.path, "evt_3") == []


# -- webhook URLs (validation only) -----------------------------------------------------

BAD_URLS: dict[str, tuple[Any, str]] = {
    "ftp scheme": ("ftp://example.com/hook", "http or https"),
    "no scheme": ("example.com/hook", "http or https"),
    "no host": ("http://", "no host"),
    "empty host with a path": ("http:///hook", "no host"),
    "credentials": ("http://u:p@example.com/", "credentials"),
    "user only": ("https://user@example.com/", "credentials"),
    "loopback": ("http://127.0.0.1/", "loopback"),
    "loopback v6": ("http://[::1]:8080/", "loopback"),
    "private": ("http://10.0.0.1/", "private"),
    "cloud metadata": ("http://169.254.169.254/latest/meta-data/", "metadata"),
    "decimal IPv4": ("http://2130706433/", "not a canonical IP"),
    "white space": ("http://example.com/a b", "white space"),
    "port 0": ("http://example.com:0/", "port"),
    "empty": ("", "empty"),
    "not a string": (5, "url"),
    "missing": (None, "url"),
    "longer than 2048 characters": ("https://example.com/" + "a" * 2029, "2048"),
}


@pytest.fixture
async def strict_api(tmp_path: Path) -> AsyncIterator[Api]:
    """allow_private_destinations = false, as in production."""
    settings = make_settings(tmp_path, delivery={"allow_private_destinations": False})
    async with running(settings) as d, Api(d.url) as client:
        yield client


@pytest.mark.parametrize(("url", "mention"), BAD_URLS.values(), ids=list(BAD_URLS.keys()))
async def test_invalid_webhook_url_is_400(strict_api: Api, url: Any, mention: str) -> None:
    body = {} if url is None else {"url": url}
    got = await strict_api.request("POST", "/v1/webhooks", body)
    message = assert_error(got, 400, "invalid_url", mention)
    assert message.startswith("url:")
    assert (await strict_api.ok("GET", "/v1/webhooks"))["items"] == []


async def test_invalid_url_in_a_change_is_400_and_changes_nothing(strict_api: Api) -> None:
    created = await strict_api.create_webhook("https://example.com/hook")
    path = f"/v1/webhooks/{created['webhook_id']}"
    got = await strict_api.request("PATCH", path, {"url": "http://10.0.0.1/", "active": False})
    assert_error(got, 400, "invalid_url", "private")
    shown = await strict_api.ok("GET", path)
    assert shown["url"] == "https://example.com/hook"
    assert shown["active"] is True


async def test_private_url_is_accepted_when_allowed(api: Api) -> None:
    created = await api.create_webhook("http://127.0.0.1:9/hook")
    assert created["url"] == "http://127.0.0.1:9/hook"


# -- other wrong fields, on the admin routes --------------------------------------------

URL = "https://example.com/hook"
BAD_ADMIN_REQUESTS: dict[str, tuple[str, str, Any, str, str]] = {
    "webhook not an object": ("POST", "/v1/webhooks", [URL], "invalid_request", "object"),
    "webhook unknown field": (
        "POST",
        "/v1/webhooks",
        {"url": URL, "colour": "red"},
        "invalid_request",
        "colour",
    ),
    "event_types a string": (
        "POST",
        "/v1/webhooks",
        {"url": URL, "event_types": "order.created"},
        "invalid_request",
        "event_types",
    ),
    "event_types with an empty name": (
        "POST",
        "/v1/webhooks",
        {"url": URL, "event_types": [""]},
        "invalid_request",
        "event_types",
    ),
    "description a number": (
        "POST",
        "/v1/webhooks",
        {"url": URL, "description": 5},
        "invalid_request",
        "description",
    ),
    "secret not whsec_": (
        "POST",
        "/v1/webhooks",
        {"url": URL, "secret": "hunter2"},
        "invalid_secret",
        "secret",
    ),
    "limit too large": ("GET", "/v1/webhooks?limit=1001", None, "invalid_request", "limit"),
    "limit zero": ("GET", "/v1/deliveries?limit=0", None, "invalid_request", "limit"),
    "limit not a number": ("GET", "/v1/webhooks?limit=ten", None, "invalid_request", "limit"),
    "limit a superscript digit": (
        "GET",
        "/v1/webhooks?limit=%C2%B2",
        None,
        "invalid_request",
        "limit",
    ),
    "deliveries bad status": (
        "GET",
        "/v1/deliveries?status=lost",
        None,
        "invalid_request",
        "status",
    ),
    "deliveries bad cursor": (
        "GET",
        "/v1/deliveries?cursor=%%%",
        None,
        "invalid_request",
        "cursor",
    ),
    "deliveries cursor of wrong types": (
        "GET",
        "/v1/deliveries?cursor=WzEsMiwzXQ",
        None,
        "invalid_request",
        "cursor",
    ),
    "webhooks cursor not an id": (
        "GET",
        "/v1/webhooks?cursor=%00%E2%80%AE",
        None,
        "invalid_request",
        "cursor",
    ),
    "redrive delivered": (
        "POST",
        "/v1/redrive",
        {"status": "delivered"},
        "invalid_request",
        "status",
    ),
    "redrive bad since": (
        "POST",
        "/v1/redrive",
        {"status": "dead", "since": "yesterday"},
        "invalid_request",
        "since",
    ),
    "redrive unknown field": (
        "POST",
        "/v1/redrive",
        {"status": "dead", "everything": True},
        "invalid_request",
        "everything",
    ),
    "replay without event_id": ("POST", "/v1/replay", {}, "invalid_request", "event_id"),
    "replay event_id a number": (
        "POST",
        "/v1/replay",
        {"event_id": 5},
        "invalid_request",
        "event_id",
    ),
}


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "field"),
    BAD_ADMIN_REQUESTS.values(),
    ids=list(BAD_ADMIN_REQUESTS.keys()),
)
async def test_admin_request_with_wrong_fields_is_400_naming_the_field(
    api: Api, method: str, path: str, body: Any, code: str, field: str
) -> None:
    assert_error(await api.request(method, path, body), 400, code, field)
    assert (await api.ok("GET", "/v1/webhooks"))["items"] == []


async def test_patch_with_wrong_types_is_400_naming_the_field(api: Api) -> None:
    created = await api.create_webhook(URL)
    path = f"/v1/webhooks/{created['webhook_id']}"
    assert_error(await api.request("PATCH", path, {"active": "yes"}), 400, None, "active")
    assert_error(await api.request("PATCH", path, {"secret": "x"}), 400, None, "secret")
    assert_error(await api.request("PATCH", path, {"event_types": 3}), 400, None, "event_types")
    assert (await api.ok("GET", path))["active"] is True


# -- unknown ids ------------------------------------------------------------------------

UNKNOWN = "wh_does_not_exist"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/v1/webhooks/{UNKNOWN}", None),
        ("PATCH", f"/v1/webhooks/{UNKNOWN}", {"active": False}),
        ("DELETE", f"/v1/webhooks/{UNKNOWN}", None),
        ("POST", f"/v1/webhooks/{UNKNOWN}/rotate-secret", None),
        ("POST", f"/v1/webhooks/{UNKNOWN}/test", None),
    ],
)
async def test_unknown_webhook_is_404(api: Api, method: str, path: str, body: Any) -> None:
    assert_error(await api.request(method, path, body), 404, "not_found", UNKNOWN)


async def test_unknown_route_and_method_keep_the_error_shape(api: Api) -> None:
    assert_error(await api.request("GET", "/v1/nothing"), 404, "not_found")
    assert_error(await api.request("PUT", "/v1/events", GOOD_EVENT), 405, "method_not_allowed")


# -- authentication ---------------------------------------------------------------------


def app_routes() -> list[tuple[str, str]]:
    """Every (method, path) the daemon serves, from its own router, parameters filled in."""
    stub = cast(Services, SimpleNamespace(settings=Settings()))
    routes = []
    for route in build_app(stub).router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        routes.append((route.method, re.sub(r"\{[^}]+\}", "x", canonical)))
    return routes


SPEC_ROUTES = {
    ("POST", "/v1/events"),
    ("GET", "/v1/webhooks"),
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/webhooks/x"),
    ("PATCH", "/v1/webhooks/x"),
    ("DELETE", "/v1/webhooks/x"),
    ("POST", "/v1/webhooks/x/rotate-secret"),
    ("POST", "/v1/webhooks/x/test"),
    ("GET", "/v1/deliveries"),
    ("GET", "/v1/deliveries/x/x/attempts"),
    ("POST", "/v1/redrive"),
    ("POST", "/v1/replay"),
    ("GET", "/v1/status"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
}

BAD_CREDENTIALS: dict[str, dict[str, str]] = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "token with a suffix": {"Authorization": f"Bearer {TOKEN}x"},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "empty bearer": {"Authorization": "Bearer "},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "bare token": {"Authorization": TOKEN},
}


def test_the_router_serves_every_route_in_spec() -> None:
    assert set(app_routes()) >= SPEC_ROUTES


@pytest.mark.parametrize("headers", BAD_CREDENTIALS.values(), ids=list(BAD_CREDENTIALS.keys()))
async def test_every_route_but_healthz_needs_the_token(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    routes = [*app_routes(), ("GET", "/v1/no-such-route")]
    settings = make_settings(tmp_path)
    async with running(settings) as d, aiohttp.ClientSession() as session:
        for method, path in routes:
            is_health = path == "/healthz"
            body = json.dumps(GOOD_EVENT).encode() if method in ("POST", "PATCH") else None
            async with session.request(method, d.url + path, data=body, headers=headers) as r:
                text = await r.text()
                if is_health:
                    assert r.status == 200, (method, path, r.status)
                    continue
                assert r.status == 401, (method, path, r.status, text)
                assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
                if method != "HEAD":
                    assert_error((r.status, json.loads(text)), 401, "unauthorized")
        await d.stop()
    # Nothing an unauthenticated request asked for happened.
    for table in ("pipeline_events", "webhooks"):
        assert db_rows(settings.database.path, f"SELECT count(*) FROM {table}") == [(0,)]


async def test_healthz_answers_without_a_token(api: Api) -> None:
    async with aiohttp.ClientSession() as session, session.get(api.base + "/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok"}


async def test_the_token_is_accepted(api: Api) -> None:
    assert (await api.ok("GET", "/readyz"))["status"] == "ready"


# -- idempotent ingest ----------------------------------------------------------------


async def test_same_event_twice_is_accepted_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with (
        Recorder() as receiver,
        running(settings) as d,
        Api(d.url) as api,
    ):
        hook = await api.create_webhook(receiver.url_for("/a"))
        first = {"id": "evt_twice", "type": "a", "data": {"n": 1.5, "s": "café ☃", "l": [1, None]}}
        # Same content: keys in another order.
        again = {"data": {"l": [1, None], "s": "café ☃", "n": 1.5}, "type": "a", "id": "evt_twice"}
        assert await api.request("POST", "/v1/events", first) == (202, {"ids": ["evt_twice"]})
        assert await api.request("POST", "/v1/events", again) == (202, {"ids": ["evt_twice"]})
        # Several at once, racing into the same group commit, and twice in one list.
        results = await asyncio.gather(
            *(api.request("POST", "/v1/events", first) for _ in range(5)),
            api.request("POST", "/v1/events", [first, again]),
        )
        assert [r[0] for r in results] == [202] * 6
        await api.wait_status({"delivered": 1}, event_id="evt_twice")
        await d.stop()
    path = settings.database.path
    assert len(event_rows(path, "evt_twice")) == 1
    queued = db_rows(
        path,
        "SELECT webhook_id FROM webhook_delivery_queue WHERE event_id = ?",
        "evt_twice",
    )
    assert queued == [(hook["webhook_id"],)]
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["evt_twice"]


async def test_same_id_other_content_is_409(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running(settings) as d, Api(d.url) as api:
        await api.emit({"id": "evt_once", "type": "a", "data": {"v": 1}})
        other_data = {"id": "evt_once", "type": "a", "data": {"v": 2}}
        assert_error(await api.request("POST", "/v1/events", other_data), 409, "conflict")
        other_type = {"id": "evt_once", "type": "b", "data": {"v": 1}}
        assert_error(
            await api.request("POST", "/v1/events", other_type), 409, "conflict", "evt_once"
        )
        in_one_list = [
            {"id": "evt_pair", "type": "a", "data": 1},
            {"id": "evt_pair", "type": "a", "data": 2},
        ]
        assert_error(await api.request("POST", "/v1/events", in_one_list), 409, "conflict")
        await d.stop()
    assert event_rows(settings.database.path, "evt_once") == [("a", '{"v":1}')]
    assert event_rows(settings.database.path, "evt_pair") == []
