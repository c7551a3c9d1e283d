"""A bare aiohttp server with the gateway's three benchmarked routes: the ceiling.

It answers exactly what the gateway answers on success (202 with an empty body for the
Layer register, 200 ``{"success":true}`` for both Navixy binds) without touching a
database, so ``gateway / bare`` isolates what the gateway's own work costs.  It reads
each request body, as any real handler must, and parses nothing.

Run: ``.venv/bin/python bench/bare.py --host 127.0.0.1 --port 8081``
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

_SUCCESS = b'{"success":true}'


async def layer_register(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202)


async def navixy_bind(request: web.Request) -> web.Response:
    if request.can_read_body:
        await request.read()
    return web.Response(body=_SUCCESS, content_type="application/json")


async def live(_request: web.Request) -> web.Response:
    return web.Response(status=200)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/push_tokens", layer_register)
    app.router.add_post("/v2/user/session/push_token/bind", navixy_bind)
    app.router.add_get("/v2/user/session/push_token/bind", navixy_bind)
    app.router.add_get("/health/live", live)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--backlog", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=args.backlog,
    )


if __name__ == "__main__":
    main()
