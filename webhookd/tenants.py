"""Tenants: what a tenant name may be, and tenant tokens (made, split, hashed, checked).

A tenant is one customer of the producer (SPEC "Tenants"). Its name is 1 to 128
characters of ``A-Z a-z 0-9 _ . : -``: it is shown in URLs (``/v1/tenants/{tenant}``),
query strings, logs and the CLI, where anything wider would need escaping somewhere.

A tenant token is ``wht_<token_id>.<secret>``: the id names the stored row (so a token is
checked with one look-up, not against every token), the secret is 32 random bytes. Only
``sha256(secret)`` is stored; the comparison with it is constant-time
(:func:`hmac.compare_digest`), and a token of a shape this module never makes is refused
before any look-up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_TENANT_LENGTH = 128
TENANT_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
_TENANT = re.compile(TENANT_PATTERN[1:-1])
_TENANT_CHARS = re.compile(r"[A-Za-z0-9_.:-]")

TOKEN_PREFIX = "wht_"
_TOKEN_ID_HEX = 16  # 8 random bytes: ids only need to be unique, the secret is the secret
TOKEN_ID_PATTERN = r"^tt_[0-9a-f]{16}$"
_TOKEN_ID = re.compile(TOKEN_ID_PATTERN[1:-1])
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")

# A token's lifetime: at least a second, at most ten years; 90 days unless asked.
MIN_TTL = 1
MAX_TTL = 10 * 365 * 86400
DEFAULT_TTL = 90 * 86400
MAX_TOKEN_DESCRIPTION = 1024


def tenant_problem(value: Any) -> str | None:
    """Why `value` is not a tenant name, or None if it is one."""
    if isinstance(value, str) and _TENANT.fullmatch(value):
        return None
    rule = f"1 to {MAX_TENANT_LENGTH} characters of A-Z a-z 0-9 _ . : -"
    if not isinstance(value, str):
        return f"not a string; {rule}"
    if not value:
        return f"empty; {rule}"
    if len(value) > MAX_TENANT_LENGTH:
        return f"{len(value)} characters; {rule}"
    bad = next(ch for ch in value if not _TENANT_CHARS.fullmatch(ch))
    what = "a space" if bad == " " else f"the character {bad!a} (U+{ord(bad):04X})"
    return f"{what} at position {value.index(bad)} is not allowed; {rule}"


def is_token_id(value: str) -> bool:
    return bool(_TOKEN_ID.fullmatch(value))


@dataclass(frozen=True, slots=True)
class NewToken:
    token_id: str
    token: str  # shown once, never stored
    digest: str  # what is stored: sha256 of the secret, hex


def new_token() -> NewToken:
    token_id = "tt_" + _random.token_hex(_TOKEN_ID_HEX // 2)
    secret = _random.token_urlsafe(32)
    return NewToken(token_id, f"{TOKEN_PREFIX}{token_id}.{secret}", digest(secret))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def split_token(presented: bytes) -> tuple[str, str] | None:
    """(token_id, secret) of a presented bearer token of the tenant kind, else None."""
    if not presented.startswith(TOKEN_PREFIX.encode()):
        return None
    try:
        text = presented[len(TOKEN_PREFIX) :].decode("ascii")
    except UnicodeDecodeError:
        return None
    token_id, dot, secret = text.partition(".")
    if not dot or not _TOKEN_ID.fullmatch(token_id) or not _SECRET.fullmatch(secret):
        return None
    return token_id, secret


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A tenant token as the stores keep it (the digest, never the token)."""

    token_id: str
    tenant: str
    digest: str
    description: str
    created_at: datetime  # naive UTC, as the stores keep times
    expires_at: datetime

    def __reduce__(self) -> tuple[type[StoredToken], tuple[Any, ...]]:
        # It crosses from the DuckDB process to the daemon (store/remote.py).
        return StoredToken, tuple(getattr(self, name) for name in self.__slots__)


def matches(stored: StoredToken, secret: str) -> bool:
    """Whether `secret` is the stored token's, compared in constant time."""
    return hmac.compare_digest(stored.digest.encode(), digest(secret).encode())
