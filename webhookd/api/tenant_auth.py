"""Tenant tokens at the door: which tenant a presented token belongs to, if any.

A token is looked up by its id (webhookd.tenants), so a check costs one look-up, not a
pass over every token. What a look-up found is kept for REVOKE_WITHIN seconds: a token
revoked through this daemon is dropped at once, one revoked through another daemon on
the same PostgreSQL queue is refused here within that time. Expiry is checked on every
request. Found or not, the secret is compared in constant time with the stored digest.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from webhookd.store.records import utcnow
from webhookd.tenants import StoredToken, matches, split_token

# How long a look-up is trusted: a revocation on another daemon takes at most this long.
REVOKE_WITHIN = 1.0
# Entries kept at most (ids that do not exist included); the cache is emptied when full.
MAX_CACHED = 10_000
# Compared when no token has the id, so that an unknown id takes as long as a wrong secret.
_NOBODY = StoredToken("tt_0000000000000000", "-", "0" * 64, "", utcnow(), utcnow())

Lookup = Callable[[str], Awaitable[StoredToken | None]]


class TenantTokens:
    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup
        self._cache: dict[str, tuple[float, StoredToken | None]] = {}

    async def tenant_of(self, presented: bytes) -> str | None:
        """The tenant of a valid, unexpired, unrevoked tenant token; None otherwise."""
        parts = split_token(presented)
        if parts is None:
            return None
        token_id, secret = parts
        stored = await self._stored(token_id)
        ok = matches(stored or _NOBODY, secret)
        if stored is None or not ok or stored.expires_at <= utcnow():
            return None
        return stored.tenant

    async def _stored(self, token_id: str) -> StoredToken | None:
        now = time.monotonic()
        cached = self._cache.get(token_id)
        if cached is not None and now - cached[0] < REVOKE_WITHIN:
            return cached[1]
        stored = await self._lookup(token_id)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[token_id] = (now, stored)
        return stored

    def forget(self, token_id: str) -> None:
        """A token was revoked (or made) through this daemon: look it up afresh."""
        self._cache.pop(token_id, None)
