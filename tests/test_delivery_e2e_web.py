"""End to end for FCM and Web Push, and all three providers in one notification.

Registrations come through the Navixy dialect (navixy_android_viewer,
w3c_pushapi) and Layer; the fake Web Push service decrypts every payload with
the subscription's private key, the fake FCM checks the OAuth grant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.delivery.webpush import generate_vapid_key
from tests.conftest import ClientFactory
from tests.delivery_support import (
    ADMIN_KEY,
    FAST,
    delivery_rows,
    layer_register,
    navixy_bind,
    send,
    settled,
    targets,
    until,
)
from tests.fakes import fcm as fake_fcm
from tests.fakes.apns import FakeApns
from tests.fakes.fcm import FakeFcm
from tests.fakes.tls import TestCA
from tests.fakes.webpush import FakeWebPush, Subscription
from tests.helpers import apns_token, fcm_token

ZERO = {"pending": 0, "delivered": 0, "failed": 0, "pruned": 0, "expired": 0}


@dataclass
class Fakes:
    apns: FakeApns
    fcm: FakeFcm
    webpush: FakeWebPush


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    ca = TestCA(tmp_path)
    public_key = generate_vapid_key(tmp_path / "vapid.pem")
    found = Fakes(FakeApns(ca, tmp_path), FakeFcm(ca, tmp_path), FakeWebPush(ca, public_key))
    for fake in (found.apns, found.fcm, found.webpush):
        await fake.start()
    yield found
    for fake in (found.apns, found.fcm, found.webpush):
        await fake.close()


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory,
    database_url: str,
    db: asyncpg.Connection,
    fakes: Fakes,
    tmp_path: Path,
) -> TestClient:  # type: ignore[type-arg]
    await db.execute("TRUNCATE notifications CASCADE")
    env = {
        "DATABASE_URL": database_url,
        "GATEWAY_ADMIN_TOKEN": ADMIN_KEY,
        **FAST,
        **fakes.apns.env(),
        **fakes.fcm.env(),
        "GATEWAY_VAPID_PRIVATE_KEY": str(tmp_path / "vapid.pem"),
        "GATEWAY_VAPID_SUBJECT": "mailto:ops@example.com",
        "GATEWAY_PUSH_RESOLVE": ",".join(
            (fakes.apns.resolve, fakes.fcm.resolve, fakes.webpush.resolve)
        ),
    }
    return await aiohttp_client(create_app(Settings.from_env(env)))


async def bind_webpush(
    api: TestClient,  # type: ignore[type-arg]
    user: str,
    subscription: Subscription,
    category_filter: str = "*",
) -> None:
    await navixy_bind(
        api,
        user,
        application="w3c_pushapi",
        token=subscription.endpoint,
        parameters={"p256dh": subscription.p256dh, "auth": subscription.auth},
        category_filter=category_filter,
    )


async def bind_fcm(api: TestClient, user: str, token: str) -> None:  # type: ignore[type-arg]
    await navixy_bind(api, user, application="navixy_android_viewer", token=token)


async def test_a_navixy_web_push_binding_gets_the_message_its_filter_admits(api, fakes):
    admits, refuses = fakes.webpush.subscribe(), fakes.webpush.subscribe()
    await bind_webpush(api, "alice", admits, "chat_message,history_rule")
    await bind_webpush(api, "carol", refuses, "-chat_message")
    answer = await send(api, users=["alice", "carol"], data={"thread": "t-1"})
    assert answer["targets"] == 1
    body = await settled(api, answer["id"])
    assert body["by_provider"] == {"webpush": {**ZERO, "delivered": 1}}
    (received,) = fakes.webpush.received
    assert received.endpoint == admits.endpoint
    # Decrypted by the fake with the subscription's private key.
    assert orjson.loads(received.plaintext) == {
        "title": "Bob",
        "body": "Are we still on for 7?",
        "data": {"thread": "t-1"},
        "category": "chat_message",
        "id": answer["id"],
    }
    assert received.headers["Urgency"] == "high"
    assert 86000 < int(received.headers["TTL"]) <= 86400


async def test_a_webpush_override_is_the_plaintext_exactly(api, fakes):
    subscription = fakes.webpush.subscribe()
    await bind_webpush(api, "alice", subscription)
    override = {"notification": {"title": "Custom", "tag": "x"}, "n": 1}
    answer = await send(api, users=["alice"], webpush=override, collapse_key="thread-1")
    await settled(api, answer["id"])
    (received,) = fakes.webpush.received
    assert received.plaintext == orjson.dumps(override)
    assert received.headers["Topic"] == "thread-1"


async def test_web_push_404_and_410_prune_and_413_fails(api, fakes, db):
    gone, missing, large = (fakes.webpush.subscribe() for _ in range(3))
    for user, subscription, status in [("a", gone, 410), ("b", missing, 404), ("c", large, 413)]:
        await bind_webpush(api, user, subscription)
        fakes.webpush.script[subscription.endpoint].append(status)
    answer = await send(api, users=["a", "b", "c"])
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "pruned": 2, "failed": 1}
    assert [t["user"] for t in await targets(api, ["a", "b", "c"])] == ["c"]


async def test_web_push_429_and_503_are_retried_until_delivered(api, fakes):
    subscription = fakes.webpush.subscribe()
    await bind_webpush(api, "alice", subscription)
    fakes.webpush.script[subscription.endpoint] += [429, 503]
    answer = await send(api, users=["alice"])
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 1}
    # The fake decrypts and records every request: the 429's, the 503's, the 201's.
    assert len(fakes.webpush.received) == 3


async def test_fcm_dead_answers_prune_the_token_from_targets(api, fakes):
    tokens = {"a": fcm_token(1), "b": fcm_token(2), "c": fcm_token(3), "d": fcm_token(4)}
    for user, token in tokens.items():
        await bind_fcm(api, user, token)
    fakes.fcm.script[tokens["a"]].append(fake_fcm.UNREGISTERED)
    fakes.fcm.script[tokens["b"]].append(fake_fcm.SENDER_ID_MISMATCH)
    fakes.fcm.script[tokens["c"]].append(fake_fcm.INVALID_TOKEN)
    answer = await send(api, users=list(tokens))
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "pruned": 3, "delivered": 1}
    assert [t["user"] for t in await targets(api, list(tokens))] == ["d"]
    # The fake records every request, answered 200 or not.
    assert sorted(r.token for r in fakes.fcm.received) == sorted(tokens.values())
    (received,) = [r for r in fakes.fcm.received if r.token == tokens["d"]]
    assert received.message["notification"] == {"title": "Bob", "body": "Are we still on for 7?"}


async def test_fcm_429_honours_retry_after_and_503_is_retried(api, fakes, db):
    token = fcm_token(5)
    await bind_fcm(api, "alice", token)
    fakes.fcm.script[token] += [fake_fcm.UNAVAILABLE, fake_fcm.quota(1800)]
    answer = await send(api, users=["alice"])

    async def quota_recorded() -> bool:
        return bool((await delivery_rows(db, answer["id"]))[0]["last_status"] == 429)

    await until(quota_recorded, what="the 429")
    (row,) = await delivery_rows(db, answer["id"])
    assert (
        timedelta(minutes=29) < row["next_attempt_at"] - datetime.now(UTC) <= timedelta(minutes=30)
    )
    await db.execute("UPDATE deliveries SET next_attempt_at = now()")
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 1}
    assert row["attempts"] == 2


async def test_one_notification_reaches_all_three_providers(api, fakes):
    subscription = fakes.webpush.subscribe()
    await layer_register(api, "alice", apns_token(1))
    await bind_fcm(api, "alice", fcm_token(1))
    await bind_webpush(api, "alice", subscription)
    answer = await send(api, users=["alice"])
    assert answer["targets"] == 3
    body = await settled(api, answer["id"])
    assert body["by_provider"] == {
        provider: {**ZERO, "delivered": 1} for provider in ("apns", "fcm", "webpush")
    }
    assert [r.token for r in fakes.apns.received] == [apns_token(1)]
    assert [r.token for r in fakes.fcm.received] == [fcm_token(1)]
    assert [r.endpoint for r in fakes.webpush.received] == [subscription.endpoint]


async def test_a_failing_provider_does_not_hold_up_the_others(api, fakes, db):
    # Every APNs answer is held: its sends stay in flight.
    fakes.apns.paused.clear()
    await layer_register(api, "alice", apns_token(1))
    await bind_fcm(api, "alice", fcm_token(1))
    answer = await send(api, users=["alice"])

    async def fcm_delivered() -> bool:
        return len(fakes.fcm.received) == 1

    await until(fcm_delivered, what="FCM while APNs hangs")
    fakes.apns.paused.set()
    await settled(api, answer["id"])
