"""Tenant tokens on PostgreSQL: digests only (webhookd.tenants). Every daemon on the schema
reads the same table, so a token revoked through one is refused by all of them (each
trusts what it read for api.tenant_auth.REVOKE_WITHIN at most)."""

from __future__ import annotations

from typing import Any

from webhookd.store.base import NotFound
from webhookd.tenants import StoredToken

Connection = Any

_COLUMNS = "token_id, tenant, digest, description, created_at, expires_at"


def _token(row: Any) -> StoredToken:
    return StoredToken(*row)


async def create(con: Connection, token: StoredToken) -> None:
    await con.execute(
        f"INSERT INTO tenant_tokens ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
        token.token_id,
        token.tenant,
        token.digest,
        token.description,
        token.created_at,
        token.expires_at,
    )


async def list_for(con: Connection, tenant: str) -> list[StoredToken]:
    rows = await con.fetch(
        f"SELECT {_COLUMNS} FROM tenant_tokens WHERE tenant = $1 ORDER BY created_at, token_id",
        tenant,
    )
    return [_token(r) for r in rows]


async def revoke(con: Connection, tenant: str, token_id: str) -> None:
    result: str = await con.execute(
        "DELETE FROM tenant_tokens WHERE tenant = $1 AND token_id = $2", tenant, token_id
    )
    if result.split()[-1] == "0":
        raise NotFound("no such token of this tenant")


async def find(con: Connection, token_id: str) -> StoredToken | None:
    row = await con.fetchrow(f"SELECT {_COLUMNS} FROM tenant_tokens WHERE token_id = $1", token_id)
    return None if row is None else _token(row)
