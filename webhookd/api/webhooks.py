"""Subscriptions: create, list, show, change, remove, rotate the secret, send a test."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from webhookd import guard, signing
from webhookd.api.common import (
    ApiError,
    json_object,
    limit,
    read_json,
    services,
    webhook_cursor,
)
from webhookd.events import canonical_json, new_event_id
from webhookd.store.base import WebhookPatch

routes = web.RouteTableDef()

MAX_DESCRIPTION = 1024
MAX_EVENT_TYPES = 256
TEST_ATTEMPTS = 3
TEST_BACKOFF = (0.5, 1.0)


def _url(request: web.Request, value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_url", "url: required, a string")
    allow = services(request).settings.delivery.allow_private_destinations
    try:
        return guard.validate_url(value, allow_private=allow)
    except ValueError as exc:
        raise ApiError(400, "invalid_url", f"url: {exc}") from None


def _event_types(value: Any) -> list[str]:
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_EVENT_TYPES
        or not all(isinstance(t, str) and t for t in value)
    ):
        raise ApiError(400, "invalid_request", "event_types: a list of non-empty strings")
    return sorted(set(value))


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise ApiError(
            400, "invalid_request", f"description: a string of at most {MAX_DESCRIPTION}"
        )
    return value


@routes.post("/v1/webhooks")
async def create(request: web.Request) -> web.Response:
    body = json_object(await read_json(request), {"url", "event_types", "secret", "description"})
    url = _url(request, body.get("url"))
    secret = body.get("secret")
    if secret is None:
        secret = signing.new_secret()
    else:
        try:
            if not isinstance(secret, str):
                raise ValueError("a secret is a string")
            signing.secret_key(secret)
        except ValueError as exc:
            raise ApiError(400, "invalid_secret", f"secret: {exc}") from None
    created = await services(request).store.create_webhook(
        url, _event_types(body.get("event_types")), secret, _description(body.get("description"))
    )
    # The only time the secret is shown: the subscriber needs it to verify signatures.
    return web.json_response({**created, "secret": secret}, status=201)


@routes.get("/v1/webhooks")
async def list_all(request: web.Request) -> web.Response:
    page = await services(request).store.list_webhooks(limit(request), webhook_cursor(request))
    return web.json_response({"items": page.items, "next": page.next})


@routes.get("/v1/webhooks/{webhook_id}")
async def show(request: web.Request) -> web.Response:
    found = await services(request).store.get_webhook(request.match_info["webhook_id"])
    return web.json_response(found)


@routes.patch("/v1/webhooks/{webhook_id}")
async def change(request: web.Request) -> web.Response:
    body = json_object(await read_json(request), {"url", "event_types", "active", "description"})
    active = body.get("active")
    if active is not None and not isinstance(active, bool):
        raise ApiError(400, "invalid_request", "active: true or false")
    patch = WebhookPatch(
        url=_url(request, body["url"]) if "url" in body else None,
        event_types=_event_types(body["event_types"]) if "event_types" in body else None,
        active=active,
        description=_description(body["description"]) if "description" in body else None,
    )
    svc = services(request)
    updated = await svc.store.update_webhook(request.match_info["webhook_id"], patch)
    if active:
        svc.pool.wake()
    return web.json_response(updated)


@routes.delete("/v1/webhooks/{webhook_id}")
async def remove(request: web.Request) -> web.Response:
    await services(request).store.delete_webhook(request.match_info["webhook_id"])
    return web.Response(status=204)


@routes.post("/v1/webhooks/{webhook_id}/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    svc = services(request)
    secret = signing.new_secret()
    grace = svc.settings.delivery.rotation_grace
    updated = await svc.store.rotate_secret(request.match_info["webhook_id"], secret, grace)
    return web.json_response({**updated, "secret": secret})


@routes.post("/v1/webhooks/{webhook_id}/test")
async def send_test(request: web.Request) -> web.Response:
    """A test event now, with a short inline burst; not queued, so it never lingers."""
    svc = services(request)
    url, secrets = await svc.store.get_webhook_secrets(request.match_info["webhook_id"])
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
        result = await svc.sender.post(url, body, headers)
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
