"""The application: bearer-token auth, JSON errors, and the route table."""

from __future__ import annotations

from aiohttp import web

from webhookd import logs
from webhookd.api import ingest, operators, tenant_routes, webhooks
from webhookd.api import openapi as openapi_routes
from webhookd.api.common import (
    CALLER_TENANT,
    SERVICES,
    TENANT_TOKENS,
    ApiError,
    ClientGone,
    Handler,
    Operation,
    Services,
    error_response,
    operation_of,
    services,
)
from webhookd.api.tenant_auth import TenantTokens
from webhookd.api.tokens import Credentials, Role, bearer
from webhookd.store.base import EventConflict, NotFound, StorageFull, StoreUnavailable

log = logs.get("webhookd.api")

# Answered while the daemon starts (migrations, start-up rescue); all else waits for ready.
STARTUP_ROUTES = frozenset({"/healthz", "/readyz"})
CREDENTIALS: web.AppKey[Credentials] = web.AppKey("credentials")


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


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # What the matched route says of itself (see common.Operation): an unknown route or
    # method says nothing, so it needs the operator token like any admin route.
    operation = operation_of(request.match_info.handler)
    if operation is not None and operation.public:
        return await handler(request)
    authorization = request.headers.get("Authorization", "")
    role = request.app[CREDENTIALS].role(authorization)
    if role is None:
        return await _as_tenant(request, handler, operation, authorization)
    if role is Role.PRODUCER and (operation is None or not operation.producer):
        return error_response(
            403,
            "forbidden",
            "a producer token (admin.producer_token_file) may only POST /v1/events; "
            "this route needs the operator token",
        )
    return await handler(request)


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": {"code": "unauthorized", "message": "a valid bearer token is required"}},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="webhookd"'},
    )


async def _as_tenant(
    request: web.Request, handler: Handler, operation: Operation | None, authorization: str
) -> web.StreamResponse:
    """A token that is neither the operator's nor a producer's: a tenant token, or a 401."""
    presented = bearer(authorization)
    if presented is None:
        return _unauthorized()
    if not services(request).ready:  # the tokens live in the database, not open yet
        return error_response(
            503, "starting", "webhookd is starting (database migrations and rescue)"
        )
    tenant = await request.app[TENANT_TOKENS].tenant_of(presented)
    if tenant is None:
        return _unauthorized()
    if operation is None or not operation.tenant:
        return error_response(
            403,
            "forbidden",
            "a tenant token may use the webhook, delivery, redrive, replay and filtered "
            "status routes of its own tenant; this route needs the operator token",
        )
    request[CALLER_TENANT] = tenant
    return await handler(request)


@web.middleware
async def startup_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not services(request).ready and request.path not in STARTUP_ROUTES:
        return error_response(
            503, "starting", "webhookd is starting (database migrations and rescue)"
        )
    return await handler(request)


async def _load_credentials(app: web.Application) -> None:
    svc = app[SERVICES]
    credentials = app[CREDENTIALS]
    credentials.load(svc.token, svc.producer_tokens, svc.settings.admin.producer_token_file)
    if svc.settings.admin.producer_token_file is not None:
        log.info("producer tokens read", producer_tokens=credentials.producer_count)


def build_app(svc: Services) -> web.Application:
    app = web.Application(
        client_max_size=svc.settings.admin.max_body_bytes,
        middlewares=[errors_middleware, auth_middleware, startup_middleware],
    )
    app[SERVICES] = svc
    app[CREDENTIALS] = Credentials()
    # Looked up when used: the store is opened after the app is built.
    app[TENANT_TOKENS] = TenantTokens(lambda token_id: svc.store.find_tenant_token(token_id))
    app.on_startup.append(_load_credentials)
    app.router.add_routes(ingest.routes)
    app.router.add_routes(webhooks.routes)
    app.router.add_routes(operators.routes)
    app.router.add_routes(tenant_routes.routes)
    app.router.add_routes(openapi_routes.routes)
    return app
