"""End to end through the public dialects: register, send, and the fake provider's view of it.

The gateway runs its delivery workers in the server (as `serve` does) with
its settings pointed at fake APNs, FCM and Web Push services on 127.0.0.1,
reached through GATEWAY_PUSH_RESOLVE pins and trusted through
GATEWAY_PUSH_CA_FILE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.delivery.worker import running_workers
from tests.conftest import ClientFactory
from tests.delivery_support import (
    ADMIN_KEY,
    FAST,
    admin,
    delivery_rows,
    layer_register,
    progress,
    send,
    settled,
    targets,
    until,
)
from tests.fakes import apns as fake_apns
from tests.fakes.apns import FakeApns
from tests.fakes.tls import TestCA
from tests.helpers import apns_token

ZERO = {"pending": 0, "delivered": 0, "failed": 0, "pruned": 0, "expired": 0}


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[FakeApns]:
    fake = FakeApns(TestCA(tmp_path), tmp_path)
    await fake.start()
    yield fake
    await fake.close()


def gateway_settings(database_url: str, *fakes_env: dict[str, str], **extra: str) -> Settings:
    env: dict[str, str] = {"DATABASE_URL": database_url, "GATEWAY_ADMIN_TOKEN": ADMIN_KEY, **FAST}
    resolve = []
    for fake_env in fakes_env:
        resolve.append(fake_env.get("GATEWAY_PUSH_RESOLVE", ""))
        env.update(fake_env)
    env["GATEWAY_PUSH_RESOLVE"] = ",".join(r for r in resolve if r)
    env.update(extra)
    return Settings.from_env(env)


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory, database_url: str, db: asyncpg.Connection, apns: FakeApns
) -> TestClient:  # type: ignore[type-arg]
    await db.execute("TRUNCATE notifications CASCADE")
    return await aiohttp_client(create_app(gateway_settings(database_url, apns.env())))


async def test_alices_phone_gets_bobs_message_and_bobs_own_phone_does_not(api, apns):
    alice, bob = apns_token(0xA11CE), apns_token(0xB0B)
    apns.topics[alice] = "com.layer.bundleid"
    await layer_register(api, "alice", alice, apns_bundle_id="com.layer.bundleid")
    await layer_register(api, "bob", bob)
    answer = await send(
        api,
        users=["alice", "bob"],
        exclude_users=["bob"],
        data={"conversation": "c-42"},
        collapse_key="c-42",
    )
    assert answer["targets"] == 1
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 1}
    assert body["by_provider"] == {"apns": {**ZERO, "delivered": 1}}
    assert [r.token for r in apns.received] == [alice]
    push = apns.received[0]
    assert push.payload == {
        "aps": {"alert": {"title": "Bob", "body": "Are we still on for 7?"}},
        "conversation": "c-42",
    }
    assert push.headers["apns-topic"] == "com.layer.bundleid"
    assert push.headers["apns-push-type"] == "alert"
    assert push.headers["apns-priority"] == "10"
    assert push.headers["apns-collapse-id"] == "c-42"
    expiration = datetime.fromtimestamp(int(push.headers["apns-expiration"]), UTC)
    assert timedelta(hours=23) < expiration - datetime.now(UTC) <= timedelta(days=1)
    assert apns.delivered_to(bob) == 0


async def test_a_registration_without_a_bundle_id_uses_gateway_apns_topic(api, apns):
    token = apns_token(1)
    await layer_register(api, "alice", token)
    answer = await send(api, users=["alice"], priority="normal")
    await settled(api, answer["id"])
    assert apns.received[0].headers["apns-topic"] == fake_apns.TOPIC
    assert apns.received[0].headers["apns-priority"] == "5"


async def test_apns_dead_answers_prune_the_token_from_targets(api, apns, db):
    dead = {
        "alice": (apns_token(1), fake_apns.UNREGISTERED),
        "bob": (apns_token(2), fake_apns.BAD_DEVICE_TOKEN),
        "carol": (apns_token(3), fake_apns.Answer(400, "DeviceTokenNotForTopic")),
    }
    for user, (token, scripted) in dead.items():
        await layer_register(api, user, token)
        apns.script[token].append(scripted)
    await layer_register(api, "dave", apns_token(4))
    users = ["alice", "bob", "carol", "dave"]
    answer = await send(api, users=users)
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "pruned": 3, "delivered": 1}
    assert [t["user"] for t in await targets(api, users)] == ["dave"]
    metrics = await (await api.get("/metrics")).text()
    assert "gateway_delivery_pruned_registrations_total 3.0" in metrics


async def test_a_410_older_than_the_registration_leaves_the_new_install(api, apns, db):
    token = apns_token(7)
    await layer_register(api, "alice", token)
    # Apple saw the token die an hour ago; the registration is newer.
    died = datetime.now(UTC) - timedelta(hours=1)
    apns.script[token].append(
        fake_apns.Answer(410, "Unregistered", timestamp_ms=int(died.timestamp() * 1000))
    )
    answer = await send(api, users=["alice"])
    body = await settled(api, answer["id"])
    assert body["counts"]["pruned"] == 1
    assert [t["token"] for t in await targets(api, ["alice"])] == [token]


async def test_transient_answers_are_retried_until_delivered(api, apns, db):
    token = apns_token(5)
    await layer_register(api, "alice", token)
    apns.script[token] += [
        fake_apns.SERVICE_UNAVAILABLE,
        fake_apns.Answer(500, "InternalServerError"),
        fake_apns.TOO_MANY_REQUESTS,
    ]
    answer = await send(api, users=["alice"])
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 1}
    assert apns.delivered_to(token) == 1
    (row,) = await delivery_rows(db, answer["id"])
    assert row["attempts"] == 4
    assert [status for _, status in apns.answers] == [503, 500, 429, 200]


async def test_a_503_with_retry_after_waits_that_long(api, apns, db):
    token = apns_token(6)
    await layer_register(api, "alice", token)
    apns.script[token].append(fake_apns.Answer(503, "ServiceUnavailable", retry_after=3600))
    answer = await send(api, users=["alice"])

    async def rescheduled() -> bool:
        rows = await delivery_rows(db, answer["id"])
        return bool(rows[0]["last_status"] == 503)

    await until(rescheduled, what="the 503 to be recorded")
    (row,) = await delivery_rows(db, answer["id"])
    # The backoff base is 0 in tests: only Retry-After can put it an hour out.
    wait = row["next_attempt_at"] - datetime.now(UTC)
    assert timedelta(minutes=59) < wait <= timedelta(hours=1)
    assert row["state"] == "pending"
    assert (await progress(api, answer["id"]))["state"] == "pending"
    # An hour passes.
    await db.execute("UPDATE deliveries SET next_attempt_at = now() WHERE id = $1", row["id"])
    await settled(api, answer["id"])
    assert apns.delivered_to(token) == 1


async def test_retries_end_in_expired_when_the_ttl_ends(api, apns, db):
    token = apns_token(8)
    await layer_register(api, "alice", token)
    apns.script[token].append(fake_apns.Answer(503, "ServiceUnavailable", retry_after=120))
    answer = await send(api, users=["alice"], ttl=60)
    body = await settled(api, answer["id"])
    # A retry two minutes out falls after a one-minute TTL: expired at once.
    assert body["counts"] == {**ZERO, "expired": 1}
    assert apns.delivered_to(token) == 0


async def test_a_delivery_due_after_its_ttl_is_expired_without_a_send(
    aiohttp_client, database_url, db, apns
):
    settings = gateway_settings(database_url, apns.env(), GATEWAY_DELIVERY_WORKERS="0")
    api = await aiohttp_client(create_app(settings))
    await layer_register(api, "alice", apns_token(9))
    answer = await send(api, users=["alice"], ttl=60)
    # The TTL ends while no worker runs.
    await db.execute(
        "UPDATE deliveries SET expires_at = now() - interval '1 second' WHERE notification_id = $1",
        answer["id"],
    )
    async with running_workers(replace(settings, delivery_workers=1)):
        body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "expired": 1}
    assert apns.answers == []


async def test_a_payload_or_credential_fault_fails_at_once_and_raises_the_alarm(api, apns):
    token = apns_token(10)
    await layer_register(api, "alice", token)
    apns.script[token].append(fake_apns.Answer(400, "BadCollapseId"))
    answer = await send(api, users=["alice"])
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "failed": 1}
    assert body["last_error"] == "BadCollapseId"
    assert [t["token"] for t in await targets(api, ["alice"])] == [token]
    page = await (
        await api.get(
            f"/internal/v1/notifications/{answer['id']}/deliveries",
            params={"outcome": "failed"},
            headers=admin(),
        )
    ).json()
    assert [(d["status"], d["error"]) for d in page["deliveries"]] == [(400, "BadCollapseId")]
    metrics = await (await api.get("/metrics")).text()
    assert 'gateway_delivery_alarms_total{provider="apns",reason="BadCollapseId"} 1.0' in metrics


async def test_an_expired_provider_token_is_renewed_and_the_push_retried_until_accepted(api, apns):
    token = apns_token(11)
    await layer_register(api, "alice", token)
    first = await send(api, users=["alice"])
    await settled(api, first["id"])
    assert len(apns.provider_tokens) == 1
    # Apple now refuses the token the gateway holds.
    apns.tokens_expire_before = 2**40
    second = await send(api, users=["alice"])
    await until(lambda: _answered(apns, 2), what="the refusal")
    # Signed again in the same second is still refused: iat is whole seconds.
    apns.tokens_expire_before = 0
    await settled(api, second["id"])
    assert apns.delivered_to(token) == 2


async def _answered(apns: FakeApns, n: int) -> bool:
    return len(apns.answers) >= n


async def test_a_goaway_moves_the_stream_to_a_new_connection(api, apns):
    token = apns_token(12)
    await layer_register(api, "alice", token)
    apns.script[token].append(fake_apns.GOAWAY)
    answer = await send(api, users=["alice"])
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 1}
    assert apns.connections == 2
    assert [status for _, status in apns.answers] == [fake_apns.GOAWAY, 200]


async def test_many_pushes_share_one_multiplexed_connection(api, apns):
    users = [f"user{n}" for n in range(40)]
    for number, user in enumerate(users):
        await layer_register(api, user, apns_token(1000 + number))
    answer = await send(api, users=users)
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 40}
    assert apns.connections == 1


async def test_notify_wakes_an_idle_worker_long_before_its_poll(
    aiohttp_client, database_url, db, apns
):
    # An hour between polls: only the NOTIFY sent with the enqueue (and the
    # worker's own wake for a retry due now) can get these delivered in time.
    settings = gateway_settings(database_url, apns.env(), GATEWAY_DELIVERY_POLL="3600")
    api = await aiohttp_client(create_app(settings))
    token = apns_token(77)
    await layer_register(api, "alice", token)
    apns.script[token].append(fake_apns.SERVICE_UNAVAILABLE)
    answer = await send(api, users=["alice"])
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 1}


async def test_a_reason_with_control_characters_is_recorded_printable(api, apns):
    token = apns_token(13)
    await layer_register(api, "alice", token)
    apns.script[token].append(fake_apns.Answer(400, "Bad\u0000Thing\n"))
    answer = await send(api, users=["alice"])
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "failed": 1}
    assert body["last_error"] == "Bad?Thing?"


async def test_a_send_that_outlasts_half_the_lease_is_retried(
    aiohttp_client, database_url, db, apns
):
    # A one-second lease: a send is given half of it, then counted a timeout.
    settings = gateway_settings(database_url, apns.env(), GATEWAY_DELIVERY_LEASE="1")
    api = await aiohttp_client(create_app(settings))
    await layer_register(api, "alice", apns_token(14))
    apns.paused.clear()
    answer = await send(api, users=["alice"])

    async def timed_out() -> bool:
        rows = await delivery_rows(db, answer["id"])
        return bool(rows[0]["last_error"] == "timeout")

    await until(timed_out, what="the send to time out")
    assert (await delivery_rows(db, answer["id"]))[0]["state"] == "pending"
    apns.paused.set()
    body = await settled(api, answer["id"])
    assert body["counts"] == {**ZERO, "delivered": 1}
