"""POST/GET /internal/v1/notifications: the queue written in one transaction, sizes, idempotency."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from tests.conftest import ClientFactory, layer_headers
from tests.helpers import LAYER_DEVICE, apns_token

ADMIN_KEY = "delivery-test-key-0c6b1f2d9e8a7f35"
NOTIFICATIONS = "/internal/v1/notifications"


def admin(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}", **extra}


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> TestClient:  # type: ignore[type-arg]
    await db.execute("TRUNCATE notifications CASCADE")
    return await aiohttp_client(create_app(replace(settings, admin_token=ADMIN_KEY)))


async def register_apns(api: TestClient, user: str, token: str, **fields: Any) -> None:  # type: ignore[type-arg]
    session = await api.post("/internal/v1/sessions", json={"user": user}, headers=admin())
    assert session.status == 201, await session.text()
    response = await api.post(
        "/push_tokens",
        json={"token": token, "type": "apns", "device_id": LAYER_DEVICE, **fields},
        headers=layer_headers((await session.json())["token"]),
    )
    assert response.status == 202, await response.text()


async def error(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body: dict[str, Any] = (await response.json())["error"]
    assert body["code"] == code
    return body


def message(**extra: Any) -> dict[str, Any]:
    return {"users": ["alice"], "category": "chat_message", "title": "Hi", "body": "Hello", **extra}


async def test_a_notification_and_one_delivery_per_target_are_committed_before_202(api, db):
    await register_apns(api, "alice", apns_token(1), apns_bundle_id="com.example.app")
    await register_apns(api, "bob", apns_token(2))
    await register_apns(api, "carol", apns_token(3))
    response = await api.post(
        NOTIFICATIONS,
        json=message(users=["alice", "bob", "carol"], exclude_users=["bob"]),
        headers=admin(),
    )
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert answer["targets"] == 2
    rows = await db.fetch(
        "SELECT user_id, provider, token, apns_bundle_id, state, attempts FROM deliveries"
        " WHERE notification_id = $1 ORDER BY user_id",
        answer["id"],
    )
    assert [dict(r) for r in rows] == [
        {
            "user_id": "alice",
            "provider": "apns",
            "token": apns_token(1),
            "apns_bundle_id": "com.example.app",
            "state": "pending",
            "attempts": 0,
        },
        {
            "user_id": "carol",
            "provider": "apns",
            "token": apns_token(3),
            "apns_bundle_id": None,
            "state": "pending",
            "attempts": 0,
        },
    ]


async def test_progress_counts_every_outcome_by_provider(api, db):
    await register_apns(api, "alice", apns_token(1))
    answer = await (await api.post(NOTIFICATIONS, json=message(), headers=admin())).json()
    response = await api.get(f"{NOTIFICATIONS}/{answer['id']}", headers=admin())
    assert response.status == 200
    body = await response.json()
    zero = {"pending": 0, "delivered": 0, "failed": 0, "pruned": 0, "expired": 0}
    assert body["id"] == answer["id"]
    assert body["state"] == "pending"
    assert body["counts"] == {**zero, "pending": 1}
    assert body["by_provider"] == {"apns": {**zero, "pending": 1}}
    await db.execute(
        "UPDATE deliveries SET state = 'failed', last_error = 'BadTopic'"
        " WHERE notification_id = $1",
        answer["id"],
    )
    body = await (await api.get(f"{NOTIFICATIONS}/{answer['id']}", headers=admin())).json()
    assert body["state"] == "done"
    assert body["counts"] == {**zero, "failed": 1}
    assert body["last_error"] == "BadTopic"


async def test_an_audience_with_no_targets_is_done_at_once(api):
    response = await api.post(NOTIFICATIONS, json=message(users=["nobody"]), headers=admin())
    answer = await response.json()
    assert answer["targets"] == 0
    body = await (await api.get(f"{NOTIFICATIONS}/{answer['id']}", headers=admin())).json()
    assert body["state"] == "done"


async def test_the_idempotency_key_answers_a_retry_with_the_first_notification(api, db):
    await register_apns(api, "alice", apns_token(1))
    key = {"Idempotency-Key": "order-42-shipped"}
    first = await (await api.post(NOTIFICATIONS, json=message(), headers=admin(**key))).json()
    # The same JSON, keys in another order.
    retried = await api.post(
        NOTIFICATIONS, json=dict(reversed(list(message().items()))), headers=admin(**key)
    )
    assert retried.status == 202
    assert await retried.json() == first
    assert await db.fetchval("SELECT count(*) FROM notifications") == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1
    other = await api.post(NOTIFICATIONS, json=message(body="Other"), headers=admin(**key))
    await error(other, 409, "idempotency_key_reused")


async def test_concurrent_retries_with_one_idempotency_key_make_one_notification(api, db):
    await register_apns(api, "alice", apns_token(1))
    key = {"Idempotency-Key": "race"}
    answers = await asyncio.gather(
        *(api.post(NOTIFICATIONS, json=message(), headers=admin(**key)) for _ in range(8))
    )
    bodies = [await a.json() for a in answers]
    assert all(a.status == 202 for a in answers)
    assert len({b["id"] for b in bodies}) == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"body": "x" * 4100}, "body"),
        ({"data": {"k": "v" * 4100}}, "data"),
        ({"apns": {"aps": {"alert": "x" * 4100}}}, "apns"),
        ({"fcm": {"data": {"k": "v" * 4096}}}, "fcm"),
        ({"webpush": {"k": "v" * 3990}}, "webpush"),
    ],
)
async def test_a_payload_over_a_providers_limit_is_refused_naming_the_field(api, db, extra, field):
    response = await api.post(NOTIFICATIONS, json=message(**extra), headers=admin())
    body = await error(response, 400, "invalid_parameters")
    assert field in [p["name"] for p in body["parameters"]]
    assert await db.fetchval("SELECT count(*) FROM notifications") == 0


async def test_web_push_takes_3993_bytes_of_plaintext_and_not_3994(api):
    # {"k":"..."} is 8 bytes of framing.
    fits = await api.post(
        NOTIFICATIONS, json=message(webpush={"k": "v" * (3993 - 8)}), headers=admin()
    )
    assert fits.status == 202, await fits.text()
    over = await api.post(
        NOTIFICATIONS, json=message(webpush={"k": "v" * (3994 - 8)}), headers=admin()
    )
    await error(over, 400, "invalid_parameters")


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({"users": ["alice"], "category": "chat_message"}, "body"),
        (message(ttl=0), "ttl"),
        (message(ttl=28 * 86400 + 1), "ttl"),
        (message(ttl=True), "ttl"),
        (message(priority="urgent"), "priority"),
        (message(collapse_key="k" * 65), "collapse_key"),
        (message(data={"n": 1}), "data.n.value"),
        (message(category="nope"), "category"),
        (message(apns={"aps": {}, "headers": {"apns-topic": "x"}}), "apns.headers.apns-topic.key"),
        (message(fcm={"webpush": {}}), "fcm.webpush"),
        (message(users=[]), "users"),
        (message(extra=1), "extra"),
    ],
)
async def test_a_bad_notification_is_refused_naming_the_parameter(api, body, parameter):
    response = await api.post(NOTIFICATIONS, json=body, headers=admin())
    answer = await error(response, 400, "invalid_parameters")
    assert parameter in [p["name"] for p in answer["parameters"]], answer


async def test_a_bad_idempotency_key_is_refused(api):
    response = await api.post(
        NOTIFICATIONS, json=message(), headers=admin(**{"Idempotency-Key": "has space"})
    )
    answer = await error(response, 400, "invalid_parameters")
    assert answer["parameters"][0]["name"] == "Idempotency-Key"


async def test_every_notification_route_needs_the_admin_key(api):
    for method, path in [
        ("POST", NOTIFICATIONS),
        ("GET", f"{NOTIFICATIONS}/00000000-0000-0000-0000-000000000000"),
        ("GET", f"{NOTIFICATIONS}/00000000-0000-0000-0000-000000000000/deliveries"),
    ]:
        await error(await api.request(method, path, json=message()), 401, "unauthorized")


async def test_an_unknown_or_malformed_notification_id(api):
    missing = f"{NOTIFICATIONS}/00000000-0000-0000-0000-000000000000"
    await error(await api.get(missing, headers=admin()), 404, "notification_not_found")
    await error(
        await api.get(f"{missing}/deliveries", headers=admin()), 404, "notification_not_found"
    )
    bad = await error(
        await api.get(f"{NOTIFICATIONS}/12", headers=admin()), 400, "invalid_parameters"
    )
    assert bad["parameters"][0]["name"] == "id"


async def test_deliveries_page_through_one_outcome(api, db):
    for number in range(5):
        await register_apns(api, f"user{number}", apns_token(number))
    users = [f"user{number}" for number in range(5)]
    answer = await (
        await api.post(NOTIFICATIONS, json=message(users=users), headers=admin())
    ).json()
    await db.execute(
        "UPDATE deliveries SET state = 'failed', last_error = 'PayloadTooLarge', last_status = 413"
        " WHERE user_id <> 'user2'"
    )
    seen: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        response = await api.get(
            f"{NOTIFICATIONS}/{answer['id']}/deliveries",
            params={"outcome": "failed", "limit": "3", "after": str(after)},
            headers=admin(),
        )
        assert response.status == 200, await response.text()
        page = await response.json()
        seen.extend(page["deliveries"])
        after = page["next_after"]
    assert sorted(d["user"] for d in seen) == ["user0", "user1", "user3", "user4"]
    assert {(d["outcome"], d["status"], d["error"]) for d in seen} == {
        ("failed", 413, "PayloadTooLarge")
    }
    bad = await api.get(
        f"{NOTIFICATIONS}/{answer['id']}/deliveries", params={"outcome": "lost"}, headers=admin()
    )
    assert (await error(bad, 400, "invalid_parameters"))["parameters"][0]["name"] == "outcome"


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({"collapse_key": "a\u0000b"}, "collapse_key"),
        ({"collapse_key": "line\nbreak"}, "collapse_key"),
        (
            {"apns": {"headers": {"apns-push-type": "alert\r\nx: y"}}},
            "apns.headers.apns-push-type.value",
        ),
    ],
)
async def test_what_travels_in_a_header_refuses_control_characters(api, extra, parameter):
    response = await api.post(NOTIFICATIONS, json=message(**extra), headers=admin())
    answer = await error(response, 400, "invalid_parameters")
    assert parameter in [p["name"] for p in answer["parameters"]], answer


async def test_a_title_with_a_nul_byte_is_stored_and_sent_escaped(api, db):
    response = await api.post(NOTIFICATIONS, json=message(title="a\u0000b"), headers=admin())
    assert response.status == 202, await response.text()


async def test_an_fcm_override_without_data_names_the_messages_data(api):
    body = message(data={"k": "v" * 4100}, fcm={"android": {"priority": "HIGH"}})
    answer = await error(
        await api.post(NOTIFICATIONS, json=body, headers=admin()), 400, "invalid_parameters"
    )
    assert "data" in [p["name"] for p in answer["parameters"]]
    assert "fcm" not in [p["name"] for p in answer["parameters"]]


async def test_a_page_after_an_id_past_bigint_is_refused(api, db):
    await register_apns(api, "alice", apns_token(1))
    answer = await (await api.post(NOTIFICATIONS, json=message(), headers=admin())).json()
    response = await api.get(
        f"{NOTIFICATIONS}/{answer['id']}/deliveries", params={"after": str(2**64)}, headers=admin()
    )
    assert (await error(response, 400, "invalid_parameters"))["parameters"][0]["name"] == "after"
