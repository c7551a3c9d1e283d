"""A first end-to-end pass through both dialects."""

from __future__ import annotations

from tests.conftest import layer_headers

APNS = "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949"


async def test_layer_register_answers_202_and_stores_the_token(client, new_session, db):
    token = await new_session("alice")
    response = await client.post(
        "/push_tokens",
        json={"token": APNS, "type": "apns", "device_id": "dev-1"},
        headers=layer_headers(token),
    )
    assert response.status == 202, await response.text()
    assert await response.read() == b""
    rows = await db.fetch("SELECT user_id, provider, token, device_id FROM registrations")
    assert [tuple(r) for r in rows] == [("alice", "apns", APNS, "dev-1")]


async def test_navixy_bind_as_get_answers_success(client, new_session, db):
    token = await new_session("bob")
    response = await client.get(
        "/v2/user/session/push_token/bind",
        params={
            "hash": token,
            "application": "navixy_android_viewer",
            "token": "f4be7b9d04da2ce1af111b",
        },
    )
    assert response.status == 200, await response.text()
    assert await response.json() == {"success": True}
    assert await db.fetchval("SELECT count(*) FROM registrations WHERE device_id IS NULL") == 1
