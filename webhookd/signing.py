"""Standard Webhooks signatures and secrets.

Two schemes, chosen by the stored secret's prefix so that everything that keeps, rotates and
hands out secrets works the same for both:

* `v1` (`whsec_` secrets): HMAC-SHA256 with the decoded secret as the key.
* `v1a` (`whsk_` secrets): ed25519, the asymmetric scheme of Standard Webhooks. webhookd makes
  the key pair; the private key (`whsk_` + base64 of the 32-byte seed) is stored like an HMAC
  secret and never shown, the public key (`whpk_` + base64 of its 32 raw bytes) is what the
  receiver verifies with.

Both sign the same content, `{webhook-id}.{webhook-timestamp}.{body}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _random
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeAlias

from webhookd import __version__

if TYPE_CHECKING:
    # Imported when a v1a key is first used: the cryptography package's bindings cost a
    # process that signs only with HMAC about 15 MB of memory (the bench's peak RSS).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SECRET_PREFIX = "whsec_"
PRIVATE_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"
USER_AGENT = f"webhookd/{__version__}"

# What signs: the HMAC key's bytes (v1) or an ed25519 private key (v1a).
Key: TypeAlias = "bytes | Ed25519PrivateKey"


def new_secret(n_bytes: int = 32) -> str:
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(n_bytes)).decode("ascii")


def new_key_pair() -> tuple[str, str]:
    """A new v1a key pair: (private `whsk_...`, public `whpk_...`)."""
    seed = _random.token_bytes(32)
    private = PRIVATE_KEY_PREFIX + base64.b64encode(seed).decode("ascii")
    return private, public_key(private)


def _ed25519(private: str) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        seed = base64.b64decode(private[len(PRIVATE_KEY_PREFIX) :], validate=True)
    except ValueError:
        raise ValueError("a private key is 'whsk_' followed by base64") from None
    if len(seed) != 32:
        raise ValueError("a private key decodes to 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(private: str) -> str:
    """The `whpk_` public key of a `whsk_` private key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = _ed25519(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def scheme(secret: str) -> str:
    """`v1a` for a `whsk_` private key, `v1` for anything else (an HMAC secret)."""
    return "v1a" if secret.startswith(PRIVATE_KEY_PREFIX) else "v1"


def secret_key(secret: str) -> Key:
    """What signs with a stored secret: the HMAC key (the decoded bytes after `whsec_`), or
    the ed25519 private key of a `whsk_` secret. Raises ValueError if malformed."""
    if secret.startswith(PRIVATE_KEY_PREFIX):
        return _ed25519(secret)
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        raise ValueError("a secret is 'whsec_' followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("a secret decodes to 24-64 bytes")
    return key


def _one(key: Key, signed: bytes) -> str:
    if isinstance(key, bytes):
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")
    return "v1a," + base64.b64encode(key.sign(signed)).decode("ascii")


def sign(keys: Iterable[Key], msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<sig>` or `v1a,<sig>` per key, space-separated, so receivers mid-rotation accept
    either key."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return " ".join(_one(key, signed) for key in keys)


def headers(keys: Iterable[Key], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, msg_id, timestamp, body),
    }
