"""What the delivery tests share: the gateway pointed at the fakes, waiting on state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import layer_headers
from tests.helpers import BIND, LAYER_DEVICE, navixy, navixy_ok

ADMIN_KEY = "delivery-test-key-0c6b1f2d9e8a7f35"
NOTIFICATIONS = "/internal/v1/notifications"

# Tests drive time through the settings: no backoff, a quick poll.
FAST = {
    "GATEWAY_DELIVERY_RETRY_BASE": "0",
    "GATEWAY_DELIVERY_QUOTA_RETRY_BASE": "0",
    "GATEWAY_DELIVERY_POLL": "0.2",
}


def admin(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}", **extra}


async def until(
    condition: Callable[[], Awaitable[bool]], *, seconds: float = 30.0, what: str = ""
) -> None:
    """Wait for ``condition`` by looking at state, not by sleeping a guessed time."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)


async def session(api: TestClient, user: str) -> str:  # type: ignore[type-arg]
    response = await api.post("/internal/v1/sessions", json={"user": user}, headers=admin())
    assert response.status == 201, await response.text()
    token: str = (await response.json())["token"]
    return token


async def layer_register(
    api: TestClient,  # type: ignore[type-arg]
    user: str,
    token: str,
    kind: str = "apns",
    device: str = LAYER_DEVICE,
    **fields: Any,
) -> str:
    """Register a push token through the Layer dialect; the session token used."""
    session_token = await session(api, user)
    response = await api.post(
        "/push_tokens",
        json={"token": token, "type": kind, "device_id": device, **fields},
        headers=layer_headers(session_token),
    )
    assert response.status == 202, await response.text()
    return session_token


async def navixy_bind(api: TestClient, user: str, **params: Any) -> str:  # type: ignore[type-arg]
    session_token = await session(api, user)
    await navixy_ok(await navixy(api, BIND, {"hash": session_token, **params}))
    return session_token


async def send(api: TestClient, **body: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    message = {"category": "chat_message", "title": "Bob", "body": "Are we still on for 7?"}
    response = await api.post(NOTIFICATIONS, json={**message, **body}, headers=admin())
    assert response.status == 202, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def progress(api: TestClient, notification: str) -> dict[str, Any]:  # type: ignore[type-arg]
    response = await api.get(f"{NOTIFICATIONS}/{notification}", headers=admin())
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def settled(api: TestClient, notification: str) -> dict[str, Any]:  # type: ignore[type-arg]
    """The notification's progress once every delivery has an outcome."""
    result: dict[str, Any] = {}

    async def done() -> bool:
        result.update(await progress(api, notification))
        return bool(result["state"] == "done")

    await until(done, what=f"notification {notification} to settle")
    return result


async def targets(api: TestClient, users: list[str]) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    import orjson

    response = await api.post(
        "/internal/v1/targets", json={"users": users, "category": "chat_message"}, headers=admin()
    )
    assert response.status == 200
    return [orjson.loads(line) for line in (await response.read()).splitlines()]


async def delivery_rows(db: asyncpg.Connection, notification: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT * FROM deliveries WHERE notification_id = $1 ORDER BY id", notification
    )
    return [dict(row) for row in rows]
