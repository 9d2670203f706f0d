"""The webhook fields of SPEC "What a receiver's network may require", as pydantic field
types with their checks (see models.py for how field types work): `headers`, `signing`,
`client_certificate`, `timeout`.

What a check needs of the daemon's settings (the configured client certificates, the
daemon's delivery.timeout) arrives in the validation context, from api/webhooks.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo

from webhookd.network import MAX_HEADER_VALUE, MAX_HEADERS, header_problem

__all__ = [
    "ClientCertificateName",
    "Headers",
    "NetworkChange",
    "NetworkShown",
    "Signing",
    "WebhookTimeout",
]


def _context(info: ValidationInfo) -> Mapping[str, Any]:
    return info.context if isinstance(info.context, Mapping) else {}


def _headers(value: Any) -> dict[str, str] | None:
    """null or {}: none."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError('an object of header names and values ({"name": "value"})')
    if len(value) > MAX_HEADERS:
        raise ValueError(f"at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, text in value.items():
        problem = header_problem(name, text)
        if problem is not None:
            raise ValueError(problem)
        if name.lower() in seen:
            raise ValueError(f"{name!r} is given twice (names are case-insensitive)")
        seen.add(name.lower())
    return dict(value) or None


def _signing(value: Any) -> str:
    if value not in ("v1", "v1a") or not isinstance(value, str):
        raise ValueError("one of v1 (HMAC-SHA256), v1a (ed25519)")
    return str(value)


def _client_certificate(value: Any, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    names = _context(info).get("client_certificates", ())
    if not isinstance(value, str) or value not in names:
        known = ", ".join(sorted(names)) or "none is configured"
        raise ValueError(
            f"not a client certificate of the config ([tls.client_certificates.NAME]: {known})"
        )
    return value


def _timeout(value: Any, info: ValidationInfo) -> float | None:
    if value is None:
        return None
    limit = float(_context(info).get("max_timeout", math.inf))
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= limit
    ):
        raise ValueError(
            f"seconds, above 0 and at most delivery.timeout ({limit:g}), or null for that"
        )
    return float(value)


Headers = Annotated[
    dict[str, Annotated[str, Field(max_length=MAX_HEADER_VALUE)]] | None,
    Field(
        max_length=MAX_HEADERS,
        description="extra request headers sent on every attempt, at most 20: HTTP token "
        "names (not webhook-*, content-type, content-length, host, user-agent, connection, "
        "transfer-encoding), printable ASCII values of at most 1 KiB without CR/LF. Values "
        "may be credentials: shown in the answer to the create or change that set them, "
        "masked (**********) everywhere else. null or {}: none",
    ),
    BeforeValidator(_headers),
]
Signing = Annotated[
    Literal["v1", "v1a"],
    Field(
        description="v1: HMAC-SHA256 with the secret; v1a: ed25519, webhookd makes the key "
        "pair and shows the public key as public_key (whpk_...). Set at creation"
    ),
    BeforeValidator(_signing),
]
ClientCertificateName = Annotated[
    str | None,
    Field(
        description="the name of a client certificate of the config "
        "([tls.client_certificates.NAME]), presented to the receiver on https (mTLS); "
        "null: none"
    ),
    BeforeValidator(_client_certificate),
]
WebhookTimeout = Annotated[
    float | None,
    Field(
        gt=0,
        description="seconds an attempt to this webhook may take, connect included; at most "
        "delivery.timeout. null: delivery.timeout",
    ),
    BeforeValidator(_timeout),
]


class NetworkChange(BaseModel):
    """The fields a create or a change may set (mixed into WebhookCreate, WebhookChange)."""

    headers: Headers = None
    client_certificate: ClientCertificateName = None
    timeout: WebhookTimeout = None


class NetworkShown(BaseModel):
    """How a webhook object shows them (mixed into Webhook)."""

    headers: dict[str, str] = Field(
        description="the names of its extra headers; values are masked (**********) but in "
        "the answer to the create or change that set them"
    )
    signing: Literal["v1", "v1a"]
    public_key: str | None = Field(
        description="signing v1a: the ed25519 public key receivers verify with (whpk_ and "
        "the base64 of its 32 bytes); null for v1"
    )
    client_certificate: str | None = Field(description="presented on https (mTLS); null: none")
    timeout: float | None = Field(description="seconds per attempt; null: delivery.timeout")
