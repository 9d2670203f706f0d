"""The OpenAPI 3.1 document of the API, generated from the application itself.

Every route of the app's router is described by the :class:`~webhookd.api.common.Operation`
its handler carries (``@documented``): its request body and query models (the pydantic
models the handler validates with, webhookd.api.models), its answers' models, and who may
call it. The JSON schemas come from pydantic (`mode="validation"` for what clients send,
`mode="serialization"` for what the API answers); the error answers of each route follow from
what it takes (a body, a path parameter, a token). A route without a description is an
error, so the document can never silently leave one out.

Served at ``GET /openapi.json``; ``python -m webhookd.api.openapi > openapi.json``
regenerates the copy kept in the repository (tests compare the three).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from webhookd import __version__
from webhookd.api.common import MAX_LIMIT, Operation, documented, operation_of
from webhookd.api.models import Error
from webhookd.api.operation_models import OpenApiDocument

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

_METHODS = ("get", "head", "post", "put", "patch", "delete")

ERRORS = {
    400: "the request is invalid; `message` names the field or parameter at fault",
    401: "no valid bearer token (`unauthorized`)",
    403: "a producer or tenant token on a route only the operator token may call (`forbidden`)",
    404: "not found (`not_found`)",
    408: "the request body did not arrive within admin.body_timeout (`request_timeout`)",
    409: "conflict (`conflict`)",
    413: "the request body is over admin.max_body_bytes (`payload_too_large`)",
    503: "webhookd is starting (`starting`) or its database is unavailable (`unavailable`)",
}

TAGS = [
    {"name": "events", "description": "Producers append events (operator or producer token)."},
    {"name": "webhooks", "description": "Subscriptions."},
    {"name": "deliveries", "description": "The delivery queue, its log, redrive and replay."},
    {"name": "operations", "description": "Status, health, metrics, this document."},
    {"name": "tenants", "description": "Tokens for one tenant (customer): operator token only."},
]

DESCRIPTION = f"""\
Durable at-least-once webhook delivery.

Every route but `/healthz` needs `Authorization: Bearer <token>`. The operator token
(`admin.token_file` or `WEBHOOKD_ADMIN__TOKEN`) may call every route; a producer token (a
line of `admin.producer_token_file`) may only call `POST /v1/events` and gets 403 elsewhere.
A tenant token (`POST /v1/tenants/{{tenant}}/tokens`) may call the webhook and delivery routes,
redrive, replay and `/v1/status?tenant=`, each limited to its tenant: another tenant's objects
answer 404, a body or query naming another tenant 403, and every other route 403.

Errors are `{{"error": {{"code", "message"}}}}` with a 4xx status (503 while starting or when
the database is unavailable). Lists answer `{{"items": [...], "next": cursor or null}}` and take
`limit` up to {MAX_LIMIT}. Every GET route answers HEAD as well, without a body."""


class UndocumentedRoute(LookupError):
    """A route whose handler carries no Operation."""


def routes_of(app: web.Application) -> Iterator[tuple[str, str, Operation, str]]:
    """(method, path, operation, handler name) for every route of `app`, described or not:
    an undescribed one raises UndocumentedRoute."""
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        operation = operation_of(route.handler)
        if operation is None:
            raise UndocumentedRoute(
                f"{route.method} {path} has no description: decorate its handler with "
                "@documented(Operation(...)) (webhookd.api.common)"
            )
        yield route.method.lower(), path, operation, getattr(route.handler, "__name__", "")


def _models(operations: list[tuple[str, str, Operation, str]]) -> list[tuple[Any, JsonSchemaMode]]:
    found: dict[tuple[str, JsonSchemaMode], tuple[Any, JsonSchemaMode]] = {}

    def add(model: Any, mode: JsonSchemaMode) -> None:
        if model is not None:
            found[(f"{model.__module__}.{model.__qualname__}", mode)] = (model, mode)

    add(Error, "serialization")
    for _, _, op, _ in operations:
        add(op.body, "validation")
        add(op.query, "validation")
        for model in op.responses.values():
            add(model, "serialization")
    return [found[key] for key in sorted(found)]


def _error_statuses(op: Operation, path: str, method: str) -> dict[int, str]:
    statuses: set[int] = set(op.errors)
    if op.body is not None:
        statuses |= {400, 408, 413}
    if op.query is not None:
        statuses.add(400)
    if "{" in path:
        statuses.add(404)
    if not op.public:
        # 403: a producer token off POST /v1/events, a tenant token off its routes.
        statuses |= {401, 403, 503}
    statuses -= set(op.responses)
    return {status: op.errors.get(status, ERRORS[status]) for status in sorted(statuses)}


def _first_line(model: Any) -> str:
    doc = (model.__doc__ or "").strip() if model is not None else ""
    return doc.split("\n\n")[0].replace("\n", " ") if doc else ""


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of `app`."""
    operations = sorted(
        routes_of(app), key=lambda r: (r[1], _METHODS.index(r[0]) if r[0] in _METHODS else 99)
    )
    refs, schemas = models_json_schema(_models(operations), ref_template=REF)
    components: dict[str, Any] = dict(schemas.get("$defs", {}))

    def ref(model: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    # Query models become parameters: their properties, not schemas of their own.
    query_params: dict[Any, list[dict[str, Any]]] = {}
    for _, _, op, _ in operations:
        if op.query is None or op.query in query_params:
            continue
        name = refs[(op.query, "validation")]["$ref"].rsplit("/", 1)[1]
        schema = components.pop(name)
        query_params[op.query] = [
            {
                "name": param,
                "in": "query",
                "required": param in schema.get("required", ()),
                "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
                **({"description": prop["description"]} if "description" in prop else {}),
            }
            for param, prop in schema["properties"].items()
        ]

    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for method, path, op, handler_name in operations:
        head = method == "head"
        operation_id = f"{handler_name}_head" if head else handler_name
        if operation_id in seen_ids:
            raise ValueError(f"two routes have the operationId {operation_id!r}")
        seen_ids.add(operation_id)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", path)
        ]
        if op.query is not None:
            parameters += query_params[op.query]
        responses: dict[str, Any] = {}
        for status, model in sorted(op.responses.items()):
            answer: dict[str, Any] = {"description": _first_line(model) or op.summary}
            if model is not None and not head:
                answer["content"] = {op.media_type: {"schema": ref(model, "serialization")}}
            responses[str(status)] = answer
        for status, text in _error_statuses(op, path, method).items():
            answer = {"description": text}
            if not head:
                answer["content"] = {"application/json": {"schema": ref(Error, "serialization")}}
            if status == 401:
                answer["headers"] = {
                    "WWW-Authenticate": {
                        "schema": {"type": "string", "const": 'Bearer realm="webhookd"'}
                    }
                }
            responses[str(status)] = answer
        entry: dict[str, Any] = {
            "operationId": operation_id,
            "summary": op.summary + (" (HEAD: the GET without a body)" if head else ""),
            "tags": [op.tag],
        }
        if op.description:
            entry["description"] = op.description
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.body, "validation")}},
            }
        entry["responses"] = responses
        if op.public:
            entry["security"] = []
        elif op.producer:
            entry["security"] = [{"operatorToken": []}, {"producerToken": []}]
        elif op.tenant:
            entry["security"] = [{"operatorToken": []}, {"tenantToken": []}]
        else:
            entry["security"] = [{"operatorToken": []}]
        paths.setdefault(path, {})[method] = entry

    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "webhookd", "version": __version__, "description": DESCRIPTION},
        "tags": TAGS,
        "security": [{"operatorToken": []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "admin.token_file (or WEBHOOKD_ADMIN__TOKEN): every route",
                },
                "producerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a line of admin.producer_token_file: POST /v1/events only",
                },
                "tenantToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "made by POST /v1/tenants/{tenant}/tokens: one tenant's "
                    "webhooks and deliveries only",
                },
            },
        },
    }


def render(doc: dict[str, Any]) -> str:
    """The document as served and as kept in the repository."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


routes = web.RouteTableDef()
_served: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


@routes.get("/openapi.json")
@documented(
    Operation(
        summary="This OpenAPI 3.1 document",
        description="Generated from the route table and the models the handlers validate with.",
        tag="operations",
        responses={200: OpenApiDocument},
    )
)
async def openapi(request: web.Request) -> web.Response:
    body = _served.get(request.app)
    if body is None:
        body = _served[request.app] = render(document(request.app)).encode()
    return web.Response(body=body, content_type="application/json")
