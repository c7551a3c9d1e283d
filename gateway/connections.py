"""Slow and idle clients: how long a request's head and body may take to arrive, and an idle
kept-alive connection may wait.

aiohttp bounds only the idle time (``keepalive_timeout``); a client sending a
byte a second, or a head and then a trickle of body, holds its socket for as
long as it likes. It offers no hook for either, so the gateway has aiohttp
build its connections from a subclass of its protocol (installed by
gateway.protocol) that watches the bytes as they arrive: one timer, armed
only while a head or a body is incomplete (a request whose head, or head
and body, come in one read arms nothing), and the connection closed when it
fires. The limits are the app's own
(``CONNECTION_LIMITS``), so they hold however the app is served: ``gateway
serve`` with any number of workers, or a test's server. Connections of apps
without limits behave as aiohttp's own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Seconds: a head from its first byte, a body from the end of its head, an idle wait."""

    head: float
    body: float
    keepalive: float


CONNECTION_LIMITS = web.AppKey("connection_limits", ConnectionLimits)


def _limits_of(manager: web.Server) -> ConnectionLimits | None:
    # The server an Application makes hands requests to its bound _handle.
    app = getattr(manager.request_handler, "__self__", None)
    return app.get(CONNECTION_LIMITS) if isinstance(app, web.Application) else None


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol, with a deadline on every head and body still arriving."""

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        limits = _limits_of(manager)
        if limits is not None:
            kwargs["keepalive_timeout"] = limits.keepalive
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._clock: asyncio.AbstractEventLoop = kwargs["loop"]
        self._deadline: asyncio.TimerHandle | None = None
        # The payload of the request whose body is still arriving.
        self._body: StreamReader | None = None

    # _request_count, _messages, _close and _force_close are aiohttp's own
    # state, read here by its subclass; tests/test_abuse.py pins the behaviour
    # on every aiohttp the gateway installs.
    def data_received(self, data: bytes) -> None:
        limits = self._limits
        if limits is None or not data:
            super().data_received(data)
            return
        waiting_for_head = self._body is None and self._deadline is None
        started = self._clock.time()
        heads_before = self._request_count
        super().data_received(data)
        if self._force_close or self._close:
            self._disarm()
            return
        if self._request_count != heads_before:
            # A head (or more) is complete; the last one's body decides.
            self._disarm()
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._arm(started + limits.body, "body", limits.body)
        elif self._body is not None:
            if self._body.is_eof():
                self._disarm()
        elif waiting_for_head:
            # The first bytes of a head that is not complete yet.
            self._arm(started + limits.head, "head", limits.head)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, when: float, part: str, seconds: float) -> None:
        self._deadline = self._clock.call_at(when, self._too_slow, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._body = None

    def _too_slow(self, part: str, seconds: float) -> None:
        self._deadline = None
        self._body = None
        # Nothing that identifies the client or its request: the bytes may
        # hold a session token.
        log.info("closed a connection whose request %s took over %g s to arrive", part, seconds)
        self.force_close()
