"""The application: bearer-token auth, JSON errors, and the route table."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from webhookd import logs
from webhookd.api import ingest, operators, webhooks
from webhookd.api.common import (
    SERVICES,
    ApiError,
    ClientGone,
    Services,
    error_response,
    services,
)
from webhookd.store.base import EventConflict, NotFound, StorageFull, StoreUnavailable

log = logs.get("webhookd.api")

PUBLIC_ROUTES = frozenset({"/healthz"})
# Answered while the daemon starts (migrations, start-up rescue); all else waits for ready.
STARTUP_ROUTES = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message)
        if exc.close:
            response.force_close()
        return response
    except ClientGone:
        # Nobody is left to answer; not the daemon's problem either.
        log.debug("client closed the connection mid-request", method=request.method)
        response = error_response(400, "client_gone", "the connection closed mid-request")
        response.force_close()
        return response
    except NotFound as exc:
        return error_response(404, "not_found", str(exc))
    except EventConflict as exc:
        return error_response(409, "conflict", str(exc))
    except StorageFull as exc:  # nothing was written: the same request may be sent again
        return error_response(503, "storage_full", str(exc))
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


def _token_matches(header: str, expected: str) -> bool:
    scheme, _, presented = header.partition(" ")
    # Header values arrive decoded with surrogateescape: bytes that are not UTF-8 (anyone
    # can send them) compare as bytes instead of failing to encode.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode("utf-8", "surrogateescape"),
        expected.encode("utf-8", "surrogateescape"),
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_ROUTES:
        return await handler(request)
    if not _token_matches(request.headers.get("Authorization", ""), services(request).token):
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


async def _keep_token_out_of_logs(app: web.Application) -> None:
    logs.never_log(app[SERVICES].token)


def build_app(svc: Services) -> web.Application:
    app = web.Application(
        client_max_size=svc.settings.admin.max_body_bytes,
        middlewares=[errors_middleware, auth_middleware, startup_middleware],
    )
    app[SERVICES] = svc
    app.on_startup.append(_keep_token_out_of_logs)
    app.router.add_routes(ingest.routes)
    app.router.add_routes(webhooks.routes)
    app.router.add_routes(operators.routes)
    return app
