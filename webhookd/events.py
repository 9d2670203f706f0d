"""Events as producers post them, validated, and the canonical body built once per event."""

from __future__ import annotations

import json
import secrets as _random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_ID_LENGTH = 256
MAX_TYPE_LENGTH = 256


class EventError(ValueError):
    """An event a producer sent that cannot be accepted, with the field at fault."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    event_type: str
    payload: str  # canonical JSON of `data`
    occurred_at: datetime
    body: bytes  # what every subscriber receives, byte for byte

    def __reduce__(self) -> tuple[type[NewEvent], tuple[Any, ...]]:
        # Ingests cross to the database process 500 events at a time (see Claim).
        return NewEvent, (self.event_id, self.event_type, self.payload, self.occurred_at, self.body)


def canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def new_event_id() -> str:
    return "evt_" + _random.token_hex(12)


def _timestamp(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(value: Any, index: int) -> datetime:
    if not isinstance(value, str):
        raise EventError(f"events[{index}].occurred_at: expected an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(
            f"events[{index}].occurred_at: {value!r} is not an RFC 3339 timestamp"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise EventError(f"events[{index}].occurred_at: out of the supported range") from None


def parse_event(raw: Any, index: int, now: datetime) -> NewEvent:
    if not isinstance(raw, dict):
        raise EventError(f"events[{index}]: expected an object")
    unknown = set(raw) - {"id", "type", "data", "occurred_at"}
    if unknown:
        raise EventError(f"events[{index}]: unknown field(s) {', '.join(sorted(unknown))}")
    event_type = raw.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_TYPE_LENGTH:
        raise EventError(f"events[{index}].type: required, a non-empty string")
    event_id = raw.get("id")
    if event_id is None:
        event_id = new_event_id()
    elif not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LENGTH:
        raise EventError(f"events[{index}].id: a non-empty string of at most {MAX_ID_LENGTH}")
    if "data" not in raw:
        raise EventError(f"events[{index}].data: required")
    occurred_at = _parse_time(raw["occurred_at"], index) if "occurred_at" in raw else now
    payload = canonical_json(raw["data"])
    return NewEvent(
        event_id, event_type, payload, occurred_at, body(event_id, event_type, occurred_at, payload)
    )


def body(event_id: str, event_type: str, occurred_at: datetime, payload: str) -> bytes:
    """canonical_json({"id", "type", "timestamp", "data"}), with `data` already encoded:
    the keys in sorted order around it, so that `data` is encoded once, not twice."""
    head = canonical_json(
        {"id": event_id, "timestamp": _timestamp(occurred_at), "type": event_type}
    )
    return f'{{"data":{payload},{head[1:]}'.encode()


def same_content(stored_type: str, stored_payload: str, event: NewEvent) -> bool:
    """A re-post is the same event when type and data match (occurred_at defaults differ)."""
    return stored_type == event.event_type and stored_payload == event.payload
