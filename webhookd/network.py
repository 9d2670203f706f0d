"""What a receiver's network requires of one webhook's attempts: extra request headers, a
client certificate (mTLS) and an attempt timeout of its own.

:class:`DeliveryOptions` travels with each claim; a webhook that sets none of them has none
(``None``), so that plain deliveries carry and check nothing more than before. The header
rules (SPEC "What a receiver's network may require") live here so that the API and the
sender agree on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "MASK",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
    "DeliveryOptions",
    "decode",
    "encode",
    "header_problem",
    "masked_headers",
    "patched",
    "shown",
]

MAX_HEADERS = 20
MAX_HEADER_VALUE = 1024
MASK = "**********"
# An HTTP field name: a token (RFC 9110 section 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Printable ASCII and space, nothing else: no CR, LF or other control characters.
_VALUE = re.compile(r"[ -~]*")
# What webhookd sets itself on every attempt, or what HTTP framing owns.
RESERVED = frozenset(
    {"content-type", "content-length", "host", "user-agent", "connection", "transfer-encoding"}
)
RESERVED_PREFIX = "webhook-"


def header_problem(name: Any, value: Any) -> str | None:
    """Why a custom header cannot be sent, or ``None`` if it can."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name) or len(name) > 256:
        return (
            f"{name!r} is not an HTTP header name (a token of letters, digits and !#$%&'*+-.^_`|~)"
        )
    lowered = name.lower()
    if lowered in RESERVED or lowered.startswith(RESERVED_PREFIX):
        return f"{name!r} is set by webhookd (webhook-*, " + ", ".join(sorted(RESERVED)) + ")"
    if not isinstance(value, str):
        return f"{name}: the value is a string"
    if len(value) > MAX_HEADER_VALUE:
        return f"{name}: the value is longer than {MAX_HEADER_VALUE} characters"
    if not _VALUE.fullmatch(value):
        return f"{name}: the value is printable ASCII, without CR, LF or control characters"
    if value != value.strip():
        return f"{name}: the value has white space at its start or end"
    return None


def masked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The names of a webhook's headers with their values masked (they may be credentials)."""
    return dict.fromkeys(headers or {}, MASK)


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """One webhook's own transport options; a claim carries ``None`` when it sets none."""

    headers: tuple[tuple[str, str], ...] = ()
    # A name of [tls.client_certificates], presented on https.
    client_certificate: str | None = None
    # Seconds; the sender keeps it at most delivery.timeout.
    timeout: float | None = None

    def __repr__(self) -> str:  # header values may be credentials
        names = [name for name, _ in self.headers]
        return (
            f"DeliveryOptions(headers={names!r}, client_certificate="
            f"{self.client_certificate!r}, timeout={self.timeout!r})"
        )

    def applied(
        self, headers: Mapping[str, str], timeout: float, certificates: Container[str]
    ) -> tuple[Mapping[str, str], float | None, str | None] | str:
        """What an attempt sends with these options: webhookd's ``headers`` over the
        webhook's, the webhook's timeout if shorter than the daemon's ``timeout`` (else
        None), its client certificate; or why it cannot be sent (a certificate name not
        among ``certificates``, the configured ones)."""
        certificate = self.client_certificate
        if certificate is not None and certificate not in certificates:
            return f"client certificate {certificate!r} is not configured (tls.client_certificates)"
        if self.headers:
            headers = {**dict(self.headers), **headers}
        shorter = self.timeout if self.timeout is not None and self.timeout < timeout else None
        return headers, shorter, certificate

    @classmethod
    def of(
        cls,
        headers: Mapping[str, str] | None,
        client_certificate: str | None,
        timeout: float | None,
    ) -> DeliveryOptions | None:
        """The options of a webhook's stored settings, or ``None`` if it sets none."""
        if not headers and client_certificate is None and timeout is None:
            return None
        return cls(tuple((headers or {}).items()), client_certificate, timeout)


# -- how the stores keep them: one JSON text column, NULL for a webhook that sets none --------


def encode(
    headers: Mapping[str, str] | None, client_certificate: str | None, timeout: float | None
) -> str | None:
    """The stored form of a webhook's options (``delivery_options``), or ``None``."""
    kept: dict[str, Any] = {}
    if headers:
        kept["headers"] = dict(headers)
    if client_certificate is not None:
        kept["client_certificate"] = client_certificate
    if timeout is not None:
        kept["timeout"] = timeout
    return json.dumps(kept, sort_keys=True, separators=(",", ":")) if kept else None


def _fields(stored: str | None) -> tuple[dict[str, str], str | None, float | None]:
    if not stored:
        return {}, None, None
    data = json.loads(stored)
    return dict(data.get("headers") or {}), data.get("client_certificate"), data.get("timeout")


@lru_cache(maxsize=4096)
def decode(stored: str | None) -> DeliveryOptions | None:
    """What a claim carries for a stored ``delivery_options`` (cached: claims repeat it)."""
    return DeliveryOptions.of(*_fields(stored))


class Keep:
    """A field a patch leaves as it is."""


KEEP = Keep()


def patched(
    stored: str | None,
    headers: Mapping[str, str] | Keep | None = KEEP,
    client_certificate: str | Keep | None = KEEP,
    timeout: float | Keep | None = KEEP,
) -> str | None:
    """The stored options after a change of some of them (None or {} clears a field)."""
    now_headers, now_certificate, now_timeout = _fields(stored)
    return encode(
        now_headers if isinstance(headers, Keep) else headers,
        now_certificate if isinstance(client_certificate, Keep) else client_certificate,
        now_timeout if isinstance(timeout, Keep) else timeout,
    )


def shown(stored: str | None, public_key: str | None) -> dict[str, Any]:
    """The webhook object's fields for these options: header values masked (the create or
    PATCH answer shows them once, from the request)."""
    headers, certificate, timeout = _fields(stored)
    return {
        "headers": masked_headers(headers),
        "signing": "v1a" if public_key else "v1",
        "public_key": public_key,
        "client_certificate": certificate,
        "timeout": timeout,
    }
