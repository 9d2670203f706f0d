"""Tenant tokens: minted, listed and revoked by the operator (SPEC "Tenants").

A token is shown once, in the answer that makes it; the store keeps its digest only
(webhookd.tenants). Revoking one deletes it: this daemon refuses it at once, every other
daemon on the same PostgreSQL queue within api.tenant_auth.REVOKE_WITHIN.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from webhookd import logs
from webhookd.api.common import TENANT_TOKENS, ApiError, Operation, documented, read_json, services
from webhookd.api.models import parse
from webhookd.api.tenant_models import (
    TenantTokenCreate,
    TenantTokenPage,
    TenantTokenWithValue,
)
from webhookd.store.base import NotFound
from webhookd.store.records import iso, utcnow
from webhookd.tenants import StoredToken, is_token_id, new_token, tenant_problem

routes = web.RouteTableDef()

_TENANT_400 = {400: "the tenant in the path is not a valid name (`invalid_request`, naming it)"}


def _tenant(request: web.Request) -> str:
    tenant = request.match_info["tenant"]
    problem = tenant_problem(tenant)
    if problem is not None:
        raise ApiError(400, "invalid_request", f"tenant: {problem}")
    return tenant


def _shown(token: StoredToken) -> dict[str, Any]:
    return {
        "token_id": token.token_id,
        "tenant": token.tenant,
        "description": token.description,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
    }


@routes.post("/v1/tenants/{tenant}/tokens")
@documented(
    Operation(
        summary="Make a tenant token",
        description="For a portal in front of one customer: a token that sees and changes "
        "only this tenant's webhooks and deliveries. The answer holds the token: the only "
        "time it is shown (only its hash is stored). Operator token only.",
        tag="tenants",
        body=TenantTokenCreate,
        responses={201: TenantTokenWithValue},
        errors=_TENANT_400,
    )
)
async def create_tenant_token(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    body = parse(TenantTokenCreate, await read_json(request))
    made = new_token()
    logs.never_log(made.token)
    now = utcnow().replace(microsecond=0)
    stored = StoredToken(
        made.token_id, tenant, made.digest, body.description, now, now + timedelta(seconds=body.ttl)
    )
    await services(request).store.create_tenant_token(stored)
    request.app[TENANT_TOKENS].forget(made.token_id)
    return web.json_response({**_shown(stored), "token": made.token}, status=201)


@routes.get("/v1/tenants/{tenant}/tokens")
@documented(
    Operation(
        summary="List a tenant's tokens",
        description="Without their values. Operator token only.",
        tag="tenants",
        responses={200: TenantTokenPage},
        errors=_TENANT_400,
    )
)
async def list_tenant_tokens(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    tokens = await services(request).store.list_tenant_tokens(tenant)
    return web.json_response({"items": [_shown(t) for t in tokens], "next": None})


@routes.delete("/v1/tenants/{tenant}/tokens/{token_id}")
@documented(
    Operation(
        summary="Revoke a tenant token",
        description="At once on this daemon; on every daemon of a PostgreSQL queue within "
        "a second. Operator token only.",
        tag="tenants",
        responses={204: None},
        errors={**_TENANT_400, 404: "no such token of this tenant (`not_found`)"},
    )
)
async def revoke_tenant_token(request: web.Request) -> web.Response:
    tenant = _tenant(request)
    token_id = request.match_info["token_id"]
    if not is_token_id(token_id):
        raise NotFound("no such token of this tenant")
    await services(request).store.revoke_tenant_token(tenant, token_id)
    request.app[TENANT_TOKENS].forget(token_id)
    return web.Response(status=204)
