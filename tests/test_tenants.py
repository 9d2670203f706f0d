"""Tenants (SPEC "Tenants"), on every engine: routing, isolation with a tenant token, the
token rules, bad names. Two PostgreSQL daemons for a revocation seen by the other one, and
the outbox (publish(..., tenant => ...), a plain INSERT) on PostgreSQL.

Every test runs the daemon in this process against real receivers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import duckdb
import pytest
from conftest import (
    Api,
    DaemonProcess,
    RunningDaemon,
    config_sections,
    make_settings,
    running,
    to_toml,
)

from tests.pg import PgCluster
from tests.receivers import Recorder
from tests.test_secrets_never_leak import malformed_requests, raw_exchange

DEADLINE = 15.0


def database(engine: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if engine == "duckdb":
        return {}
    cluster: PgCluster = request.getfixturevalue("pg")
    return {"url": cluster.url, "schema": request.getfixturevalue("pg_schema")}


async def eventually(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], what: str
) -> Any:
    end = time.monotonic() + DEADLINE
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: still {value!r} after {DEADLINE}s")
        await asyncio.sleep(0.02)


async def scanned(api: Api) -> None:
    """Until the scanner has passed every event posted so far."""
    await eventually(
        lambda: api.ok("GET", "/v1/status"),
        lambda s: s["scanner_lag_events"] == 0,
        "scanner lag",
    )


async def routed(api: Api) -> set[tuple[str, str]]:
    await scanned(api)
    return {(d["webhook_id"], d["event_id"]) for d in await api.deliveries()}


async def token_for(api: Api, tenant: str, **body: Any) -> dict[str, Any]:
    made: dict[str, Any] = await api.ok("POST", f"/v1/tenants/{tenant}/tokens", body)
    return made


class World:
    """Two customers (acme, globex) and an operator's own webhook, one event each."""

    def __init__(self, api: Api, rx: Recorder) -> None:
        self.api = api
        self.rx = rx
        self.hooks: dict[str, dict[str, Any]] = {}
        self.events: dict[str, str] = {}

    async def build(self) -> World:
        api, rx = self.api, self.rx
        self.hooks["acme"] = await api.create_webhook(rx.url_for("/acme"), tenant="acme")
        self.hooks["acme_other_type"] = await api.create_webhook(
            rx.url_for("/acme-other"), tenant="acme", event_types=["invoice.voided"]
        )
        self.hooks["globex"] = await api.create_webhook(rx.url_for("/globex"), tenant="globex")
        self.hooks["none"] = await api.create_webhook(rx.url_for("/none"))
        for tenant in ("acme", "globex", None):
            event: dict[str, Any] = {"type": "invoice.paid", "data": {"for": str(tenant)}}
            if tenant is not None:
                event["tenant"] = tenant
            (self.events[str(tenant)],) = await api.emit(event)
        return self

    def id(self, name: str) -> str:
        return str(self.hooks[name]["webhook_id"])


@pytest.fixture(params=["duckdb", "postgresql"])
async def world(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[World, RunningDaemon]]:
    settings = make_settings(tmp_path, database=database(str(request.param), request))
    async with Recorder(status=204) as rx, running(settings) as d, Api(d.url) as api:
        yield await World(api, rx).build(), d


# -- routing --------------------------------------------------------------------------------


async def test_an_event_reaches_only_the_webhooks_of_its_own_tenant(
    world: tuple[World, RunningDaemon],
) -> None:
    w, _ = world
    assert await routed(w.api) == {
        (w.id("acme"), w.events["acme"]),
        (w.id("globex"), w.events["globex"]),
        (w.id("none"), w.events["None"]),
    }
    await w.api.wait_status({"delivered": 3})
    assert sorted(w.rx.paths()) == ["/acme", "/globex", "/none"]


async def test_the_same_event_id_with_another_tenant_is_a_conflict(
    world: tuple[World, RunningDaemon],
) -> None:
    w, _ = world
    again = {"id": w.events["acme"], "type": "invoice.paid", "data": {"for": "acme"}}
    assert await w.api.emit({**again, "tenant": "acme"}) == [w.events["acme"]]
    status, body = await w.api.request("POST", "/v1/events", {**again, "tenant": "globex"})
    assert status == 409, body
    status, body = await w.api.request("POST", "/v1/events", again)  # no tenant: other too
    assert status == 409, body


async def test_filters_by_tenant_for_the_operator(world: tuple[World, RunningDaemon]) -> None:
    w, _ = world
    await w.api.wait_status({"delivered": 3})
    listed = await w.api.ok("GET", "/v1/webhooks", params={"tenant": "acme"})
    assert {h["webhook_id"] for h in listed["items"]} == {w.id("acme"), w.id("acme_other_type")}
    assert all(h["tenant"] == "acme" for h in listed["items"])
    rows = await w.api.deliveries(tenant="globex")
    assert [(r["webhook_id"], r["event_id"]) for r in rows] == [
        (w.id("globex"), w.events["globex"])
    ]
    status = await w.api.ok("GET", "/v1/status", params={"tenant": "acme"})
    assert set(status["by_webhook"]) == {w.id("acme")}
    assert status["by_status"]["delivered"] == 1
    assert status["webhooks_active"] == 2
    await w.api.ok("PATCH", f"/v1/webhooks/{w.id('globex')}", {"active": False})
    await w.api.ok("PATCH", f"/v1/webhooks/{w.id('acme')}", {"active": False})
    await w.api.ok("PATCH", f"/v1/webhooks/{w.id('acme')}", {"active": True})
    redriven = await w.api.ok("POST", "/v1/redrive", {"status": "parked", "tenant": "acme"})
    assert redriven == {"count": 0}  # acme's rows were delivered; globex's are its own


async def test_a_replay_never_crosses_tenants(world: tuple[World, RunningDaemon]) -> None:
    w, _ = world
    await w.api.wait_status({"delivered": 3})
    for event, webhook in [("acme", "globex"), ("acme", "none"), ("None", "acme")]:
        body = {"event_id": w.events[event], "webhook_id": w.id(webhook)}
        status, answer = await w.api.request("POST", "/v1/replay", body)
        assert status == 404, (event, webhook, answer)
    assert len(await w.api.deliveries()) == 3
    again = {"event_id": w.events["acme"], "webhook_id": w.id("acme")}
    assert await w.api.ok("POST", "/v1/replay", again) == {"count": 1}


# -- a tenant token -------------------------------------------------------------------------


async def test_a_tenant_token_sees_and_changes_only_its_tenant(
    world: tuple[World, RunningDaemon],
) -> None:
    w, _ = world
    api = w.api
    await api.wait_status({"delivered": 3})
    token = (await token_for(api, "acme"))["token"]

    async def as_acme(method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await api.request(method, path, body, token=token, **kw)

    status, listed = await as_acme("GET", "/v1/webhooks")
    assert status == 200
    assert {h["webhook_id"] for h in listed["items"]} == {w.id("acme"), w.id("acme_other_type")}
    assert (await as_acme("GET", f"/v1/webhooks/{w.id('acme')}"))[0] == 200
    status, rows = await as_acme("GET", "/v1/deliveries")
    assert [(r["webhook_id"], r["event_id"]) for r in rows["items"]] == [
        (w.id("acme"), w.events["acme"])
    ]
    assert (await as_acme("GET", "/v1/deliveries", params={"webhook_id": w.id("globex")}))[1][
        "items"
    ] == []
    path = f"/v1/deliveries/{w.id('acme')}/{w.events['acme']}/attempts"
    assert (await as_acme("GET", path))[0] == 200
    status, created = await as_acme("POST", "/v1/webhooks", {"url": w.rx.url_for("/acme2")})
    assert status == 201 and created["tenant"] == "acme"
    status, changed = await as_acme(
        "PATCH", f"/v1/webhooks/{created['webhook_id']}", {"description": "mine"}
    )
    assert status == 200 and changed["description"] == "mine"
    status, body = await as_acme("POST", "/v1/replay", {"event_id": w.events["acme"]})
    assert (status, body) == (200, {"count": 2})  # to acme's first webhook, and its new one
    status, counts = await as_acme("GET", "/v1/status", params={"tenant": "acme"})
    assert status == 200
    assert set(counts["by_webhook"]) <= {w.id("acme"), created["webhook_id"]}

    # Another tenant's objects: 404, as if they did not exist; nothing changes.
    other = w.id("globex")
    for method, route, body in [
        ("GET", f"/v1/webhooks/{other}", None),
        ("PATCH", f"/v1/webhooks/{other}", {"active": False}),
        ("DELETE", f"/v1/webhooks/{other}", None),
        ("POST", f"/v1/webhooks/{other}/rotate-secret", {}),
        ("POST", f"/v1/webhooks/{other}/test", {}),
        ("GET", f"/v1/deliveries/{other}/{w.events['globex']}/attempts", None),
        ("POST", "/v1/replay", {"event_id": w.events["globex"]}),
        ("POST", "/v1/replay", {"event_id": w.events["None"]}),
        ("POST", "/v1/redrive", {"status": "dead", "webhook_id": other}),
    ]:
        status, answer = await as_acme(method, route, body)
        assert status == 404, (method, route, status, answer)
    # Naming another tenant: 403.
    for method, route, body, params in [
        ("POST", "/v1/webhooks", {"url": w.rx.url_for("/x"), "tenant": "globex"}, None),
        ("GET", "/v1/webhooks", None, {"tenant": "globex"}),
        ("GET", "/v1/deliveries", None, {"tenant": "globex"}),
        ("POST", "/v1/redrive", {"status": "dead", "tenant": "globex"}, None),
        ("GET", "/v1/status", None, {"tenant": "globex"}),
    ]:
        status, answer = await as_acme(method, route, body, params=params)
        assert status == 403, (method, route, status, answer)
    # Operator-only routes: 403, nothing done.
    for method, route, body in [
        ("POST", "/v1/events", {"type": "invoice.paid", "data": {}, "tenant": "acme"}),
        ("GET", "/metrics", None),
        ("GET", "/v1/status", None),
        ("POST", "/v1/tenants/acme/tokens", {}),
        ("GET", "/v1/tenants/acme/tokens", None),
        ("POST", "/v1/tenants/globex/tokens", {}),
    ]:
        status, answer = await as_acme(method, route, body)
        assert status == 403, (method, route, status, answer)
    assert len((await api.ok("GET", "/v1/tenants/acme/tokens"))["items"]) == 1
    assert (await api.ok("GET", "/v1/tenants/globex/tokens"))["items"] == []
    hook = await api.ok("GET", f"/v1/webhooks/{other}")
    assert hook["active"] is True and hook["tenant"] == "globex"
    await scanned(api)
    assert len(await api.deliveries()) == 4  # 3, and the replay to acme's new webhook


async def test_a_webhook_cannot_move_to_another_tenant(
    world: tuple[World, RunningDaemon],
) -> None:
    w, _ = world
    for tenant in ("globex", None):
        status, body = await w.api.request(
            "PATCH", f"/v1/webhooks/{w.id('acme')}", {"tenant": tenant, "active": False}
        )
        assert status == 400 and body["error"]["message"].startswith("tenant:"), body
    status, body = await w.api.request("PATCH", f"/v1/webhooks/{w.id('none')}", {"tenant": "x"})
    assert status == 400, body
    same = await w.api.ok("PATCH", f"/v1/webhooks/{w.id('acme')}", {"tenant": "acme"})
    assert same["tenant"] == "acme" and same["active"] is True


async def test_tenant_tokens_are_shown_once_expire_and_are_revoked_at_once(
    world: tuple[World, RunningDaemon],
) -> None:
    w, _ = world
    api = w.api
    made = await token_for(api, "acme", ttl=3600, description="acme portal")
    assert made["token"].startswith("wht_" + made["token_id"] + ".")
    listed = (await api.ok("GET", "/v1/tenants/acme/tokens"))["items"]
    assert listed == [{k: v for k, v in made.items() if k != "token"}]
    ok = await api.request("GET", "/v1/webhooks", token=made["token"])
    assert ok[0] == 200
    wrong = made["token"][:-1] + ("A" if made["token"][-1] != "A" else "B")
    assert (await api.request("GET", "/v1/webhooks", token=wrong))[0] == 401
    await api.ok("DELETE", f"/v1/tenants/acme/tokens/{made['token_id']}")
    assert (await api.request("GET", "/v1/webhooks", token=made["token"]))[0] == 401
    assert (await api.ok("GET", "/v1/tenants/acme/tokens"))["items"] == []
    gone = await api.request("DELETE", f"/v1/tenants/acme/tokens/{made['token_id']}")
    assert gone[0] == 404

    short = await token_for(api, "acme", ttl=1)
    await eventually(
        lambda: api.request("GET", "/v1/webhooks", token=short["token"]),
        lambda answer: answer[0] == 401,
        "an expired token",
    )


@pytest.mark.parametrize("engine", ["duckdb", "postgresql"])
async def test_a_tenant_token_is_stored_as_its_digest_only(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = database(engine, request)
    async with running(make_settings(tmp_path, database=db)) as d, Api(d.url) as api:
        made = await token_for(api, "acme")
    if engine == "duckdb":
        con = duckdb.connect(str(tmp_path / "webhookd.duckdb"))
        rows = con.execute("SELECT * FROM tenant_tokens").fetchall()
        con.close()
    else:
        pg = await asyncpg.connect(db["url"])
        rows = [tuple(r) for r in await pg.fetch(f'SELECT * FROM "{db["schema"]}".tenant_tokens')]
        await pg.close()
    secret = made["token"].partition(".")[2]
    assert len(rows) == 1
    assert hashlib.sha256(secret.encode()).hexdigest() in rows[0]
    assert not any(secret in str(value) for value in rows[0])


@pytest.mark.parametrize(
    ("tenant", "why"),
    [
        ("acme corp", "a space"),
        ("acmé", "U+00E9"),
        ("a" * 129, "129 characters"),
        ("", "empty"),
    ],
)
async def test_a_bad_tenant_name_is_a_400_naming_the_field(
    tmp_path: Path, tenant: str, why: str
) -> None:
    async with running(make_settings(tmp_path)) as d, Api(d.url) as api:
        url = "http://127.0.0.1:9/"
        checks: list[tuple[str, str, Any, dict[str, str] | None, str]] = [
            ("POST", "/v1/webhooks", {"url": url, "tenant": tenant}, None, "tenant"),
            (
                "POST",
                "/v1/events",
                {"type": "t", "data": 1, "tenant": tenant},
                None,
                "events[0].tenant",
            ),
            ("POST", "/v1/redrive", {"status": "dead", "tenant": tenant}, None, "tenant"),
            ("GET", "/v1/webhooks", None, {"tenant": tenant}, "tenant"),
            ("GET", "/v1/deliveries", None, {"tenant": tenant}, "tenant"),
            ("GET", "/v1/status", None, {"tenant": tenant}, "tenant"),
        ]
        if tenant:  # an empty path segment is another route
            checks.append(("POST", f"/v1/tenants/{tenant}/tokens", {}, None, "tenant"))
        for method, path, body, params, field in checks:
            status, answer = await api.request(method, path, body, params=params)
            assert status == 400, (path, status, answer)
            message = answer["error"]["message"]
            assert message.startswith(field + ":") and why in message, (path, message)
        assert (await api.ok("GET", "/v1/webhooks"))["items"] == []


# -- PostgreSQL: several daemons, the outbox --------------------------------------------------


async def test_a_token_revoked_through_one_daemon_is_refused_by_another(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = database("postgresql", request)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = make_settings(tmp_path / "one", database=db)
    two = make_settings(tmp_path / "two", database=db)
    async with running(one) as d1, running(two) as d2, Api(d1.url) as a1, Api(d2.url) as a2:
        made = await token_for(a1, "acme")
        assert (await a2.request("GET", "/v1/webhooks", token=made["token"]))[0] == 200
        await a1.ok("DELETE", f"/v1/tenants/acme/tokens/{made['token_id']}")
        assert (await a1.request("GET", "/v1/webhooks", token=made["token"]))[0] == 401
        await eventually(
            lambda: a2.request("GET", "/v1/webhooks", token=made["token"]),
            lambda answer: answer[0] == 401,
            "the revoked token on the other daemon",
        )


async def test_the_outbox_takes_a_tenant(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = database("postgresql", request)
    settings = make_settings(tmp_path, database=db)
    async with Recorder(status=204) as rx, running(settings) as d, Api(d.url) as api:
        acme = await api.create_webhook(rx.url_for("/acme"), tenant="acme")
        none = await api.create_webhook(rx.url_for("/none"))
        con = await asyncpg.connect(db["url"])
        try:
            await con.execute(f'SET search_path TO "{db["schema"]}"')
            await con.execute(
                "SELECT publish('evt_pub', 'invoice.paid', '{\"n\": 1}'::jsonb, tenant => 'acme')"
            )
            await con.execute(
                "SELECT publish('evt_pub', 'invoice.paid', '{\"n\": 1}'::jsonb, tenant => 'acme')"
            )
            with pytest.raises(asyncpg.UniqueViolationError):
                await con.execute("SELECT publish('evt_pub', 'invoice.paid', '{\"n\": 1}'::jsonb)")
            await con.execute(
                "INSERT INTO pipeline_events (event_id, event_type, payload, tenant) "
                "VALUES ('evt_ins', 'invoice.paid', '{}', 'acme'), "
                "('evt_plain', 'invoice.paid', '{}', NULL)"
            )
            with pytest.raises(asyncpg.CheckViolationError):
                await con.execute(
                    "INSERT INTO pipeline_events (event_id, event_type, payload, tenant) "
                    "VALUES ('evt_bad', 'invoice.paid', '{}', 'acme corp')"
                )
        finally:
            await con.close()
        assert await routed(api) == {
            (acme["webhook_id"], "evt_pub"),
            (acme["webhook_id"], "evt_ins"),
            (none["webhook_id"], "evt_plain"),
        }
        del d


async def test_a_tenant_token_never_reaches_a_log_or_an_answer_but_its_own(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    """Minted, used on allowed and refused routes, presented with a wrong secret, in
    malformed requests, revoked and presented again: the daemon's output (debug logs) and
    every answer but the one that made it hold neither the token nor its secret."""
    sections = config_sections(tmp_path, logging={"format": "json", "level": "debug"})
    config = tmp_path / "webhookd.toml"
    config.write_text(to_toml(sections))
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, log_path)
    daemon_process.append(daemon)
    await asyncio.to_thread(daemon.start)
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    answers: list[bytes] = []
    async with Api(daemon.url) as api:
        made = await token_for(api, "acme")
        token = made["token"]
        wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for presented, route, expected in [
            (token, "/v1/webhooks", 200),
            (token, "/metrics", 403),
            (wrong, "/v1/webhooks", 401),
        ]:
            status, body = await api.request("GET", route, token=presented)
            assert status == expected, (route, status, body)
            answers.append(json.dumps(body).encode())
        for raw in malformed_requests(token.encode()).values():
            answers.append(await asyncio.to_thread(raw_exchange, host, int(port), raw))
        await api.ok("DELETE", f"/v1/tenants/acme/tokens/{made['token_id']}")
        status, body = await api.request("GET", "/v1/webhooks", token=token)
        assert status == 401
        answers.append(json.dumps(body).encode())
        answers.append(json.dumps(await api.ok("GET", "/v1/tenants/acme/tokens")).encode())
    assert await asyncio.to_thread(daemon.stop) == 0
    printed = log_path.read_bytes()
    for secret in (token, wrong, token.partition(".")[2], wrong.partition(".")[2]):
        assert secret.encode() not in printed, secret
        assert not [a for a in answers if secret.encode() in a], secret
