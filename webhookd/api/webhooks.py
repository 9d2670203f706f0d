"""Subscriptions: create, list, show, change, remove, rotate the secret, send a test."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from webhookd import network, signing
from webhookd.api.common import (
    ApiError,
    Operation,
    documented,
    owned,
    read_json,
    services,
    tenant_scope,
)
from webhookd.api.models import (
    TestResult,
    Webhook,
    WebhookChange,
    WebhookCreate,
    WebhookPage,
    WebhookQuery,
    WebhookWithSecret,
    parse,
    parse_query,
)
from webhookd.api.render import webhook_json
from webhookd.events import canonical_json, new_event_id
from webhookd.store.base import UNSET, Ordering, WebhookLimits, WebhookPatch

routes = web.RouteTableDef()

TEST_ATTEMPTS = 3
TEST_BACKOFF = (0.5, 1.0)

_UNKNOWN = {404: "no webhook with this id (`not_found`)"}


def _context(request: web.Request) -> dict[str, Any]:
    """What checks depend on: private destinations are refused unless allowed, client
    certificates are those of the config, a timeout is at most delivery.timeout."""
    settings = services(request).settings
    return {
        "allow_private": settings.delivery.allow_private_destinations,
        "client_certificates": frozenset(settings.tls.client_certificates),
        "max_timeout": settings.delivery.timeout,
    }


@routes.post("/v1/webhooks")
@documented(
    Operation(
        summary="Create a webhook",
        description="The answer holds the secret (v1) and the header values: the only time "
        "they are shown. With `signing: v1a` webhookd makes an ed25519 key pair; the answer "
        "shows its public key, and `secret` is null (the private key is never shown).",
        tag="webhooks",
        body=WebhookCreate,
        responses={201: WebhookWithSecret},
        errors={
            400: "a field is invalid (`invalid_url`, `invalid_secret`, `invalid_request`), "
            "naming it, or the body is not JSON (`invalid_json`)",
            403: "a tenant token naming another tenant (`forbidden`)",
        },
        tenant=True,
    )
)
async def create(request: web.Request) -> web.Response:
    body = parse(WebhookCreate, await read_json(request), context=_context(request))
    tenant = tenant_scope(request, body.tenant)
    public_key = None
    shown_secret: str | None
    if body.signing == "v1a":
        if body.secret is not None:
            raise ApiError(
                400, "invalid_secret", "secret: not with signing v1a (webhookd makes its keys)"
            )
        secret, public_key = signing.new_key_pair()
        shown_secret = None
    else:
        secret = body.secret if body.secret is not None else signing.new_secret()
        shown_secret = secret
    limits = WebhookLimits(
        body.rate_limit,
        body.max_in_flight,
        Ordering(body.ordering),
        network.encode(body.headers, body.client_certificate, body.timeout),
        public_key,
    )
    created = await services(request).store.create_webhook(
        body.url, body.event_types or [], secret, body.description or "", limits, tenant
    )
    # The only time the secret and the header values are shown.
    shown = {**webhook_json(created), "secret": shown_secret, "headers": body.headers or {}}
    return web.json_response(shown, status=201)


@routes.get("/v1/webhooks")
@documented(
    Operation(
        summary="List webhooks",
        description="In order of webhook id, a page at a time. With a tenant token: that "
        "tenant's only.",
        tag="webhooks",
        query=WebhookQuery,
        responses={200: WebhookPage},
        errors={403: "a tenant token naming another tenant (`forbidden`)"},
        tenant=True,
    )
)
async def list_all(request: web.Request) -> web.Response:
    query = parse_query(WebhookQuery, request.query)
    tenant = tenant_scope(request, query.tenant)
    page = await services(request).store.list_webhooks(query.limit, query.cursor, tenant)
    return web.json_response({"items": [webhook_json(w) for w in page.items], "next": page.next})


@routes.get("/v1/webhooks/{webhook_id}")
@documented(
    Operation(
        summary="Show a webhook",
        tag="webhooks",
        responses={200: Webhook},
        errors=_UNKNOWN,
        tenant=True,
    )
)
async def show(request: web.Request) -> web.Response:
    webhook_id = request.match_info["webhook_id"]
    found = await owned(request, webhook_id)
    if found is None:
        found = await services(request).store.get_webhook(webhook_id)
    return web.json_response(webhook_json(found))


@routes.patch("/v1/webhooks/{webhook_id}")
@documented(
    Operation(
        summary="Change a webhook",
        description="Only the fields present change. `active: false` parks its deliveries; "
        "`active: true` re-drives them. `rate_limit` and `max_in_flight` are cleared with "
        "null. Switching to `ordering: fifo` delivers the pending rows in order from the "
        "oldest; changing `rate_limit` makes the rows it was holding back due now. "
        "`headers` replaces every header (its values are shown in this answer only); "
        "`client_certificate` and `timeout` are cleared with null.",
        tag="webhooks",
        body=WebhookChange,
        responses={200: Webhook},
        errors={
            **_UNKNOWN,
            400: "a field is invalid, naming it, or `tenant` differs from the webhook's "
            "(set at creation)",
            403: "a tenant token naming another tenant (`forbidden`)",
        },
        tenant=True,
    )
)
async def change(request: web.Request) -> web.Response:
    body = parse(WebhookChange, await read_json(request), context=_context(request))
    given = body.model_fields_set
    webhook_id = request.match_info["webhook_id"]
    found = await owned(request, webhook_id)
    if "tenant" in given:
        tenant_scope(request, body.tenant)
        if found is None:
            found = await services(request).store.get_webhook(webhook_id)
        if body.tenant != found.tenant:
            raise ApiError(
                400,
                "invalid_request",
                "tenant: set when the webhook is created and not changeable; "
                "create a webhook in the other tenant instead",
            )
    patch = WebhookPatch(
        url=body.url if "url" in given else None,
        event_types=(body.event_types or []) if "event_types" in given else None,
        active=body.active,
        description=(body.description or "") if "description" in given else None,
        rate_limit=body.rate_limit if "rate_limit" in given else UNSET,
        max_in_flight=body.max_in_flight if "max_in_flight" in given else UNSET,
        ordering=Ordering(body.ordering) if body.ordering is not None else None,
        headers=(body.headers or {}) if "headers" in given else UNSET,
        client_certificate=body.client_certificate if "client_certificate" in given else UNSET,
        timeout=body.timeout if "timeout" in given else UNSET,
    )
    svc = services(request)
    updated = webhook_json(await svc.store.update_webhook(webhook_id, patch))
    if body.active or given & {"rate_limit", "ordering"}:
        svc.pool.wake()  # rows may be due now
    if "headers" in given:
        updated = {**updated, "headers": body.headers or {}}  # shown once, as set
    return web.json_response(updated)


@routes.delete("/v1/webhooks/{webhook_id}")
@documented(
    Operation(
        summary="Remove a webhook",
        description="Its queued deliveries are parked, not dropped.",
        tag="webhooks",
        responses={204: None},
        errors=_UNKNOWN,
        tenant=True,
    )
)
async def remove(request: web.Request) -> web.Response:
    await owned(request, request.match_info["webhook_id"])
    await services(request).store.delete_webhook(request.match_info["webhook_id"])
    return web.Response(status=204)


@routes.post("/v1/webhooks/{webhook_id}/rotate-secret")
@documented(
    Operation(
        summary="Rotate a webhook's secret",
        description="A new secret, shown once; the previous one keeps signing for "
        "delivery.rotation_grace (default 1 day). A v1a webhook gets a new key pair: the "
        "answer shows its public key, `secret` is null, and the previous key keeps signing "
        "for the grace period.",
        tag="webhooks",
        responses={200: WebhookWithSecret},
        errors=_UNKNOWN,
        tenant=True,
    )
)
async def rotate_secret(request: web.Request) -> web.Response:
    await owned(request, request.match_info["webhook_id"])
    svc = services(request)
    webhook_id = request.match_info["webhook_id"]
    current = await svc.store.get_webhook(webhook_id)
    # The scheme never changes: a v1a webhook gets a new key pair, a v1 one a new secret.
    v1a = bool(current.public_key)
    secret = signing.new_key_pair()[0] if v1a else signing.new_secret()
    grace = svc.settings.delivery.rotation_grace
    updated = await svc.store.rotate_secret(webhook_id, secret, grace)
    return web.json_response({**webhook_json(updated), "secret": None if v1a else secret})


@routes.post("/v1/webhooks/{webhook_id}/test")
@documented(
    Operation(
        summary="Send a test event now",
        description="A `webhookd.test` event, signed like any other, with up to 3 attempts "
        "in about 1.5 s; not queued. The answer is the outcome.",
        tag="webhooks",
        responses={200: TestResult},
        errors=_UNKNOWN,
        tenant=True,
    )
)
async def send_test(request: web.Request) -> web.Response:
    """A test event now, with a short inline burst; not queued, so it never lingers."""
    await owned(request, request.match_info["webhook_id"])
    svc = services(request)
    url, secrets, options = await svc.store.get_webhook_secrets(request.match_info["webhook_id"])
    event_id = "evt_test_" + new_event_id()[4:]
    now = datetime.now(UTC)
    body = canonical_json(
        {
            "id": event_id,
            "type": "webhookd.test",
            "timestamp": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "data": {"webhook_id": request.match_info["webhook_id"]},
        }
    ).encode()
    keys = [signing.secret_key(s) for s in secrets]
    attempts: list[dict[str, Any]] = []
    for attempt in range(1, TEST_ATTEMPTS + 1):
        headers = signing.headers(keys, event_id, int(time.time()), body)
        result = await svc.sender.post(url, body, headers, options)
        ok = result.status_code is not None and 200 <= result.status_code < 300
        attempts.append(
            {
                "attempt": attempt,
                "status_code": result.status_code,
                "duration_ms": round(result.duration_ms, 1),
                "error": result.error,
                "response_excerpt": result.response_excerpt,
            }
        )
        if ok or attempt == TEST_ATTEMPTS:
            break
        await asyncio.sleep(TEST_BACKOFF[attempt - 1])
    last = attempts[-1]
    return web.json_response(
        {
            "event_id": event_id,
            "delivered": last["status_code"] is not None and 200 <= last["status_code"] < 300,
            "status_code": last["status_code"],
            "duration_ms": last["duration_ms"],
            "error": last["error"],
            "attempts": attempts,
        }
    )
