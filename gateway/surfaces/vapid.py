"""GET /webpush/vapid-public-key: the key web pages pass to ``PushManager.subscribe()``.

Public, like the key itself: a page must read it before it has any session.
The key is read once when the app is built; a malformed key file stops the
start (Settings and load_vapid_key say which setting is wrong).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.keys import SETTINGS
from gateway.wire import Operation

PATH = "/webpush/vapid-public-key"
NOT_CONFIGURED = {
    "error": "webpush_not_configured",
    "message": "Web Push is not configured on this gateway (GATEWAY_VAPID_PRIVATE_KEY)",
}


def setup_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    if settings.vapid_private_key is None:
        body, status = orjson.dumps(NOT_CONFIGURED), 404
    else:
        # Imported only when configured: it brings the delivery libraries.
        from gateway.delivery.webpush import load_vapid_key, public_key_text

        key = load_vapid_key(settings.vapid_private_key)
        body, status = orjson.dumps({"public_key": public_key_text(key)}), 200

    async def vapid_public_key(request: web.Request) -> web.Response:
        # A key changes only when an operator rotates it (and every subscription
        # with it): a few minutes of caching costs nothing.
        headers = {"Cache-Control": "public, max-age=300"} if status == 200 else None
        return web.Response(
            body=body, status=status, content_type="application/json", headers=headers
        )

    app.router.add_get(PATH, vapid_public_key, allow_head=False)


# The route above as the OpenAPI document tells it.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", PATH, "vapid_public_key",
        "The VAPID public key web pages subscribe with (applicationServerKey)",
        200, "base64url of the 65-byte uncompressed P-256 point",
        {
            "type": "object",
            "required": ["public_key"],
            "properties": {"public_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{87}$"}},
        },
        other_answers=(
            (
                404,
                "Web Push is not configured (GATEWAY_VAPID_PRIVATE_KEY)",
                {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
            ),
        ),
        authenticated=False,
    ),
)
