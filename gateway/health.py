"""The health routes: the process is alive; the database answers."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import GatewayError
from gateway.keys import DATABASE_PROBE
from gateway.wire import Operation


async def health_live(request: web.Request) -> web.Response:
    """The process answers; says nothing of the database."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def health_ready(request: web.Request) -> web.Response:
    """Whether requests can be served now: the database answers a query within the timeouts."""
    try:
        await request.app[DATABASE_PROBE].ping()
    except GatewayError:
        return web.Response(
            status=503,
            body=b'{"status":"unavailable","database":"down"}',
            content_type="application/json",
        )
    return web.Response(body=b'{"status":"ready","database":"up"}', content_type="application/json")


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health/live", health_live, allow_head=False)
    app.router.add_get("/health/ready", health_ready, allow_head=False)


# The routes above as the OpenAPI document tells them.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/health/live", "health_live", "The process answers",
        200, "Alive", "Health",
        authenticated=False,
    ),
    Operation(
        "get", "/health/ready", "health_ready", "The database answers a query",
        200, "Ready", "Health",
        other_answers=((503, "The database is down", "Health"),),
        authenticated=False,
    ),
)
