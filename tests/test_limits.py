"""Rate limits per session, the bounded write queue, and the health routes."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing

import pytest

from gateway.app import create_app
from gateway.commands import SessionRef, UnregisterToken
from gateway.errors import Overloaded
from gateway.executor import GroupCommitter
from gateway.keys import EXECUTOR
from gateway.ratelimit import RateLimiter, SharedBuckets
from tests.conftest import layer_headers

APNS = "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949"


@pytest.fixture
async def strict_client(aiohttp_client, settings, db):
    """A gateway allowing each session two requests, then one every 1000 seconds."""
    limited = dataclasses.replace(settings, rate_limit=0.001, rate_burst=2)
    return await aiohttp_client(create_app(limited))


async def _mint(client, user: str) -> str:
    token: str = await client.app[EXECUTOR].store.create_session(user, 3600)
    return token


async def test_layer_session_over_its_rate_gets_429_rate_limit_exceeded(strict_client):
    token = await _mint(strict_client, "alice")
    body = {"token": APNS, "type": "apns", "device_id": "d1"}
    statuses = []
    for _ in range(3):
        response = await strict_client.post("/push_tokens", json=body, headers=layer_headers(token))
        statuses.append(response.status)
    assert statuses == [202, 202, 429]
    error = await response.json()
    assert (error["id"], error["code"]) == ("rate_limit_exceeded", 7)
    assert response.headers["Retry-After"] == "1"


async def test_navixy_session_over_its_rate_gets_code_15_with_429(strict_client):
    token = await _mint(strict_client, "bob")
    url = "/v2/user/session/push_token/delete"
    statuses = [(await strict_client.get(url, params={"hash": token})).status for _ in range(2)]
    response = await strict_client.get(url, params={"hash": token})
    assert statuses == [200, 200]
    assert response.status == 429
    assert (await response.json())["status"]["code"] == 15


async def test_rate_limit_of_one_session_leaves_others_alone(strict_client):
    greedy, other = await _mint(strict_client, "greedy"), await _mint(strict_client, "other")
    url = "/v2/user/session/push_token/delete"
    for _ in range(3):
        await strict_client.get(url, params={"hash": greedy})
    response = await strict_client.get(url, params={"hash": other})
    assert response.status == 200


async def test_layer_session_over_its_rate_is_refused_before_its_body_is_read(strict_client):
    token = await _mint(strict_client, "hasty")
    headers = {**layer_headers(token), "Content-Type": "application/json"}
    body = {"token": APNS, "type": "apns", "device_id": "d1"}
    for _ in range(2):
        await strict_client.post("/push_tokens", json=body, headers=headers)
    # Not JSON at all: a 400 if it were read, a 429 because it is not.
    response = await strict_client.post("/push_tokens", data=b"{not json", headers=headers)
    assert response.status == 429
    assert (await response.json())["id"] == "rate_limit_exceeded"


async def test_navixy_hash_in_the_query_is_charged_before_the_parameters_are_checked(
    strict_client,
):
    token = await _mint(strict_client, "eager")
    url = "/v2/user/session/push_token/bind"
    for _ in range(2):
        await strict_client.get(url, params={"hash": token})  # 400: no application
    response = await strict_client.get(url, params={"hash": token, "application": "nope"})
    assert response.status == 429
    assert (await response.json())["status"]["code"] == 15


async def test_navixy_hash_in_the_body_is_charged_once_after_parsing(strict_client):
    token = await _mint(strict_client, "bodily")
    url = "/v2/user/session/push_token/delete"
    statuses = [(await strict_client.post(url, json={"hash": token})).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_navixy_body_hash_over_a_query_hash_is_charged_to_the_body_session(
    strict_client,
):
    named, acting = await _mint(strict_client, "named"), await _mint(strict_client, "acting")
    url = "/v2/user/session/push_token/delete"
    for _ in range(2):
        response = await strict_client.post(url, params={"hash": named}, json={"hash": acting})
        assert response.status == 200
    # The acting session's budget is spent, whichever hash the query string names.
    response = await strict_client.post(url, params={"hash": named}, json={"hash": acting})
    assert response.status == 429


def test_limiters_attached_to_shared_buckets_share_one_budget():
    buckets = SharedBuckets(slots=1024)
    try:
        lock = multiprocessing.get_context("spawn").Lock()
        worker_a = RateLimiter(0.001, 3, SharedBuckets(buckets.name), lock)
        worker_b = RateLimiter(0.001, 3, SharedBuckets(buckets.name), lock)
        digest = SessionRef.from_token("a" * 32).token_sha256
        answers = [limiter.allow(digest) for limiter in (worker_a, worker_b, worker_a, worker_b)]
        assert answers == [True, True, True, False]
    finally:
        buckets.close(unlink=True)


def test_rate_limit_zero_turns_limiting_off():
    limiter = RateLimiter(0, 1)
    digest = SessionRef.from_token("b" * 32).token_sha256
    assert all(limiter.allow(digest) for _ in range(1000))


async def test_write_queue_past_its_bound_refuses_at_once_and_keeps_the_queued(client, new_session):
    token = await new_session("carol")
    store = client.app[EXECUTOR].store
    writer = GroupCommitter(store, max_pending=2)  # not started: nothing drains the queue yet
    command = UnregisterToken(SessionRef.from_token(token), "d1")
    queued = [asyncio.ensure_future(writer.submit(command)) for _ in range(2)]
    await asyncio.sleep(0)  # let both reach the queue
    with pytest.raises(Overloaded):
        await writer.submit(command)
    writer.start()
    await asyncio.gather(*queued)
    await writer.close()


async def test_overloaded_write_is_503_in_both_dialects(client, new_session, monkeypatch):
    token = await new_session("dave")

    async def refuse(command):
        raise Overloaded()

    monkeypatch.setattr(client.app[EXECUTOR]._writer, "submit", refuse)
    layer = await client.post(
        "/push_tokens",
        json={"token": APNS, "type": "apns", "device_id": "d1"},
        headers=layer_headers(token),
    )
    navixy = await client.get("/v2/user/session/push_token/delete", params={"hash": token})
    assert layer.status == 503
    assert (await layer.json())["id"] == "service_unavailable"
    assert navixy.status == 503
    assert (await navixy.json())["status"]["code"] == 14


async def test_health_ready_reports_the_database_up(client):
    response = await client.get("/health/ready")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "database": "up"}


async def test_health_live_answers_without_the_database(client):
    response = await client.get("/health/live")
    assert response.status == 200
