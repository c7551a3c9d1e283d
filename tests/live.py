"""An app served on 127.0.0.1 from a thread with its own event loop, for synchronous clients.

Hypothesis's ``@given`` drives synchronous tests, and requests and schemathesis are
synchronous clients: none of them can share pytest's event loop, so the server gets one
of its own. ``run`` hands that loop a coroutine (a database query, a store call) from
the test's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from aiohttp import web

from gateway import protocol

T = TypeVar("T")


class LiveServer:
    """``app`` on a free port, from ``start`` (or ``with``) to ``stop``; ``runner_options``
    go to aiohttp's AppRunner."""

    def __init__(
        self, app: web.Application, name: str = "live-gateway", **runner_options: Any
    ) -> None:
        protocol.install()
        self.app = app
        self.runner = web.AppRunner(app, **runner_options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.thread.start()
        self.run(self.setup())

    def stop(self) -> None:
        self.run(self.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    async def setup(self) -> None:
        """On the server's loop: start serving. Extend it to open more there."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def cleanup(self) -> None:
        """On the server's loop: stop serving."""
        await self.runner.cleanup()
