"""The error middleware: every failure leaves as an error in the caller's dialect."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from gateway import surfaces
from gateway.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    RequestTooLarge,
    UnknownEndpoint,
)
from gateway.observability import metrics
from gateway.observability.logs import OBSERVATION, Observation, route_of
from gateway.wire import Handler

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    404: UnknownEndpoint,
    405: MethodNotAllowed,
    413: RequestTooLarge,
}


def render_error(request: web.Request, exc: GatewayError) -> web.Response:
    return surfaces.render_error(request.path, exc)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an error in the caller's dialect; nothing internal leaks.

    The app's only middleware, so it also marks when the request reached the
    app, for the latency the metrics count when the answer is prepared.
    """
    observation = request[OBSERVATION] = Observation(time.perf_counter())
    try:
        return await handler(request)
    except GatewayError as exc:
        return render_error(request, exc)
    except web.HTTPException as exc:
        kind = _HTTP_ERRORS.get(exc.status)
        if kind is None:
            log.warning("unexpected HTTP exception %s at %s", exc.status, route_of(request))
            return render_error(request, InternalError())
        return render_error(request, kind(exc.reason))
    except ConnectionError:
        if request.transport is not None and not request.transport.is_closing():
            log.exception("unhandled error in %s %s", request.method, route_of(request))
            return render_error(request, InternalError())
        # The caller hung up before its request was read whole: its doing,
        # not ours, and no answer can reach it. nginx's status for that.
        log.info(
            "the client closed the connection mid-request: %s %s",
            request.method,
            route_of(request),
        )
        return web.Response(status=metrics.CLIENT_CLOSED_REQUEST)
    except asyncio.CancelledError:
        # The client went away and aiohttp cancelled the handler: no answer
        # will be prepared, so it is counted here.
        metrics.count_response(request, observation, metrics.CLIENT_CLOSED_REQUEST)
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, route_of(request))
        return render_error(request, InternalError())
