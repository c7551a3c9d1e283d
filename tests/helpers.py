"""Shared test helpers: sample tokens, Web Push keys, request forms and database snapshots."""

from __future__ import annotations

import base64
import os
from typing import Any

import asyncpg
import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.commands import SessionRef

# The Layer page's example token and device.
LAYER_APNS = "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949"
LAYER_DEVICE = "a7775566-bfbf-11e5-bf72-359a01002888"
# The Navixy page's example FCM token.
NAVIXY_FCM = "f4be7b9d04da2ce1af111b"
ENDPOINT = "https://fcm.googleapis.com/fcm/send/f6kicrBn7S0:APA91b"

BIND = "user/session/push_token/bind"
DELETE = "user/session/push_token/delete"
LOGOUT = "user/logout"

# The three Navixy request forms.
FORMS = ("json", "form", "query")


def apns_token(number: int) -> str:
    """A distinct, valid 64-hex-digit APNs token."""
    return f"{number:064x}"


def fcm_token(number: int) -> str:
    return f"fcm-token:{number:08d}"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def p256_point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def subscription_keys() -> dict[str, str]:
    """A real Web Push subscription's keys: a P-256 point and a 16-byte auth secret."""
    return {"p256dh": b64url(p256_point()), "auth": b64url(os.urandom(16))}


def off_curve_point() -> bytes:
    raw = bytearray(p256_point())
    raw[-1] ^= 0x01
    return bytes(raw)


def compressed_point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )


def random_hash() -> str:
    return os.urandom(16).hex()


def _as_text(value: Any) -> str:
    """A parameter as the form and query-string forms carry it: JSON-typed values as JSON text."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


async def navixy(
    client: TestClient,  # type: ignore[type-arg]
    action: str,
    params: dict[str, Any],
    form: str = "json",
    *,
    prefix: str = "/v2",
    slash: str = "",
    headers: dict[str, str] | None = None,
) -> ClientResponse:
    """Call a Navixy action in one of the three request forms."""
    path = f"{prefix}/{action}{slash}"
    if form == "json":
        return await client.post(path, json=params, headers=headers)
    text = {name: _as_text(value) for name, value in params.items()}
    if form == "form":
        return await client.post(path, data=text, headers=headers)
    if form == "query":
        return await client.get(path, params=text, headers=headers)
    raise ValueError(form)


async def navixy_error(response: ClientResponse, code: int, status: int = 400) -> dict[str, Any]:
    """Assert a Navixy error envelope with this code and HTTP status; return its body."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["success"] is False
    assert body["status"]["code"] == code
    assert isinstance(body["status"]["description"], str)
    assert body["status"]["description"]
    return body


async def navixy_ok(response: ClientResponse) -> None:
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    assert await response.json() == {"success": True}


async def layer_error(
    response: ClientResponse,
    status: int,
    code: int,
    error_id: str,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assert a Layer error body with this status, code and id; return it."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == {"id", "code", "message", "url", "data"}
    assert body["id"] == error_id
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["url"], str)
    assert body["url"].startswith("https://")
    assert isinstance(body["data"], dict)
    if data is not None:
        assert body["data"] == data
    return body


async def registrations(db: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every stored registration with its session's user, in a stable order."""
    rows = await db.fetch(
        """
        SELECT r.user_id, r.session_id, r.device_id, r.provider, r.token, r.apns_bundle_id,
               r.gcm_sender_id, r.ios_version, r.webpush_p256dh, r.webpush_auth,
               r.category_filter
        FROM registrations AS r
        ORDER BY r.user_id, r.device_id NULLS LAST, r.session_id, r.token
        """
    )
    return [dict(row) for row in rows]


async def snapshot(db: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Both tables, whole, to compare before and after a request."""
    regs = await db.fetch("SELECT * FROM registrations ORDER BY id")
    sessions = await db.fetch("SELECT * FROM sessions ORDER BY id")
    return [tuple(row) for row in regs], [tuple(row) for row in sessions]


async def session_id(db: asyncpg.Connection, token: str) -> int:
    """The sessions.id of a session token."""
    value: int = await db.fetchval(
        "SELECT id FROM sessions WHERE token_sha256 = $1", SessionRef.from_token(token).token_sha256
    )
    return value


async def expire(db: asyncpg.Connection, token: str) -> None:
    """Put a session's expiry in the past without deleting it."""
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_sha256 = $1",
        SessionRef.from_token(token).token_sha256,
    )


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation an OpenAPI document describes."""
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
