"""What operators see: metrics (gateway.observability.metrics) and log lines
(gateway.observability.logs), tied by the request id that one response hook stamps."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.web_response import StreamResponse

from gateway.observability import logs, metrics
from gateway.observability.logs import (
    REQUEST_ID_HEADER,
    AccessLogger,
    JsonFormatter,
    request_id_of,
    setup_logging,
)
from gateway.observability.metrics import METRICS, Metrics, RouteStats

__all__ = [
    "METRICS",
    "REQUEST_ID_HEADER",
    "AccessLogger",
    "JsonFormatter",
    "Metrics",
    "RouteStats",
    "request_id_of",
    "setup",
    "setup_logging",
]


async def _observe_response(request: web.Request, response: StreamResponse) -> None:
    # Every answer the app prepares passes here once, streamed or not, whatever
    # handler or error made it: no middleware of its own, no context variable.
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
    metrics.count_response(request, logs.observation_of(request), response.status)


def setup(app: web.Application, dialect_at: Callable[[str], str]) -> None:
    """The request id on every answer and log line, the metrics and /metrics."""
    logs.stamp_log_records()
    metrics.setup(app, dialect_at)
    app.on_response_prepare.append(_observe_response)
