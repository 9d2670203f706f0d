"""Tenant tokens on DuckDB: digests only (webhookd.tenants). One daemon owns the file, and
the API drops what it knew of a token the moment it is revoked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from webhookd.store.base import NotFound
from webhookd.store.duckdb.queries import query
from webhookd.tenants import StoredToken


def create(con: Any, payloads: Sequence[StoredToken]) -> list[None]:
    for token in payloads:
        con.execute(
            query("tenant_token_create"),
            [
                token.token_id,
                token.tenant,
                token.digest,
                token.description,
                token.created_at,
                token.expires_at,
            ],
        )
    return [None] * len(payloads)


def revoke(con: Any, payloads: Sequence[tuple[str, str]]) -> list[NotFound | None]:
    results: list[NotFound | None] = []
    for tenant, token_id in payloads:
        gone = con.execute(query("tenant_token_revoke"), [tenant, token_id]).fetchall()
        results.append(None if gone else NotFound("no such token of this tenant"))
    return results


def list_for(con: Any, tenant: str) -> list[StoredToken]:
    rows = con.execute(query("tenant_token_list"), [tenant]).fetchall()
    return [StoredToken(*row) for row in rows]


def find(con: Any, token_id: str) -> StoredToken | None:
    row = con.execute(query("tenant_token_find"), [token_id]).fetchone()
    return None if row is None else StoredToken(*row)
