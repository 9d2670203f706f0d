"""POST /v1/events: producers append events; 202 only once they are committed."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from webhookd.api.common import ApiError, Operation, documented, read_json, services
from webhookd.api.models import Accepted, Events, parse_events
from webhookd.events import EventError, NewEvent, parse_event
from webhookd.tracing import stored, traceparent_problem

routes = web.RouteTableDef()


@routes.post("/v1/events")
@documented(
    Operation(
        summary="Append one event or a list of them",
        description="Answers 202 once the events are committed. The same id with the same "
        "type and data again is accepted and stored once; the same id with other content is "
        "a 409. One bad event refuses the whole list. Producer tokens may call this route. "
        "A W3C `traceparent` header is stored with every event that carries none of its own.",
        tag="events",
        body=Events,
        responses={202: Accepted},
        errors={
            400: "an event or a field of one is invalid (`invalid_event`, naming "
            "`events[i].field`), the body is not JSON (`invalid_json`), the list is empty, "
            "or the traceparent header is not a W3C traceparent (`invalid_traceparent`)",
            409: "an id already stored with other content, or twice in one list with "
            "different content (`conflict`)",
            413: "the body is over admin.max_body_bytes (`payload_too_large`) or holds more "
            "events than admin.max_batch_events (`too_many_events`)",
            403: "a tenant token: events are posted by producers and the operator (`forbidden`)",
            503: "starting, the database is unavailable, or its disk is full (`storage_full`)",
        },
        producer=True,
    )
)
async def post_events(request: web.Request) -> web.Response:
    svc = services(request)
    raw = await read_json(request)
    raw_events = raw if isinstance(raw, list) else [raw]
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
    # The models check what the document describes, in the API's words; events.py then
    # builds each event (its id, canonical body) and applies any rule of its own beyond
    # what a schema can say (U+0000 in data), so the API and the stores share one builder.
    parse_events(raw_events)
    header = request.headers.get("traceparent")
    if header is not None:
        problem = traceparent_problem(header)
        if problem is not None:
            raise ApiError(400, "invalid_traceparent", f"traceparent (header): {problem}")
        header = stored(header)
    with svc.tracer.ingest(header, len(raw_events)) as ingest_span:
        now = datetime.now(UTC)
        events: list[NewEvent] = []
        try:
            for index, raw_event in enumerate(raw_events):
                events.append(parse_event(raw_event, index, now, header or ingest_span))
        except EventError as exc:
            raise ApiError(400, "invalid_event", str(exc)) from None
        except OverflowError:
            raise ApiError(
                400,
                "invalid_event",
                f"events[{len(events)}].occurred_at: out of the supported range",
            ) from None
        # Wake the scanner now (see Scanner.wake): its scan then queues behind this ingest
        # and, while the writer is busy, shares one transaction with it. Not the workers:
        # the scan claims what it enqueues and wakes them only for rows it left due
        # (WorkerPool.take); woken here too, both claimers cost an empty claim per request
        # on PostgreSQL.
        svc.scanner.wake()
        result = await svc.store.ingest(events)
    svc.metrics.events_ingested.inc(result.inserted)
    return web.json_response({"ids": result.ids}, status=202)
