"""Operator routes: deliveries and their attempts, redrive, replay, status, health, metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from webhookd.api.common import (
    ApiError,
    Operation,
    caller_tenant,
    delivery_cursor,
    documented,
    owned,
    parse_delivery_cursor,
    read_json,
    services,
    tenant_scope,
)
from webhookd.api.models import (
    AttemptPage,
    Count,
    DeliveryPage,
    DeliveryQuery,
    Redrive,
    Replay,
    parse,
    parse_query,
)
from webhookd.api.operation_models import Health, MetricsText, QueueStatus, Readiness
from webhookd.api.tenant_models import StatusQuery
from webhookd.states import Status
from webhookd.store.base import DeliveryFilter, StatusReport
from webhookd.store.records import iso, utcnow

routes = web.RouteTableDef()

_OTHER_TENANT = "a tenant token naming another tenant (`forbidden`)"


@routes.get("/v1/deliveries")
@documented(
    Operation(
        summary="List deliveries (queue rows)",
        description="Newest first, a page at a time; filter by webhook, event, status and "
        "tenant. With a tenant token: that tenant's only.",
        tag="deliveries",
        query=DeliveryQuery,
        responses={200: DeliveryPage},
        errors={403: _OTHER_TENANT},
        tenant=True,
    )
)
async def deliveries(request: web.Request) -> web.Response:
    query = parse_query(DeliveryQuery, request.query)
    filt = DeliveryFilter(
        webhook_id=query.webhook_id,
        event_id=query.event_id,
        status=query.status,
        tenant=tenant_scope(request, query.tenant),
    )
    after = None if query.cursor is None else parse_delivery_cursor(query.cursor)
    page = await services(request).store.list_deliveries(filt, query.limit, after)
    cursor = None if page.next is None else delivery_cursor(page.next)
    return web.json_response({"items": page.items, "next": cursor})


@routes.get("/v1/deliveries/{webhook_id}/{event_id}/attempts")
@documented(
    Operation(
        summary="The attempts of one delivery",
        description="From the append-only log, oldest first.",
        tag="deliveries",
        responses={200: AttemptPage},
        errors={404: "no delivery of this event to this webhook (`not_found`)"},
        tenant=True,
    )
)
async def attempts(request: web.Request) -> web.Response:
    await owned(request, request.match_info["webhook_id"])
    items = await services(request).store.list_attempts(
        request.match_info["webhook_id"], request.match_info["event_id"]
    )
    return web.json_response({"items": items, "next": None})


@routes.post("/v1/redrive")
@documented(
    Operation(
        summary="Re-drive dead or parked deliveries",
        description="Sets the matching deliveries due now; answers how many. With a tenant "
        "token: that tenant's only.",
        tag="deliveries",
        body=Redrive,
        responses={200: Count},
        errors={403: _OTHER_TENANT, 404: "a tenant token naming another tenant's webhook"},
        tenant=True,
    )
)
async def redrive(request: web.Request) -> web.Response:
    body = parse(Redrive, await read_json(request))
    tenant = tenant_scope(request, body.tenant)
    if body.webhook_id is not None:
        await owned(request, body.webhook_id)
    svc = services(request)
    count = await svc.store.redrive(Status(body.status), body.webhook_id, body.since, tenant)
    svc.pool.wake()
    return web.json_response({"count": count})


@routes.post("/v1/replay")
@documented(
    Operation(
        summary="Deliver an event again",
        description="Even if delivered: to every webhook it went to, or to one.",
        tag="deliveries",
        body=Replay,
        responses={200: Count},
        errors={
            404: "no such event, or no such webhook of the event's tenant (`not_found`); "
            "with a tenant token, also an event of another tenant"
        },
        tenant=True,
    )
)
async def replay(request: web.Request) -> web.Response:
    body = parse(Replay, await read_json(request))
    svc = services(request)
    count = await svc.store.replay(body.event_id, body.webhook_id, caller_tenant(request))
    svc.pool.wake()
    return web.json_response({"count": count})


@routes.get("/v1/status")
@documented(
    Operation(
        summary="Queue, scanner and workers",
        description="`tenant=`: the counts, webhooks and oldest due delivery of that "
        "tenant's webhooks only. A tenant token must name its own tenant.",
        tag="operations",
        query=StatusQuery,
        responses={200: QueueStatus},
        errors={403: "a tenant token without `tenant=` or naming another (`forbidden`)"},
        tenant=True,
    )
)
async def status(request: web.Request) -> web.Response:
    query = parse_query(StatusQuery, request.query)
    if caller_tenant(request) is not None and query.tenant is None:
        raise ApiError(403, "forbidden", "a tenant token may read /v1/status?tenant=<its own>")
    tenant = tenant_scope(request, query.tenant)
    svc = services(request)
    report = await svc.store.status(tenant)
    if tenant is None:  # the metrics show the whole queue
        svc.metrics.observe_status(report)
    return web.json_response(
        {
            "by_status": {s.value: report.by_status.get(s.value, 0) for s in Status},
            "by_webhook": report.by_webhook,
            "oldest_due_age_seconds": report.oldest_due_age_seconds,
            "scanner_lag_events": report.scanner_lag_events,
            "scanner_cursor": report.scanner_cursor,
            "events_rejected": report.events_rejected,
            "settings_disagree": report.settings_disagree,
            "webhooks_active": report.webhooks_active,
            "disabled_webhooks": report.disabled_webhooks,
            "fifo_blocked": fifo_blocked(report),
            "workers_busy": svc.pool.busy,
            "workers": svc.pool.size,
            "writer": svc.store.stats(),
            **svc.extra,
        }
    )


def fifo_blocked(report: StatusReport) -> dict[str, dict[str, Any]]:
    """The fifo webhooks held up by a failing head, as status shows them."""
    now = utcnow()
    return {
        webhook_id: {
            "event_id": blocked.event_id,
            "blocked_since": iso(blocked.since),
            "blocked_seconds": round(max(0.0, (now - blocked.since).total_seconds()), 3),
            "attempts": blocked.attempts,
        }
        for webhook_id, blocked in report.fifo_blocked.items()
    }


@routes.get("/healthz")
@documented(
    Operation(
        summary="Liveness",
        description="No token needed.",
        tag="operations",
        responses={200: Health},
        public=True,
    )
)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
@documented(
    Operation(
        summary="Readiness",
        description="200 once the database is open and the scanner and workers run; 503 "
        "before (migrations, start-up rescue), while the database is unavailable, and "
        "while the scanner's scans keep failing.",
        tag="operations",
        responses={200: Readiness, 503: Readiness},
    )
)
async def readyz(request: web.Request) -> web.Response:
    svc = services(request)
    checks = {
        "database": svc.ready and svc.store.available(),
        "scanner": svc.scanner.healthy,
        "workers": svc.pool.running,
    }
    ready = svc.ready and all(checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


STATUS_MAX_AGE = 1.0


@routes.get("/metrics")
@documented(
    Operation(
        summary="Prometheus metrics",
        tag="operations",
        responses={200: MetricsText},
        media_type="text/plain",
    )
)
async def metrics(request: web.Request) -> web.Response:
    svc = services(request)
    # The queue figures cost a pass over the queue: scrapes (or anything polling this)
    # share one pass a second; the counters beside them are always current.
    if svc.metrics.status_age() >= STATUS_MAX_AGE:
        svc.metrics.observe_status(await svc.store.status())
    svc.metrics.workers_busy.set(svc.pool.busy)
    return web.Response(body=svc.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
