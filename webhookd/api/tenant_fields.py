"""The `tenant` field as the API's models take it (bodies, query strings, the path), with
the check that names what is wrong with a value (webhookd.tenants.tenant_problem)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic.json_schema import SkipJsonSchema

from webhookd.tenants import MAX_TENANT_LENGTH, TENANT_PATTERN, tenant_problem

_RULE = "1 to 128 characters of A-Z a-z 0-9 _ . : -"


def check_tenant(value: Any) -> str:
    problem = tenant_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return str(value)


def _optional(value: Any) -> str | None:
    return None if value is None else check_tenant(value)


TenantName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TENANT_LENGTH, pattern=TENANT_PATTERN),
    BeforeValidator(check_tenant),
]
# In a body: absent or null is no tenant.
OptionalTenant = Annotated[
    TenantName | None,
    Field(description=f"the tenant (customer) it belongs to, {_RULE}; absent or null: none"),
    BeforeValidator(_optional),
]
# In a query string: absent is no filter; an empty value is a 400 like any bad name.
QueryTenant = Annotated[
    TenantName | SkipJsonSchema[None],
    Field(description=f"only this tenant's, {_RULE}"),
    BeforeValidator(_optional),
]
