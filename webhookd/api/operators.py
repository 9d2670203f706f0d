"""Operator routes: deliveries and their attempts, redrive, replay, status, health, metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from webhookd.api.common import (
    ApiError,
    delivery_cursor,
    json_object,
    limit,
    read_json,
    services,
)
from webhookd.states import Status
from webhookd.store.base import DeliveryFilter

routes = web.RouteTableDef()


def _status(value: Any, allowed: tuple[Status, ...] = tuple(Status)) -> Status:
    try:
        status = Status(value)
    except ValueError:
        names = ", ".join(s.value for s in allowed)
        raise ApiError(400, "invalid_request", f"status: one of {names}") from None
    if status not in allowed:
        names = ", ".join(s.value for s in allowed)
        raise ApiError(400, "invalid_request", f"status: one of {names}")
    return status


def _time(value: Any, key: str) -> datetime:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_request", f"{key}: an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_request", f"{key}: an RFC 3339 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, "invalid_request", f"{key}: a string")
    return value


@routes.get("/v1/deliveries")
async def deliveries(request: web.Request) -> web.Response:
    q = request.query
    filt = DeliveryFilter(
        webhook_id=q.get("webhook_id") or None,
        event_id=q.get("event_id") or None,
        status=_status(q["status"]) if q.get("status") else None,
    )
    page = await services(request).store.list_deliveries(
        filt, limit(request), delivery_cursor(request)
    )
    return web.json_response({"items": page.items, "next": page.next})


@routes.get("/v1/deliveries/{webhook_id}/{event_id}/attempts")
async def attempts(request: web.Request) -> web.Response:
    items = await services(request).store.list_attempts(
        request.match_info["webhook_id"], request.match_info["event_id"]
    )
    return web.json_response({"items": items, "next": None})


@routes.post("/v1/redrive")
async def redrive(request: web.Request) -> web.Response:
    body = json_object(await read_json(request), {"webhook_id", "status", "since"})
    status = _status(body.get("status"), (Status.DEAD, Status.PARKED))
    since = _time(body["since"], "since") if body.get("since") is not None else None
    svc = services(request)
    count = await svc.store.redrive(status, _optional_str(body, "webhook_id"), since)
    svc.pool.wake()
    return web.json_response({"count": count})


@routes.post("/v1/replay")
async def replay(request: web.Request) -> web.Response:
    body = json_object(await read_json(request), {"event_id", "webhook_id"})
    event_id = _optional_str(body, "event_id")
    if not event_id:
        raise ApiError(400, "invalid_request", "event_id: required")
    svc = services(request)
    count = await svc.store.replay(event_id, _optional_str(body, "webhook_id"))
    svc.pool.wake()
    return web.json_response({"count": count})


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    svc = services(request)
    report = await svc.store.status()
    svc.metrics.observe_status(report)
    return web.json_response(
        {
            "by_status": {s.value: report.by_status.get(s.value, 0) for s in Status},
            "by_webhook": report.by_webhook,
            "oldest_due_age_seconds": report.oldest_due_age_seconds,
            "scanner_lag_events": report.scanner_lag_events,
            "scanner_cursor": report.scanner_cursor,
            "webhooks_active": report.webhooks_active,
            "disabled_webhooks": report.disabled_webhooks,
            "workers_busy": svc.pool.busy,
            "workers": svc.pool.size,
            "writer": svc.store.stats(),
            **svc.extra,
        }
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    checks = {
        "database": svc.ready and svc.store.available(),
        "scanner": svc.scanner.running,
        "workers": svc.pool.running,
    }
    ready = svc.ready and all(checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


STATUS_MAX_AGE = 1.0


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    svc = services(request)
    # The queue figures cost a pass over the queue: scrapes (or anything polling this)
    # share one pass a second; the counters beside them are always current.
    if svc.metrics.status_age() >= STATUS_MAX_AGE:
        svc.metrics.observe_status(await svc.store.status())
    svc.metrics.workers_busy.set(svc.pool.busy)
    return web.Response(body=svc.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
