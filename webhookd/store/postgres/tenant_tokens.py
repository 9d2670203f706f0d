"""Tenant tokens on PostgreSQL: digests only (webhookd.tenants). Every daemon on the schema
reads the same table, so a token revoked through one is refused by all of them (each
trusts what it read for api.tenant_auth.REVOKE_WITHIN at most)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from webhookd.store.base import NotFound
from webhookd.store.postgres.queries import query
from webhookd.tenants import StoredToken

Connection = Any
T = TypeVar("T")


def _token(row: Any) -> StoredToken:
    return StoredToken(*row)


async def create(con: Connection, token: StoredToken) -> None:
    await con.execute(
        query("tenant_token_create"),
        token.token_id,
        token.tenant,
        token.digest,
        token.description,
        token.created_at,
        token.expires_at,
    )


async def list_for(con: Connection, tenant: str) -> list[StoredToken]:
    rows = await con.fetch(query("tenant_token_list"), tenant)
    return [_token(r) for r in rows]


async def revoke(con: Connection, tenant: str, token_id: str) -> None:
    if await con.fetchval(query("tenant_token_revoke"), tenant, token_id) is None:
        raise NotFound("no such token of this tenant")


async def find(con: Connection, token_id: str) -> StoredToken | None:
    row = await con.fetchrow(query("tenant_token_find"), token_id)
    return None if row is None else _token(row)


class TenantTokenCalls:
    """PostgresStore's tenant token operations, each one call on a pooled connection (the
    store's `_call`)."""

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, operations: int = 1) -> T:
        raise NotImplementedError

    async def create_tenant_token(self, token: StoredToken) -> None:
        await self._call(create, token)

    async def list_tenant_tokens(self, tenant: str) -> list[StoredToken]:
        return await self._call(list_for, tenant)

    async def revoke_tenant_token(self, tenant: str, token_id: str) -> None:
        await self._call(revoke, tenant, token_id)

    async def find_tenant_token(self, token_id: str) -> StoredToken | None:
        return await self._call(find, token_id)
