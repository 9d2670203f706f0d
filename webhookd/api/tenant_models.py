"""The tenant routes' bodies and answers, and the status query (see webhookd.api.models
for how requests are checked and how the OpenAPI document is made from these classes)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from webhookd.api.models import Query, Request, Response, _absent
from webhookd.api.tenant_fields import QueryTenant
from webhookd.tenants import DEFAULT_TTL, MAX_TOKEN_DESCRIPTION, MAX_TTL, MIN_TTL


def _ttl(value: Any) -> int:
    if value is None:
        return DEFAULT_TTL
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TTL <= value <= MAX_TTL:
        raise ValueError(f"seconds, a whole number from {MIN_TTL} to {MAX_TTL} (ten years)")
    return value


def _token_description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TOKEN_DESCRIPTION:
        raise ValueError(f"a string of at most {MAX_TOKEN_DESCRIPTION} characters")
    return value


class TenantTokenCreate(Request):
    """A new tenant token: valid for `ttl` seconds."""

    ttl: Annotated[
        int,
        Field(
            ge=MIN_TTL,
            le=MAX_TTL,
            description=f"seconds until it expires; absent or null: {DEFAULT_TTL} (90 days)",
        ),
        BeforeValidator(_ttl),
    ] = DEFAULT_TTL
    description: Annotated[
        str,
        Field(max_length=MAX_TOKEN_DESCRIPTION, description="for operators: whose it is"),
        BeforeValidator(_token_description),
    ] = ""


class TenantToken(Response):
    """A tenant token, without its value."""

    token_id: str
    tenant: str
    description: str
    created_at: datetime
    expires_at: datetime


class TenantTokenWithValue(TenantToken):
    """A new tenant token and its value: shown once, only its hash is stored."""

    token: str = Field(description="send as `Authorization: Bearer <token>`")


class TenantTokenPage(Response):
    items: list[TenantToken]
    next: None = Field(description="always null: every token of the tenant is on one page")


class StatusQuery(Query):
    tenant: QueryTenant = Field(default=None, json_schema_extra=_absent)
