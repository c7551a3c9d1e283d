"""Builds the aiohttp application: both surfaces, the error middleware, the database lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import hdrs, web, web_urldispatcher
from aiohttp.web_protocol import RequestHandler

from gateway import docs, observability, openapi
from gateway.config import Settings
from gateway.connections import CONNECTION_LIMITS, ConnectionLimits, guard_connections
from gateway.delivery.worker import delivery_ctx
from gateway.errors import (
    GatewayError,
    InternalError,
    MalformedRequest,
    MethodNotAllowed,
    RequestTooLarge,
    UnknownEndpoint,
)
from gateway.executor import Executor, GroupCommitter
from gateway.keys import EXECUTOR, INTERNAL_STORE, RATE_LIMITER, SETTINGS
from gateway.layer_auth import identity_verifier
from gateway.ratelimit import RateLimiter
from gateway.store import Store, create_pool
from gateway.surfaces import internal, layer, navixy, notifications, vapid

log = logging.getLogger(__name__)

# Expired sessions stop working at once (every query checks expires_at); this
# only reclaims their rows, and their registrations with them.
PURGE_INTERVAL_SECONDS = 60

# How much longer than GATEWAY_INTERNAL_WRITE_TIMEOUT the database lets an
# internal transaction sit idle: the gateway cuts a stalled stream first.
INTERNAL_IDLE_MARGIN = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT_CLOSED_REQUEST = 499

_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    404: UnknownEndpoint,
    405: MethodNotAllowed,
    413: RequestTooLarge,
}


def render_error(request: web.Request, exc: GatewayError) -> web.Response:
    if internal.owns(request.path):
        return internal.render_error(exc)
    if navixy.owns(request.path):
        return navixy.render_error(exc)
    return layer.render_error(exc)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an error in the caller's dialect; nothing internal leaks."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return render_error(request, exc)
    except web.HTTPException as exc:
        kind = _HTTP_ERRORS.get(exc.status)
        if kind is None:
            log.warning(
                "unexpected HTTP exception %s at %s", exc.status, observability.route_of(request)
            )
            return render_error(request, InternalError())
        return render_error(request, kind(exc.reason))
    except ConnectionError:
        if request.transport is not None and not request.transport.is_closing():
            log.exception(
                "unhandled error in %s %s", request.method, observability.route_of(request)
            )
            return render_error(request, InternalError())
        # The caller hung up before its request was read whole: its doing,
        # not ours, and no answer can reach it. nginx's status for that.
        log.info(
            "the client closed the connection mid-request: %s %s",
            request.method,
            observability.route_of(request),
        )
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, observability.route_of(request))
        return render_error(request, InternalError())


# aiohttp answers two kinds of request itself, before any middleware, in
# text/plain: one its HTTP parser cannot read (an over-long line, a bad chunk
# size, a TLS handshake on the plain port) and one whose Expect header is not
# 100-continue. It offers no hook for either, so the gateway replaces the two
# functions that write those answers; tests/hostile/test_pinned.py pins every case.
_aiohttp_expect_handler = web_urldispatcher._default_expect_handler


def _refuse_unreadable_request(
    self: RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """RequestHandler.handle_error, answering in a dialect instead of text/plain."""
    if request.writer.output_size > 0:
        # As aiohttp's own: once an answer has begun, the connection is lost.
        raise ConnectionError("a response was already under way")
    error: GatewayError
    if status >= 500:
        log.error("unhandled error outside the application", exc_info=exc)
        error = InternalError()
    else:
        # aiohttp answers 400 itself only for what its parser refused; such a
        # request was never routed, and the access log must not ask its route.
        request[observability.UNROUTED] = True
        # The bytes themselves are not logged: they may hold a session token.
        log.info("refused a request that is not valid HTTP/1.1: %s", type(exc).__name__)
        error = MalformedRequest("the request is not valid HTTP/1.1")
    # A request the parser refused stands in with the path "/", so its answer
    # is Layer's, the dialect of the root.
    response = render_error(request, error)  # type: ignore[arg-type]
    # No middleware runs for it: the README promises an id on every response.
    response.headers[observability.REQUEST_ID_HEADER] = observability.request_id_of(request)
    response.force_close()
    return response


async def _expect_only_continue(request: web.Request) -> web.StreamResponse | None:
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version >= (1, 1) and expect.lower() != "100-continue":
        # Answered before the middlewares, which would have stamped the id.
        response = render_error(request, MalformedRequest("Expect can only be 100-continue"))
        response.headers[observability.REQUEST_ID_HEADER] = observability.request_id_of(request)
        return response
    await _aiohttp_expect_handler(request)
    return None


def _answer_protocol_errors_in_dialect() -> None:
    RequestHandler.handle_error = _refuse_unreadable_request  # type: ignore[method-assign]
    # aiohttp types its default as returning None; a route's expect handler may
    # return a response, which is then the answer.
    web_urldispatcher._default_expect_handler = _expect_only_continue  # type: ignore[assignment]


async def _purge_expired_sessions(store: Store) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)
        try:
            purged = await store.purge_expired_sessions()
        except Exception:
            log.warning("purging expired sessions failed", exc_info=True)
        else:
            if purged:
                log.info("purged %d expired sessions", purged)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens the pool and the group-commit writer; on shutdown drains the writer, then closes."""
    settings = app[SETTINGS]
    if settings.database_url is None:
        raise RuntimeError("Settings.database_url must be resolved before the app starts")
    pool = await create_pool(
        settings.database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size
    )
    try:
        # The senders' API streams through a pool of its own, so however many
        # fan-outs stall, the public dialects keep every connection of theirs.
        # The server ends a transaction a stalled stream left open, should the
        # gateway's own write timeout not have.
        internal_pool = await create_pool(
            settings.database_url,
            min_size=1,
            max_size=settings.internal_pool_max_size,
            idle_transaction_timeout=settings.internal_write_timeout + INTERNAL_IDLE_MARGIN,
        )
    except BaseException:
        await pool.close()
        raise
    store = Store(pool)
    app[INTERNAL_STORE] = Store(internal_pool, sessions=store.sessions)
    writer = GroupCommitter(store, max_pending=settings.max_pending_writes)
    writer.start()
    app[EXECUTOR] = Executor(store, writer, app[RATE_LIMITER], identity_verifier(settings))
    purger = asyncio.create_task(_purge_expired_sessions(store), name="purge-sessions")
    try:
        yield
    finally:
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger
        await writer.close()
        await pool.close()
        await internal_pool.close()


async def health_live(request: web.Request) -> web.Response:
    """The process answers; says nothing of the database."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def health_ready(request: web.Request) -> web.Response:
    """Whether requests can be served now: the database answers a query within the timeouts."""
    try:
        await request.app[EXECUTOR].store.ping()
    except GatewayError:
        return web.Response(
            status=503,
            body=b'{"status":"unavailable","database":"down"}',
            content_type="application/json",
        )
    return web.Response(body=b'{"status":"ready","database":"up"}', content_type="application/json")


def create_app(settings: Settings, limiter: RateLimiter | None = None) -> web.Application:
    """The gateway's app; ``limiter`` is shared by worker processes, else one is made."""
    _answer_protocol_errors_in_dialect()
    guard_connections()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Outermost first: the request id and the metrics see every error response too.
        middlewares=[observability.observe_requests, error_middleware],
    )
    app[SETTINGS] = settings
    app[CONNECTION_LIMITS] = ConnectionLimits(
        head=settings.head_timeout, body=settings.body_timeout, keepalive=settings.keepalive_timeout
    )
    app[RATE_LIMITER] = limiter or RateLimiter(settings.rate_limit, settings.rate_burst)
    app.cleanup_ctx.append(database_ctx)
    # Delivery workers run in the server when provider credentials are configured.
    app.cleanup_ctx.append(delivery_ctx)
    app.router.add_get("/health/live", health_live, allow_head=False)
    app.router.add_get("/health/ready", health_ready, allow_head=False)
    layer.setup_routes(app)
    navixy.setup_routes(app)
    notifications.setup_routes(app)
    internal.setup_routes(app)
    vapid.setup_routes(app)
    # After database_ctx: it watches the writer database_ctx makes.
    observability.setup(app)
    openapi.setup_routes(app)
    docs.setup_routes(app)
    return app
