"""POST /v1/events: producers append events; 202 only once they are committed."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from webhookd.api.common import ApiError, read_json, services
from webhookd.events import EventError, NewEvent, parse_event

routes = web.RouteTableDef()


@routes.post("/v1/events")
async def post_events(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    raw_events = body if isinstance(body, list) else [body]
    if not raw_events:
        raise ApiError(400, "invalid_request", "an empty list of events")
    limit = svc.settings.admin.max_batch_events
    if len(raw_events) > limit:
        raise ApiError(
            413,
            "too_many_events",
            f"{len(raw_events)} events in one request; "
            f"the limit is {limit} (admin.max_batch_events)",
        )
    now = datetime.now(UTC)
    events: list[NewEvent] = []
    try:
        for index, raw in enumerate(raw_events):
            events.append(parse_event(raw, index, now))
    except EventError as exc:
        raise ApiError(400, "invalid_event", str(exc)) from None
    except OverflowError:
        # e.g. "0001-01-01T00:00:00+01:00": valid RFC 3339, but before datetime.min in UTC.
        raise ApiError(
            400, "invalid_event", f"events[{len(events)}].occurred_at: out of the supported range"
        ) from None
    # Wake the scanner and the workers now: their scan and claim then queue behind this
    # ingest and, while the writer is busy, share one transaction with it.
    svc.scanner.wake()
    svc.pool.wake()
    result = await svc.store.ingest(events)
    svc.metrics.events_ingested.inc(result.inserted)
    return web.json_response({"ids": result.ids}, status=202)
