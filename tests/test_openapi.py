"""The OpenAPI document, and proof that the daemon keeps it.

* The document describes every route of the app's own router (a route without a
  description fails), from the pydantic models the handlers validate with.
* The served document, the generated one and `openapi.json` in the repository are the same.
* A property-based run of the whole API against a live daemon with schemathesis: every
  operation, valid and invalid requests, with the token; no 5xx, every answer's status,
  content type and body as documented; afterwards the daemon still delivers.

The live daemon is `tests.fenced_daemon`: webhookd whose one outbound HTTP client may
reach only the loopback Recorder of the test; every URL schemathesis makes up (and the
daemon accepts: it runs with `allow_private_destinations`, as tests do) is answered by the
fence as a failed attempt, before any name is resolved or any socket opened.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import hypothesis
import jsonschema_rs
import pytest
import requests
import schemathesis
from aiohttp import web
from conftest import REPO, TOKEN, Api, DaemonProcess, make_settings, running, write_config
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from receivers import Recorder
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fenced_daemon import FENCE_ERROR
from webhookd.api import Services, build_app
from webhookd.api.common import operation_of
from webhookd.api.models import Request
from webhookd.api.openapi import UndocumentedRoute, document, render
from webhookd.config import Settings

OPENAPI_FILE = REPO / "openapi.json"


def app() -> web.Application:
    """The app as the daemon builds it; routes and descriptions need no running service."""
    return build_app(cast(Services, SimpleNamespace(settings=Settings())))


def generated() -> dict[str, Any]:
    return document(app())


def router_routes(application: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in application.router.routes()
        if route.resource is not None
    }


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


# -- the document ---------------------------------------------------------------------------


def test_every_route_of_the_router_is_in_the_document() -> None:
    doc = generated()
    assert documented_routes(doc) == router_routes(app())
    # The SPEC's table, HEAD for each GET, and the document itself.
    assert ("post", "/v1/events") in documented_routes(doc)
    assert ("get", "/openapi.json") in documented_routes(doc)
    assert len(documented_routes(doc)) == 30  # 26, and the 3 tenant token routes and a HEAD


def test_a_route_without_a_description_fails_the_document() -> None:
    application = app()

    async def undocumented(request: web.Request) -> web.Response:
        return web.json_response({})

    application.router.add_post("/v1/undocumented", undocumented)
    with pytest.raises(UndocumentedRoute, match="POST /v1/undocumented"):
        document(application)


def test_the_repository_copy_is_the_generated_document() -> None:
    """`python -m webhookd.api.openapi > openapi.json` regenerates it; run it if this fails."""
    assert OPENAPI_FILE.read_text() == render(generated())
    ran = subprocess.run(
        [sys.executable, "-m", "webhookd.api.openapi"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")},
    )
    assert (ran.returncode, ran.stderr) == (0, "")
    assert ran.stdout == OPENAPI_FILE.read_text()


async def test_the_daemon_serves_the_repository_copy(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path)) as d, Api(d.url) as api:
        served = await api.ok("GET", "/openapi.json")
        unauthenticated, _ = await api.request("GET", "/openapi.json", token="wrong")
    assert served == json.loads(OPENAPI_FILE.read_text()) == generated()
    assert unauthenticated == 401


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = generated()
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name  # JSON Schema 2020-12


def _resolve(doc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].rsplit("/", 1)[1]
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def test_request_bodies_are_the_models_the_handlers_validate_with() -> None:
    """Each documented body is its handler's model, which forbids unknown fields."""
    doc = generated()
    application = app()
    bodies = 0
    for route in application.router.routes():
        operation = operation_of(route.handler)
        assert operation is not None
        entry = doc["paths"][route.resource.canonical][route.method.lower()]  # type: ignore[union-attr]
        if operation.body is None:
            assert "requestBody" not in entry
            continue
        bodies += 1
        schema = _resolve(doc, entry["requestBody"]["content"]["application/json"]["schema"])
        assert schema == _resolve(doc, {"$ref": f"#/components/schemas/{operation.body.__name__}"})
        models = [operation.body]
        if not issubclass(operation.body, Request):  # Events: one event or a list of them
            models = [m for m in Request.__subclasses__() if m.__name__ == "Event"]
        for model in models:
            assert model.model_config.get("extra") == "forbid", model
            assert model.model_config.get("strict") is True, model
            assert model.model_json_schema()["additionalProperties"] is False, model
    assert bodies == 6  # events, create and change webhooks, redrive, replay, tenant tokens


def test_security_and_error_answers_of_every_operation() -> None:
    doc = generated()
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == {"operatorToken", "producerToken", "tenantToken"}
    # What a tenant token may call (each limited to its tenant); every other route is a 403.
    tenant_routes = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if path.startswith(("/v1/webhooks", "/v1/deliveries"))
        or path in ("/v1/redrive", "/v1/replay", "/v1/status")
    }
    assert all(s == {**s, "type": "http", "scheme": "bearer"} for s in schemes.values())
    for path, item in doc["paths"].items():
        for method, entry in item.items():
            where = f"{method.upper()} {path}"
            statuses = {int(s) for s in entry["responses"]}
            if path == "/healthz":
                assert entry["security"] == [], where
                assert statuses == {200}, where
                continue
            assert {401, 503} <= statuses, where
            if (method, path) == ("post", "/v1/events"):
                assert entry["security"] == [{"operatorToken": []}, {"producerToken": []}]
                assert {202, 400, 403, 409, 413} <= statuses  # 403: a tenant token
            elif (method, path) in tenant_routes:
                assert entry["security"] == [{"operatorToken": []}, {"tenantToken": []}], where
                assert 403 in statuses, where
            else:
                assert entry["security"] == [{"operatorToken": []}], where
                assert 403 in statuses, where
            if "requestBody" in entry:
                assert {400, 408, 413} <= statuses, where
            if "{" in path:
                assert 404 in statuses, where
            for status in statuses - {200, 201, 202, 204}:
                if (path, status) == ("/readyz", 503):
                    continue
                content = entry["responses"][str(status)].get("content")
                if method == "head":
                    assert content is None, where
                else:
                    assert content == {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }, (where, status)


# -- the property-based run ---------------------------------------------------------------

# Examples per operation and mode. HEAD operations are GET without a body: fewer of them.
POSITIVE_EXAMPLES = 20
NEGATIVE_EXAMPLES = 12
HEAD_EXAMPLES = 5
MIN_REQUESTS = 1000
# The run with a tenant token: fewer examples, the same checks.
TENANT_EXAMPLES = 6
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_importing_the_fence_leaves_this_process_alone() -> None:
    """Only `python -m tests.fenced_daemon` is fenced: this test process imports the module
    (FENCE_ERROR), and its in-process daemons must still deliver anywhere on loopback."""
    import socket

    from webhookd import reqwest_sender, sender

    assert sender.Sender.post.__module__ == "webhookd.sender"
    assert reqwest_sender.ReqwestSender.post.__module__ == "webhookd.reqwest_sender"
    assert "no_names" not in getattr(socket.getaddrinfo, "__qualname__", "")


@dataclass
class Seeds:
    """Real ids, so generated requests reach more than 404s: some path parameters and replay
    bodies are swapped for them."""

    webhooks: list[str]  # for show, change, rotate-secret
    doomed: list[str]  # for remove only, so the others last the whole run
    test_target: str  # for /test only: its URL stays the Recorder's, so tests answer at once
    deliveries: list[tuple[str, str]]  # (webhook_id, event_id) with attempts
    events: list[str]


@dataclass
class Report:
    requests: int = 0
    by_phase: collections.Counter[str] = field(default_factory=collections.Counter)
    by_operation: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    by_status: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _swap_ids(case: Any, seeds: Seeds, pick: Callable[[list[Any]], Any]) -> None:
    """Now and then, a generated id is replaced with one that exists."""
    path = case.operation.path
    params = dict(case.path_parameters or {})
    if path.endswith("/test"):
        params["webhook_id"] = pick([params.get("webhook_id"), seeds.test_target])
    elif path.endswith("/attempts"):
        generated = (params.get("webhook_id"), params.get("event_id"))
        params["webhook_id"], params["event_id"] = pick([generated, *seeds.deliveries])
    elif "webhook_id" in params:
        known = seeds.doomed if case.operation.method.lower() == "delete" else seeds.webhooks
        params["webhook_id"] = pick([params["webhook_id"], *known])
    if params:
        case.path_parameters = params
    if path == "/v1/replay" and isinstance(case.body, dict) and "event_id" in case.body:
        case.body = {**case.body, "event_id": pick([case.body["event_id"], *seeds.events])}


def _examples(operation: Any, mode: GenerationMode) -> int:
    if operation.method.lower() == "head":
        return HEAD_EXAMPLES
    return POSITIVE_EXAMPLES if mode is GenerationMode.POSITIVE else NEGATIVE_EXAMPLES


def _can_be_invalid(operation: Any) -> bool:
    raw = operation.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody") or raw.get("security") != [])


def run_schemathesis(
    doc: dict[str, Any], base_url: str, seeds: Seeds, token: str = TOKEN, examples: int = 0
) -> Report:
    """Every operation of `doc`, positive and negative examples, against `base_url`, with
    `token` (the operator's unless given); `examples`: per operation and mode, if not the
    defaults."""
    report = Report()
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_dict(doc)
    session = requests.Session()

    def exercise(operation: Any, mode: GenerationMode) -> Callable[[], None]:
        @hypothesis.settings(
            max_examples=examples or _examples(operation, mode),
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def one_request(case: Any, data: st.DataObject) -> None:
            _swap_ids(case, seeds, lambda options: data.draw(st.sampled_from(options)))
            send(case, mode.value)

        return cast(Callable[[], None], one_request)

    def send(case: Any, phase: str) -> None:
        response = case.call(base_url=base_url, session=session, headers=auth, timeout=30)
        report.requests += 1
        report.by_phase[phase] += 1
        report.by_operation[(case.operation.label, phase)] += 1
        report.by_status[(f"{case.method} {case.operation.path}", response.status_code)] += 1
        case.validate_response(response, checks=CHECKS, headers=auth)

    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        # Coverage: schemathesis's deterministic cases, valid and invalid: each parameter
        # and field at its boundaries and beyond, of every wrong type, missing, and the
        # operation's path with the methods it does not take (405).
        coverage = schema.iter_coverage_cases(
            operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=schema.config.generation_for(operation=operation),
        )
        for case in coverage:
            try:
                send(case, "coverage")
            except (Exception, BaseExceptionGroup) as exc:
                report.failures.append(f"{operation.label} (coverage): {exc}"[:4000])
        # Fuzzing: random requests, valid and invalid, some with ids that exist.
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} ({mode.value})"
            if mode is GenerationMode.NEGATIVE and not _can_be_invalid(operation):
                # /healthz: no parameter, no body, no token: no request to it is invalid.
                report.skipped.append(f"{label}: nothing in it can be invalid")
                continue
            try:
                exercise(operation, mode)()
            except (Exception, BaseExceptionGroup) as exc:  # shrunk by hypothesis; see below
                report.failures.append(f"{label}: {type(exc).__name__}: {exc}"[:4000])
    report.seconds = time.monotonic() - started
    return report


async def seed(api: Api, receiver: Recorder) -> Seeds:
    target = await api.create_webhook(receiver.url_for("/test-target"), description="target")
    webhooks = [
        (await api.create_webhook(receiver.url_for(f"/seed-{i}")))["webhook_id"] for i in range(8)
    ]
    events = await api.emit([{"type": "seed", "data": {"n": n}} for n in range(3)])
    await receiver.wait_for_requests(3 * 9, deadline=30)
    deliveries = [(d["webhook_id"], d["event_id"]) for d in await api.deliveries()]
    return Seeds(webhooks[:4], webhooks[4:], target["webhook_id"], deliveries, events)


async def seed_tenant(api: Api, receiver: Recorder, tenant: str) -> Seeds:
    """The same for one tenant, for the run with its token."""
    target = await api.create_webhook(receiver.url_for("/t-target"), tenant=tenant)
    webhooks = [
        (await api.create_webhook(receiver.url_for(f"/t-seed-{i}"), tenant=tenant))["webhook_id"]
        for i in range(4)
    ]
    events = await api.emit([{"type": "seed", "data": {"n": n}, "tenant": tenant} for n in (0, 1)])
    await api.wait_status({"delivered": 10}, deadline=30, tenant=tenant)
    deliveries = [(d["webhook_id"], d["event_id"]) for d in await api.deliveries(tenant=tenant)]
    return Seeds(webhooks[:2], webhooks[2:], target["webhook_id"], deliveries, events)


async def test_schemathesis_runs_the_whole_api_against_a_live_daemon(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    async with Recorder() as receiver:
        config = write_config(
            tmp_path,
            delivery={"max_attempts": 2, "retry_schedule": ["100ms"]},
            logging={"level": "info"},
        )
        daemon = DaemonProcess(
            config,
            tmp_path / "daemon.log",
            env={"WEBHOOKD_TEST_FENCE": f"127.0.0.1:{receiver.port}"},
            module="tests.fenced_daemon",  # its deliveries fenced to the receiver
        )
        daemon_process.append(daemon)
        await asyncio.to_thread(daemon.start)
        async with Api(daemon.url) as api:
            doc = await api.ok("GET", "/openapi.json")
            assert doc == generated()
            seeds = await seed(api, receiver)

            report = await asyncio.to_thread(run_schemathesis, doc, daemon.url, seeds)

            print(
                f"\nschemathesis: {report.requests} requests in {report.seconds:.1f}s "
                f"({', '.join(f'{phase} {n}' for phase, n in sorted(report.by_phase.items()))})"
            )
            for (label, status), count in sorted(report.by_status.items()):
                print(f"  {label} -> {status}: {count}")
            for skipped in report.skipped:
                print(f"  skipped: {skipped}")
            assert report.failures == [], "\n\n".join(report.failures)
            # Every operation of the document was tried, both ways where anything can be invalid.
            operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
            for phase in ("coverage", "positive", "negative"):
                tried = {
                    tuple(label.split(" ", 1)) for label, p in report.by_operation if p == phase
                }
                skipped = {tuple(s.split(" (")[0].split(" ", 1)) for s in report.skipped}
                assert tried == operations - (skipped if phase == "negative" else set()), phase
            assert report.requests >= MIN_REQUESTS
            assert all(status < 500 for _, status in report.by_status), report.by_status

            # Again with a tenant token: every route, each answer as documented (403 where
            # the token may not go, 404 for what is not its tenant's).
            tenant_seeds = await seed_tenant(api, receiver, "schemathesis-tenant")
            made = await api.ok("POST", "/v1/tenants/schemathesis-tenant/tokens", {})
            as_tenant = await asyncio.to_thread(
                run_schemathesis, doc, daemon.url, tenant_seeds, made["token"], TENANT_EXAMPLES
            )
            print(f"  with a tenant token: {as_tenant.requests} requests")
            for (label, status), count in sorted(as_tenant.by_status.items()):
                print(f"    {label} -> {status}: {count}")
            assert as_tenant.failures == [], "\n\n".join(as_tenant.failures)
            tried = {tuple(label.split(" ", 1)) for label, _ in as_tenant.by_operation}
            assert tried == operations
            statuses = collections.Counter(status for _, status in as_tenant.by_status)
            assert statuses[200] and statuses[403] and statuses[404], statuses
            others = await api.ok("GET", "/v1/webhooks", params={"limit": "1000"})
            tenants = {h["tenant"] for h in others["items"]}
            assert "schemathesis-tenant" in tenants

            # The daemon still delivers: a new webhook to the Recorder gets a new event,
            # and every webhook schemathesis made up got it too, refused by the fence. Made-up
            # rate limits (down to one delivery in 1000 s), fifo orderings (a new event
            # waits for every older one) and timeouts (down to 60 ns, which reqwest keeps to
            # the letter) would hold it back by design: cleared first.
            made_up = (await api.ok("GET", "/v1/webhooks", params={"limit": "1000"}))["items"]
            for hook in made_up:
                await api.ok(
                    "PATCH",
                    f"/v1/webhooks/{hook['webhook_id']}",
                    {"rate_limit": None, "ordering": "none", "timeout": None},
                )
            after = await api.create_webhook(receiver.url_for("/after"))
            assert await api.emit({"id": "evt_after_schemathesis", "type": "after", "data": 1})
            await api.wait_status(
                {"delivered": 1},
                deadline=30,
                event_id="evt_after_schemathesis",
                webhook_id=after["webhook_id"],
            )
            arrived = [r for r in receiver.requests if r.path == "/after"]
            assert [r.headers["webhook-id"] for r in arrived] == ["evt_after_schemathesis"]
            assert (await api.ok("GET", "/readyz"))["status"] == "ready"
            fenced = await _fenced_deliveries(api, receiver, "evt_after_schemathesis")
            print(f"  deliveries of the last event to made-up URLs, fenced: {fenced}")
            assert fenced >= 1  # generated URLs were accepted, and stopped at the fence

    daemon.stop()
    output = daemon.output()
    assert "Traceback" not in output
    errors = [line for line in daemon.lines() if line.get("level") in ("error", "critical")]
    assert errors == []


async def _fenced_deliveries(api: Api, receiver: Recorder, event_id: str) -> int:
    """Wait until every delivery of `event_id` is finished; those to webhooks whose URL is
    not the Recorder's must have been refused by the fence (never sent)."""
    webhooks = {
        w["webhook_id"]: w["url"]
        for w in (await api.ok("GET", "/v1/webhooks", params={"limit": "1000"}))["items"]
    }
    end = time.monotonic() + 30
    while True:
        rows = await api.deliveries(event_id=event_id)
        if all(r["status"] in ("delivered", "dead", "parked") for r in rows):
            break
        assert time.monotonic() < end, rows
        await asyncio.sleep(0.1)
    fenced = 0
    for row in rows:
        url = webhooks.get(row["webhook_id"], "")
        if url.startswith(receiver.url + "/"):
            assert row["status"] == "delivered", (url, row.get("last_error"), row)
        elif row["status"] == "dead":
            assert row["last_error"] == FENCE_ERROR, row
            fenced += 1
    return fenced
