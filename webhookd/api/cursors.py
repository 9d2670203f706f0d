"""The API's page cursors: opaque to clients, made and read here only. The store takes
and returns where a listing continues as a typed key (store/base.DeliveryKey)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webhookd.store.base import DeliveryKey
from webhookd.store.records import naive_utc


def encode_cursor(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: Sequence[type]) -> list[Any]:
    """The parts of a page cursor, checked against `shape` (a type per part)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
    if (
        not isinstance(parts, list)
        or len(parts) != len(shape)
        or not all(isinstance(p, t) for p, t in zip(parts, shape, strict=True))
    ):
        raise ValueError("invalid cursor")
    return parts


def delivery_cursor(key: DeliveryKey) -> str:
    created_at, webhook_id, event_id = key
    return encode_cursor([naive_utc(created_at).isoformat(), webhook_id, event_id])


def parse_delivery_cursor(cursor: str) -> DeliveryKey:
    created, webhook_id, event_id = decode_cursor(cursor, (str, str, str))
    try:
        return naive_utc(datetime.fromisoformat(created)), webhook_id, event_id
    except ValueError:
        raise ValueError("invalid cursor") from None
