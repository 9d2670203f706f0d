"""The application: bearer-token auth, JSON errors, and the route table."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from webhookd import logs
from webhookd.config import Settings
from webhookd.metrics import Metrics
from webhookd.scanner import Scanner
from webhookd.sender import Sender
from webhookd.store.base import EventConflict, NotFound, Store, StoreUnavailable
from webhookd.workers import WorkerPool

log = logs.get("webhookd.api")

SERVICES: web.AppKey[Services] = web.AppKey("services")
PUBLIC_ROUTES = frozenset({"/healthz"})
# Answered while the daemon starts (migrations, start-up rescue); all else waits for ready.
STARTUP_ROUTES = frozenset({"/healthz", "/readyz"})


@dataclass
class Services:
    settings: Settings
    store: Store
    scanner: Scanner
    pool: WorkerPool
    sender: Sender
    metrics: Metrics
    token: str
    ready: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


# A \uXXXX escape of a UTF-16 surrogate: valid JSON syntax, but alone it is no character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _no_constants(name: str) -> Any:
    # json.loads accepts NaN and Infinity; they are not JSON, and would reach subscribers.
    raise ValueError(f"{name} is not a JSON value")


async def read_json(request: web.Request) -> Any:
    raw = await request.read()  # raises 413 past client_max_size
    if not raw:
        raise ApiError(400, "invalid_json", "the request body is empty; send JSON")
    try:
        value = json.loads(raw, parse_constant=_no_constants)
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except NotFound as exc:
        return error_response(404, "not_found", str(exc))
    except EventConflict as exc:
        return error_response(409, "conflict", str(exc))
    except StoreUnavailable as exc:
        return error_response(503, "unavailable", str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, "payload_too_large", exc.text or "request body too large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        # A bug, not bad input: still the documented error shape, and the trace in the log.
        log.exception("request failed", method=request.method, path=request.path)
        return error_response(500, "internal", "internal error; the daemon's log has the details")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_ROUTES:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    expected = services(request).token
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    )
    if not ok:
        return web.json_response(
            {"error": {"code": "unauthorized", "message": "a valid bearer token is required"}},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="webhookd"'},
        )
    return await handler(request)


@web.middleware
async def startup_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not services(request).ready and request.path not in STARTUP_ROUTES:
        return error_response(
            503, "starting", "webhookd is starting (database migrations and rescue)"
        )
    return await handler(request)


def build_app(svc: Services) -> web.Application:
    from webhookd.api import ingest, operators, webhooks

    app = web.Application(
        client_max_size=svc.settings.admin.max_body_bytes,
        middlewares=[errors_middleware, auth_middleware, startup_middleware],
    )
    app[SERVICES] = svc
    app.router.add_routes(ingest.routes)
    app.router.add_routes(webhooks.routes)
    app.router.add_routes(operators.routes)
    return app
