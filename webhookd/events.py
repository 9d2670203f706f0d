"""Events as producers post them, validated, and the canonical body built once per event.

What an event id and an event type may contain is decided here, at ingest, because a
value that cannot travel must never be stored: the id is the ``webhook-id`` header of
every attempt, and an id aiohttp refuses to put in a header (a newline, NUL, ESC, DEL)
would fail every attempt for ever (issue 15). Both are **1 to 256 printable ASCII
characters, 0x21-0x7E**: letters, digits and punctuation, no space, no control
character, nothing beyond ASCII.

* Ids: exactly what an HTTP header value carries safely and unchanged. A space is legal
  inside a header value but not at its ends (receivers strip it), and bytes above 0x7E
  are "obs-text" that receivers may reject or decode differently: the id must reach
  every receiver byte for byte, since they deduplicate on it.
* Types travel only in the body (JSON can carry anything), but the same rule applies,
  as the contract says: types are matched byte for byte against subscriptions, so
  non-ASCII would let look-alike or differently normalised spellings (NFC "é" versus
  NFD "e" + accent) silently fail to match; and a type is shown in logs, the CLI and
  query strings, where spaces and control characters are ambiguous or dangerous.
  Conventional types ("invoice.paid", "user/created", "v2:order_shipped") all fit.
"""

from __future__ import annotations

import functools
import json
import re
import secrets as _random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webhookd import tracing
from webhookd.tenants import tenant_problem

MAX_ID_LENGTH = 256
# Event types of webhookd's own operational events (webhookd/queue/operational.py).
RESERVED_PREFIX = "webhookd."
MAX_TYPE_LENGTH = 256
# Printable ASCII but space: what ids and types are made of (see the module docstring).
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


class EventError(ValueError):
    """An event a producer sent that cannot be accepted, with the field at fault."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    event_type: str
    payload: str  # canonical JSON of `data`
    occurred_at: datetime
    body: bytes  # what every subscriber receives, byte for byte
    tenant: str | None = None  # only this tenant's webhooks receive it (SPEC "Tenants")
    # The producer's W3C trace context (webhookd/tracing.py), None when it sent none.
    traceparent: str | None = None

    def __reduce__(self) -> tuple[type[NewEvent], tuple[Any, ...]]:
        # Ingests cross to the database process 500 events at a time (see Claim).
        return NewEvent, (
            self.event_id,
            self.event_type,
            self.payload,
            self.occurred_at,
            self.body,
            self.tenant,
            self.traceparent,
        )


# json.dumps with keyword arguments builds a new JSONEncoder on every call; an event's body
# took three of them. The same encoders, made once.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_STRING = json.JSONEncoder(ensure_ascii=False)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def new_event_id() -> str:
    return "evt_" + _random.token_hex(12)


@functools.lru_cache(maxsize=64)
def _timestamp(dt: datetime) -> str:
    """The body's timestamp: remembered, as the events of a request without an occurred_at
    of their own all carry the request's time."""
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


def token_problem(value: Any, max_length: int) -> str | None:
    """Why ``value`` is not a valid event id or type, or ``None`` if it is one: a string
    of 1 to ``max_length`` printable ASCII characters (0x21-0x7E)."""
    if isinstance(value, str) and 0 < len(value) <= max_length and _PRINTABLE.fullmatch(value):
        return None  # the usual case, before any message is built
    rule = f"a string of 1 to {max_length} printable ASCII characters (no spaces)"
    if value is None:
        return f"required, {rule}"
    if not isinstance(value, str):
        return f"not a string; {rule}"
    if not value:
        return f"empty; {rule}"
    if len(value) > max_length:
        return f"{len(value)} characters; {rule}"
    if not _PRINTABLE.fullmatch(value):
        bad = next(ch for ch in value if not "\x21" <= ch <= "\x7e")
        what = "a space" if bad == " " else f"the character {bad!a} (U+{ord(bad):04X})"
        return f"{what} at position {value.index(bad)} is not allowed; {rule}"
    return None


def _token(value: Any, where: str, max_length: int) -> str:
    problem = token_problem(value, max_length)
    if problem is not None or not isinstance(value, str):
        raise EventError(f"{where}: {problem}")
    return value


# A \u0000 escape in canonical JSON, not an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def parse_event(raw: Any, index: int, now: datetime, traceparent: str | None = None) -> NewEvent:
    """`traceparent`: the request's, for an event that carries none of its own."""
    if not isinstance(raw, dict):
        raise EventError(f"events[{index}]: expected an object")
    unknown = set(raw) - {"id", "type", "data", "occurred_at", "tenant", "traceparent"}
    if unknown:
        raise EventError(f"events[{index}]: unknown field(s) {', '.join(sorted(unknown))}")
    event_type = _token(raw.get("type"), f"events[{index}].type", MAX_TYPE_LENGTH)
    if event_type.startswith(RESERVED_PREFIX):
        raise EventError(
            f"events[{index}].type: {event_type!r}: types starting with {RESERVED_PREFIX!r} are "
            "webhookd's own operational events; producers may not post them"
        )
    event_id = raw.get("id")
    if event_id is None:
        event_id = new_event_id()
    else:
        event_id = _token(event_id, f"events[{index}].id", MAX_ID_LENGTH)
    if "data" not in raw:
        raise EventError(f"events[{index}].data: required")
    occurred_at = _parse_time(raw["occurred_at"], index) if "occurred_at" in raw else now
    tenant = raw.get("tenant")
    if tenant is not None and (problem := tenant_problem(tenant)) is not None:
        raise EventError(f"events[{index}].tenant: {problem}")
    payload = canonical_json(raw["data"])
    if "\\u0000" in payload and _NUL_ESCAPE.search(payload):
        raise EventError(
            f"events[{index}].data: a string holds U+0000 (NUL), which no engine can store "
            "(PostgreSQL's jsonb refuses it) and many receivers mishandle"
        )
    if "traceparent" in raw:
        problem = tracing.traceparent_problem(raw["traceparent"])
        if problem is not None:
            raise EventError(f"events[{index}].traceparent: {problem}")
        traceparent = tracing.stored(raw["traceparent"])
    return NewEvent(
        event_id,
        event_type,
        payload,
        occurred_at,
        body(event_id, event_type, occurred_at, payload),
        tenant,
        traceparent,
    )


def body(event_id: str, event_type: str, occurred_at: datetime, payload: str) -> bytes:
    """canonical_json({"id", "type", "timestamp", "data"}), with `data` already encoded:
    the keys in sorted order around it, so that `data` is encoded once, not twice, and
    the three strings are encoded as canonical_json would (half the time of a dict)."""
    return (
        f'{{"data":{payload},"id":{_string(event_id)},'
        f'"timestamp":"{_timestamp(occurred_at)}","type":{_string(event_type)}}}'
    ).encode()


def _string(value: str) -> str:
    return _STRING.encode(value)
