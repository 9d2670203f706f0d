"""Standard Webhooks signatures and secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _random
from collections.abc import Iterable

from webhookd import __version__

SECRET_PREFIX = "whsec_"
USER_AGENT = f"webhookd/{__version__}"


def new_secret(n_bytes: int = 32) -> str:
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(n_bytes)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key: the decoded bytes after the whsec_ prefix. Raises ValueError if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        raise ValueError("a secret is 'whsec_' followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("a secret decodes to 24-64 bytes")
    return key


def sign(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<sig>` per key, space-separated, so receivers mid-rotation accept either secret."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )


def headers(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, msg_id, timestamp, body),
    }
