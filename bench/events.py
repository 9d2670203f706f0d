"""The bench's events: their data, their canonical bodies, and ingest requests of them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

INGEST_BATCH = 500  # events per POST /v1/events


def event_data(i: int) -> dict[str, Any]:
    """The `data` of bench event i: makes a canonical body of about 200 bytes."""
    return {
        "invoice": f"in_{i:010d}",
        "customer": "cus_" + format(i * 2654435761 % 16**12, "012x"),
        "amount": 1000 + i % 9000,
        "currency": "eur",
        "paid": True,
        "lines": 1 + i % 7,
    }


def canonical_body(event_id: str, event_type: str, data: Mapping[str, Any]) -> bytes:
    """Byte for byte what the daemon stores and sends (webhookd.events builds it)."""
    from webhookd.events import parse_event

    raw = {"id": event_id, "type": event_type, "data": dict(data)}
    return parse_event(raw, 0, datetime.now(UTC)).body


def batches(n_events: int, n_types: int, tag: str) -> list[bytes]:
    """Pre-encoded POST /v1/events bodies: INGEST_BATCH events each, types round-robin."""
    out = []
    for start in range(0, n_events, INGEST_BATCH):
        events = [
            {"id": f"evt_{tag}_{i:08d}", "type": f"t{i % n_types}", "data": event_data(i)}
            for i in range(start, min(n_events, start + INGEST_BATCH))
        ]
        out.append(json.dumps(events).encode())
    return out
