"""W3C trace context across the hop: a producer's `traceparent` stored with its event, and
a child of it sent with every attempt.

The trace id and flags travel unchanged; each attempt gets a span id of its own, so a
receiver's trace shows one span per attempt under the producer's. Spans are exported only
when `tracing.otlp_endpoint` is set: then webhookd/otel.py (the OpenTelemetry SDK, the
`webhookd[otel]` extra) is imported; without it nothing of the SDK is loaded and an
attempt costs one random span id when its event carries a traceparent, nothing otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

# version-traceid-parentid-flags, lower-case hex (W3C Trace Context, level 1). Version ff
# is invalid, and an all-zero trace or parent id is invalid; a later version may add
# fields after the flags (a receiver of version 00 keeps the first four).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
MAX_LENGTH = 512


def traceparent_problem(value: object) -> str | None:
    """Why `value` is not a W3C traceparent, or None if it is one."""
    if not isinstance(value, str):
        return "not a string; a W3C traceparent, 00-<32 hex>-<16 hex>-<2 hex>"
    match = _TRACEPARENT.fullmatch(value) if len(value) <= MAX_LENGTH else None
    if match is None:
        return f"{value[:80]!r} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
    version, trace_id, span_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return f"{value[:80]!r}: version {version} is not a valid traceparent version"
    if rest is not None and not re.fullmatch(r"-[\x21-\x7e]*", rest):
        return f"{value[:80]!r} is not a W3C traceparent"
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return f"{value[:80]!r}: an all-zero trace id or parent id is invalid"
    return None


def stored(value: str) -> str:
    """A valid traceparent as webhookd keeps it: version 00, the four fields a version-00
    receiver understands."""
    _, trace_id, span_id, flags = value.split("-")[:4]
    return f"00-{trace_id}-{span_id}-{flags}"


def child(traceparent: str) -> str:
    """The traceparent of an attempt: the same trace and flags, a span id of its own."""
    span_id = os.urandom(8).hex()
    return f"{traceparent[:36]}{span_id}{traceparent[52:]}"


@dataclass(slots=True)
class AttemptSpan:
    """What an attempt's span records; `traceparent` is the header the attempt sends."""

    traceparent: str | None
    attributes: dict[str, str | int] = field(default_factory=dict)


class Tracer(Protocol):
    def ingest(self, traceparent: str | None, events: int) -> AbstractContextManager[str | None]:
        """A span around an ingest; yields the traceparent its events get when they carry
        none of their own (None: they get none)."""
        ...

    def attempt(
        self, traceparent: str | None, webhook_id: str, attempt: int
    ) -> AbstractContextManager[AttemptSpan]:
        """A span around one attempt; the caller fills in status and outcome."""
        ...

    def close(self) -> None: ...


class NoTracer:
    """No export: attempts of a traced event send a child traceparent, nothing more."""

    @contextmanager
    def ingest(self, traceparent: str | None, events: int) -> Iterator[str | None]:
        yield None

    @contextmanager
    def attempt(
        self, traceparent: str | None, webhook_id: str, attempt: int
    ) -> Iterator[AttemptSpan]:
        yield AttemptSpan(None if traceparent is None else child(traceparent))

    def close(self) -> None:
        pass


def make_tracer(otlp_endpoint: str | None) -> Tracer:
    if not otlp_endpoint:
        return NoTracer()
    # Imported here only: a daemon without tracing never loads the SDK.
    from webhookd.otel import OtelTracer

    return OtelTracer(otlp_endpoint)
