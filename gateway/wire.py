"""What the surfaces share on the wire: the handler type, the session token, a JSON answer."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.commands import SessionRef

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A session token as the gateway mints it (secrets.token_hex(16)); either case
# is accepted, and it is kept by the digest of its lowercase form.
SESSION_TOKEN = re.compile(r"[0-9a-fA-F]{32}")


def session_from_token(value: object) -> SessionRef | None:
    """The session a presented token names, or None when it is not one's form."""
    if not isinstance(value, str) or not SESSION_TOKEN.fullmatch(value):
        return None
    return SessionRef.from_token(value.lower())


def json_response(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
