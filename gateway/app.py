"""Builds the aiohttp application: the surfaces, the operators' routes, the middleware, the
database lifecycle; it patches nothing (gateway.protocol does, where a server starts)."""

from __future__ import annotations

from aiohttp import web

from gateway import docs, health, observability, openapi, surfaces
from gateway.config import Settings
from gateway.connections import CONNECTION_LIMITS, ConnectionLimits
from gateway.keys import RATE_LIMITER, SETTINGS
from gateway.lifecycle import database_ctx, delivery_ctx
from gateway.middleware import error_middleware
from gateway.ratelimit import RateLimiter
from gateway.surfaces import internal, layer, navixy, notifications, vapid


def create_app(settings: Settings, limiter: RateLimiter | None = None) -> web.Application:
    """The gateway's app; ``limiter`` is shared by worker processes, else one is made."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[CONNECTION_LIMITS] = ConnectionLimits(
        head=settings.head_timeout, body=settings.body_timeout, keepalive=settings.keepalive_timeout
    )
    app[RATE_LIMITER] = limiter or RateLimiter(settings.rate_limit, settings.rate_burst)
    app.cleanup_ctx.append(database_ctx)
    # Delivery workers run in the server when provider credentials are configured.
    app.cleanup_ctx.append(delivery_ctx)
    observability.setup(app, surfaces.dialect_at)
    health.setup_routes(app)
    layer.setup_routes(app)
    navixy.setup_routes(app)
    notifications.setup_routes(app)
    internal.setup_routes(app)
    vapid.setup_routes(app)
    openapi.setup_routes(app)
    docs.setup_routes(app)
    return app
