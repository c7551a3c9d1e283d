"""The gateway's one override of aiohttp: the protocol class its servers build connections from.

aiohttp answers some requests itself, before any application code runs, in
text/plain: one its HTTP parser cannot read (an over-long line, a bad chunk
size, a TLS handshake on the plain port; it has no hook for them,
aio-libs/aiohttp#3287) and one whose Expect header is not 100-continue. It
also bounds only a connection's idle time (gateway.connections). Nor does it
take a protocol class from its public API (web.Server, AppRunner), so
``install`` points aiohttp's web_server at ``GatewayRequestHandler`` and its
router's default Expect handler at ours, once, where a server is started
(``gateway serve``, the tests' fixtures), after checking that what is
overridden still has the signature this module was written against.
tests/hostile/test_pinned.py pins every case.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from aiohttp import hdrs, web, web_server, web_urldispatcher
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway import surfaces
from gateway.connections import GuardedRequestHandler
from gateway.errors import GatewayError, InternalError, MalformedRequest
from gateway.observability import logs

log = logging.getLogger(__name__)


class GatewayRequestHandler(GuardedRequestHandler):
    """aiohttp's protocol with the connection limits, answering its own refusals in a dialect."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp's own: once an answer has begun, the connection is lost.
            raise ConnectionError("a response was already under way")
        error: GatewayError
        if status >= 500:
            log.error("unhandled error outside the application", exc_info=exc)
            error = InternalError()
        else:
            # aiohttp answers 400 itself only for what its parser refused; such
            # a request was never routed, and the access log must not ask its route.
            request[logs.UNROUTED] = True
            # The bytes themselves are not logged: they may hold a session token.
            log.info("refused a request that is not valid HTTP/1.1: %s", type(exc).__name__)
            error = MalformedRequest("the request is not valid HTTP/1.1")
        # A request the parser refused stands in with the path "/", so its
        # answer is Layer's, the dialect of the root.
        response = surfaces.render_error(request.path, error)
        # No app hook runs for it: the README promises an id on every response.
        response.headers[logs.REQUEST_ID_HEADER] = logs.request_id_of(request)
        response.force_close()
        return response


_aiohttp_expect_handler = web_urldispatcher._default_expect_handler


async def _expect_only_continue(request: web.Request) -> web.StreamResponse | None:
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version >= (1, 1) and expect.lower() != "100-continue":
        return surfaces.render_error(
            request.path, MalformedRequest("Expect can only be 100-continue")
        )
    await _aiohttp_expect_handler(request)
    return None


# aiohttp runs each request in a task of its own whose coroutine is this
# method, with the request as its argument: a log record finds its request
# there, at no cost to a request that logs nothing.
_HANDLE_REQUEST = RequestHandler._handle_request


def current_request() -> BaseRequest | None:
    """The request the running task serves, or None outside one."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    if task is None:
        return None
    coroutine = task.get_coro()
    if getattr(coroutine, "cr_code", None) is not _HANDLE_REQUEST.__code__:
        return None
    frame = coroutine.cr_frame  # type: ignore[union-attr]
    request = frame.f_locals.get("request") if frame is not None else None
    return request if isinstance(request, BaseRequest) else None


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


# What each overridden or read aiohttp function must look like.
EXPECTED_SIGNATURES: dict[str, tuple[object, list[str]]] = {
    "RequestHandler.handle_error": (
        RequestHandler.handle_error,
        ["self", "request", "status", "exc", "message"],
    ),
    "RequestHandler._handle_request": (
        _HANDLE_REQUEST,
        ["self", "request", "start_time", "request_handler"],
    ),
    "RequestHandler.data_received": (RequestHandler.data_received, ["self", "data"]),
    "RequestHandler.connection_lost": (RequestHandler.connection_lost, ["self", "exc"]),
    "web_urldispatcher._default_expect_handler": (_aiohttp_expect_handler, ["request"]),
}


def check_aiohttp(
    signatures: dict[str, tuple[object, list[str]]] = EXPECTED_SIGNATURES,
) -> None:
    """Raises RuntimeError naming what changed if aiohttp no longer looks as this module expects."""
    changed = [
        f"{name}{tuple(_parameters(function))}, expected {tuple(expected)}"
        for name, (function, expected) in signatures.items()
        if _parameters(function) != expected
    ]
    if getattr(web_server, "RequestHandler", None) not in (RequestHandler, GatewayRequestHandler):
        changed.append("web_server.RequestHandler is no longer the class web.Server builds")
    if changed:
        raise RuntimeError(
            "aiohttp changed what gateway.protocol overrides; review it: " + "; ".join(changed)
        )


def install() -> None:
    """Every aiohttp server of this process answers as the gateway; idempotent."""
    if web_server.RequestHandler is GatewayRequestHandler:  # type: ignore[attr-defined]
        return
    check_aiohttp()
    web_server.RequestHandler = GatewayRequestHandler  # type: ignore[attr-defined]
    # aiohttp types its default as returning None; a route's expect handler
    # may return a response, which is then the answer.
    web_urldispatcher._default_expect_handler = _expect_only_continue  # type: ignore[assignment]
    logs.find_requests_with(current_request)
