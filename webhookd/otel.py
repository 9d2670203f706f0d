"""Spans exported over OTLP/HTTP with the OpenTelemetry SDK (the `webhookd[otel]` extra).

Imported only when `tracing.otlp_endpoint` is set (webhookd/tracing.make_tracer). Spans
carry ids, counts, status codes and outcomes: never a secret, a header value or a body.
The SDK's batch processor exports from a thread of its own, so an attempt only records
its span; a collector that is down costs dropped spans, never a delivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from webhookd import __version__
from webhookd.tracing import AttemptSpan

# Spans wait at most this long in memory before they are sent.
EXPORT_DELAY_MS = 1000
_PROPAGATOR = TraceContextTextMapPropagator()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: a base URL (nothing after the host) gets /v1/traces, as
    OTEL_EXPORTER_OTLP_ENDPOINT does; a URL with a path is used as it is."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def _header(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parent(traceparent: str | None) -> Context | None:
    if traceparent is None:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


class OtelTracer:
    def __init__(self, endpoint: str) -> None:
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": "webhookd", "service.version": __version__})
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=traces_url(endpoint)),
                schedule_delay_millis=EXPORT_DELAY_MS,
            )
        )
        # Not the global provider: the daemon's spans are its own, whatever else runs in
        # the process (tests run several daemons in one).
        self._tracer = self._provider.get_tracer("webhookd", __version__)

    @contextmanager
    def ingest(self, traceparent: str | None, events: int) -> Iterator[str | None]:
        with self._tracer.start_as_current_span(
            "webhookd ingest",
            context=_parent(traceparent),
            kind=SpanKind.SERVER,
            attributes={"webhookd.events": events},
        ) as span:
            yield _header(span.get_span_context())

    @contextmanager
    def attempt(
        self, traceparent: str | None, webhook_id: str, attempt: int
    ) -> Iterator[AttemptSpan]:
        with self._tracer.start_as_current_span(
            "webhookd attempt",
            context=_parent(traceparent),
            kind=SpanKind.CLIENT,
            attributes={"webhookd.webhook_id": webhook_id, "webhookd.attempt": attempt},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            # An event without a traceparent still gets its attempts traced, each a trace
            # of its own; the receiver joins it through the header.
            recorded = AttemptSpan(_header(span.get_span_context()))
            try:
                yield recorded
            finally:
                span.set_attributes(recorded.attributes)
                if recorded.attributes.get("webhookd.outcome") not in (None, "delivered"):
                    span.set_status(Status(StatusCode.ERROR))

    def close(self) -> None:
        self._provider.shutdown()
