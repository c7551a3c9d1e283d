"""Every route's answer to an Expect header: 100 Continue, or a refusal in the caller's dialect.

aiohttp's own (the default of add_route's ``expect_handler``) answers any other
expectation 417 in text/plain; each route of the gateway is added with this one.
It renders through the app's registry of surfaces, which a surface cannot import.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import HttpVersion11, hdrs, web

from gateway.errors import GatewayError, MalformedRequest

# gateway.surfaces.render_error, set by the factory.
RENDER_ERROR = web.AppKey[Callable[[str, GatewayError], web.Response]]("render_error")


async def only_continue(request: web.Request) -> web.StreamResponse | None:
    """Route option ``expect_handler``: an answer to a bad Expect, else None to go on."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return request.app[RENDER_ERROR](
            request.path, MalformedRequest("Expect can only be 100-continue")
        )
    # As aiohttp's default: the interim answer is no part of the response's size.
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None
