"""What the route modules share: the services, the error shape, JSON bodies, page
cursors (cursors.py), and what each route says of itself (:class:`Operation`: the
OpenAPI document and who may call it)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

# Re-exported: route modules and models take what they share from here.
from webhookd.api.cursors import delivery_cursor as delivery_cursor
from webhookd.api.cursors import parse_delivery_cursor as parse_delivery_cursor
from webhookd.api.tenant_auth import TenantTokens
from webhookd.config import Settings
from webhookd.durations import format_duration
from webhookd.metrics import Metrics
from webhookd.scanner import Scanner
from webhookd.senders import AttemptSender
from webhookd.store.base import NotFound, Store
from webhookd.store.records import WebhookRecord
from webhookd.tracing import NoTracer, Tracer
from webhookd.workers import WorkerPool


@dataclass
class Services:
    settings: Settings
    store: Store
    scanner: Scanner
    pool: WorkerPool
    sender: AttemptSender
    metrics: Metrics
    token: str
    # Tokens from admin.producer_token_file, as read at start (the app re-reads the file).
    producer_tokens: list[str] = field(default_factory=list)
    ready: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    tracer: Tracer = field(default_factory=NoTracer)


SERVICES: web.AppKey[Services] = web.AppKey("services")
TENANT_TOKENS: web.AppKey[TenantTokens] = web.AppKey("tenant_tokens")

MAX_LIMIT = 1000
# A cursor this API gives out is far shorter; anything longer is not one of them.
MAX_CURSOR = 2048


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


# -- what each route says of itself ----------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Operation:
    """One route as the OpenAPI document describes it, and who may call it.

    `body` and `query` are the pydantic models the handler validates its input with;
    `responses` maps each success status to the model of its JSON body (None: no body).
    Error answers are added by the document's generator from what the route takes (a body:
    400, 408, 413; a path parameter: 404; a token: 401, 403, 503); `errors` adds more, each
    with what it means for this route.
    """

    summary: str
    responses: Mapping[int, Any]
    description: str = ""
    tag: str = "operators"
    body: Any = None
    query: Any = None
    errors: Mapping[int, str] = field(default_factory=dict)
    media_type: str = "application/json"
    # Producer tokens (admin.producer_token_file) may call it; the operator token calls all.
    producer: bool = False
    # Tenant tokens may call it, limited to their tenant (the handler sees to that).
    tenant: bool = False
    # No token at all.
    public: bool = False


_OPERATIONS: dict[Callable[..., Any], Operation] = {}


def documented(operation: Operation) -> Callable[[H], H]:
    """Attach `operation` to a handler: the generator and the auth middleware read it."""

    def attach(handler: H) -> H:
        _OPERATIONS[handler] = operation
        return handler

    return attach


def operation_of(handler: Callable[..., Any]) -> Operation | None:
    return _OPERATIONS.get(handler)


class ApiError(Exception):
    """An answer in the documented error shape; `close` ends the connection after it."""

    def __init__(self, status: int, code: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


class ClientGone(Exception):
    """The client closed the connection before its request had arrived."""


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


# -- tenants --------------------------------------------------------------------------------

# The request's tenant when it came with a tenant token (set by the auth middleware); a
# RequestKey where aiohttp has them (3.13+: a plain string key is warned about there).
CALLER_TENANT: Any = (
    web.RequestKey("caller_tenant", str) if hasattr(web, "RequestKey") else "caller_tenant"
)


def caller_tenant(request: web.Request) -> str | None:
    """The tenant of the request's tenant token; None for the operator's token."""
    tenant: str | None = request.get(CALLER_TENANT)
    return tenant


def tenant_scope(request: web.Request, named: str | None) -> str | None:
    """The tenant a request acts within: a tenant token's own (naming another is a 403),
    else the one the request names (None: every tenant, or a request about none)."""
    own = caller_tenant(request)
    if own is None:
        return named
    if named is not None and named != own:
        raise ApiError(
            403, "forbidden", "a tenant token acts only within its own tenant; this names another"
        )
    return own


async def owned(request: web.Request, webhook_id: str) -> WebhookRecord | None:
    """The webhook, when the caller holds a tenant token and the webhook is of its tenant;
    another tenant's is NotFound (its existence is not revealed). None for the operator."""
    own = caller_tenant(request)
    if own is None:
        return None
    found = await services(request).store.get_webhook(webhook_id)
    if found.tenant != own:
        raise NotFound(f"no webhook {webhook_id!r}")
    return found


# -- JSON bodies ----------------------------------------------------------------------------

# A \uXXXX escape of a UTF-16 surrogate: valid JSON syntax, but alone it is no character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _Refused(ValueError):
    """Valid JSON syntax that the API does not take; the message says what and why."""


def shown(text: str, limit: int = 40) -> str:
    """A piece of the request quoted in an error message: JSON-escaped and short."""
    quoted = json.dumps(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 4] + '..."'


def _no_constants(name: str) -> Any:
    # json.loads accepts NaN and Infinity; they are not JSON, and would reach subscribers.
    raise _Refused(f"the request body is not valid JSON: {name} is not a JSON value")


def _finite(literal: str) -> float:
    # 1e999999 is valid JSON syntax, but Python reads it as infinity (not JSON either).
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused(
            f"the request body has the number {shown(literal)[1:-1]}, beyond the range of "
            "a 64-bit float; send a smaller number or a string"
        )
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins: a receiver could read another value
    # than the one webhookd stored, so a repeated key is refused.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(
                    f"the request body repeats the key {shown(key)} in one object; "
                    "each key may appear once"
                )
            seen.add(key)
    return obj


async def read_body(request: web.Request) -> bytes:
    """The whole body, within `admin.body_timeout` and `admin.max_body_bytes` (413)."""
    timeout = services(request).settings.admin.body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within admin.body_timeout "
            f"({format_duration(timeout)})",
            close=True,
        ) from None
    except RequestPayloadError:
        # Its text quotes the bytes received; they are not repeated to anyone.
        raise ApiError(
            400,
            "invalid_request",
            "the request body does not match its framing (Content-Length or chunked encoding)",
            close=True,
        ) from None
    except ConnectionError:
        raise ClientGone from None


async def read_json(request: web.Request) -> Any:
    raw = await read_body(request)
    if not raw:
        raise ApiError(400, "invalid_json", "the request body is empty; send JSON")
    try:
        value = json.loads(
            raw,
            parse_constant=_no_constants,
            parse_float=_finite,
            object_pairs_hook=_unique_keys,
        )
    except _Refused as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):
        # Paired surrogates decode to one character; a lone one cannot be stored or sent.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(
                400,
                "invalid_json",
                "the request body has a lone UTF-16 surrogate (\\uD800-\\uDFFF)",
            ) from None
        except RecursionError:
            raise ApiError(400, "invalid_json", "the request body is nested too deeply") from None
    return value
