"""Invariants that hold across both dialects: one holder per token, registrations die with
their session, concurrency, atomicity, and the group-commit batch semantics of the store."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.commands import Provider, RegisterToken, SessionRef, UnregisterToken, WriteCommand
from gateway.errors import DatabaseError, SessionNotFound
from gateway.keys import EXECUTOR
from gateway.store import Store
from tests.conftest import layer_headers
from tests.helpers import (
    BIND,
    DELETE,
    ENDPOINT,
    LOGOUT,
    NAVIXY_FCM,
    apns_token,
    navixy,
    navixy_ok,
    random_hash,
    registrations,
    session_id,
    snapshot,
    subscription_keys,
)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def other_client(aiohttp_client, settings, db) -> Client:
    """A second gateway process on the same database: its own pool and group-commit writer."""
    client: Client = await aiohttp_client(create_app(settings))
    return client


def store_of(client: Client) -> Store:
    return client.app[EXECUTOR].store


async def layer_register(
    client: Client, session: str, device: str, token: str, kind: str = "apns"
) -> None:
    response = await client.post(
        "/push_tokens",
        json={"token": token, "type": kind, "device_id": device},
        headers=layer_headers(session),
    )
    assert response.status == 202, await response.text()


async def layer_unregister(client: Client, session: str, device: str) -> None:
    response = await client.delete(f"/push_tokens/{device}", headers=layer_headers(session))
    assert response.status == 202, await response.text()


async def navixy_bind(
    client: Client, session: str, token: str, application: str = "navixy_iphone_viewer"
) -> None:
    params = {"hash": session, "application": application, "token": token}
    await navixy_ok(await navixy(client, BIND, params))


async def navixy_delete(client: Client, session: str) -> None:
    await navixy_ok(await navixy(client, DELETE, {"hash": session}))


async def holders(db, token: str) -> list[tuple[str, str | None]]:
    rows = await db.fetch(
        "SELECT user_id, device_id FROM registrations WHERE token = $1 ORDER BY user_id", token
    )
    return [(row["user_id"], row["device_id"]) for row in rows]


# --- one token, one holder, across dialects -----------------------------------------------


async def test_navixy_iphone_bind_by_b_removes_the_same_token_from_a_layer_apns_registration(
    client, new_session, db
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    token = apns_token(1)
    await layer_register(client, alice, "alice-phone", token)
    # Upper case: APNs tokens are case-insensitive, and both dialects store one case.
    await navixy_bind(client, bob, token.upper())
    assert await holders(db, token) == [("bob", None)]


async def test_layer_apns_register_by_b_removes_the_same_token_from_a_navixy_iphone_binding(
    client, new_session, db
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    token = apns_token(1)
    await navixy_bind(client, alice, token)
    await layer_register(client, bob, "bob-phone", token)
    assert await holders(db, token) == [("bob", "bob-phone")]


async def test_layer_gcm_and_navixy_android_are_the_same_provider(client, new_session, db):
    alice = await new_session("alice")
    bob = await new_session("bob")
    await layer_register(client, alice, "alice-pixel", NAVIXY_FCM, kind="gcm")
    await navixy_bind(client, bob, NAVIXY_FCM, application="navixy_android_viewer")
    assert await holders(db, NAVIXY_FCM) == [("bob", None)]


async def test_the_same_string_under_two_providers_is_two_tokens(client, new_session, db):
    alice = await new_session("alice")
    bob = await new_session("bob")
    token = apns_token(1)  # hex is a valid FCM token too
    await layer_register(client, alice, "alice-pixel", token, kind="gcm")
    await navixy_bind(client, bob, token)
    rows = await registrations(db)
    assert sorted((r["user_id"], r["provider"]) for r in rows) == [
        ("alice", "fcm"), ("bob", "apns")
    ]


async def test_a_web_push_endpoint_bound_by_b_leaves_a(client, new_session, db):
    alice = await new_session("alice")
    bob = await new_session("bob")
    for session in (alice, bob):
        params = {"hash": session, "application": "w3c_pushapi", "token": ENDPOINT,
                  "parameters": subscription_keys()}
        await navixy_ok(await navixy(client, BIND, params))
    assert await holders(db, ENDPOINT) == [("bob", None)]


async def test_navixy_delete_removes_only_the_sessions_binding_not_its_layer_devices(
    client, new_session, db
):
    session = await new_session("alice")
    await _register_both_dialects(client, session)
    await navixy_delete(client, session)
    rows = await registrations(db)
    assert [(r["device_id"], r["token"]) for r in rows] == [("phone", apns_token(1))]


async def test_layer_unregister_removes_only_that_device_not_the_navixy_binding(
    client, new_session, db
):
    session = await new_session("alice")
    await _register_both_dialects(client, session)
    await layer_unregister(client, session, "phone")
    rows = await registrations(db)
    assert [(r["device_id"], r["token"]) for r in rows] == [(None, apns_token(2))]


# --- a registration ends with the session that made it ----------------------------------------


async def _register_both_dialects(client: Client, session: str) -> None:
    await layer_register(client, session, "phone", apns_token(1))
    await navixy_bind(client, session, apns_token(2))


async def test_layer_delete_session_removes_its_registrations_in_both_dialects(
    client, new_session, db
):
    session = await new_session("alice")
    await _register_both_dialects(client, session)
    assert len(await registrations(db)) == 2
    response = await client.delete(f"/sessions/{session}", headers=layer_headers())
    assert response.status == 204
    assert await registrations(db) == []


async def test_navixy_logout_removes_its_registrations_in_both_dialects(client, new_session, db):
    session = await new_session("alice")
    await _register_both_dialects(client, session)
    await navixy_ok(await navixy(client, LOGOUT, {"hash": session}))
    assert await registrations(db) == []


async def test_store_end_session_removes_its_registrations_in_both_dialects(
    client, new_session, db
):
    session = await new_session("alice")
    await _register_both_dialects(client, session)
    await store_of(client).end_session(SessionRef.from_token(session))
    assert await registrations(db) == []
    with pytest.raises(SessionNotFound):
        await store_of(client).end_session(SessionRef.from_token(session))


async def test_ending_one_session_leaves_the_users_other_sessions_registrations(
    client, new_session, db
):
    first = await new_session("alice")
    second = await new_session("alice")
    await layer_register(client, first, "phone", apns_token(1))
    await navixy_bind(client, first, apns_token(2))
    await layer_register(client, second, "tablet", apns_token(3))
    await navixy_bind(client, second, apns_token(4))
    await store_of(client).end_session(SessionRef.from_token(first))
    assert {r["token"] for r in await registrations(db)} == {apns_token(3), apns_token(4)}


@pytest.mark.parametrize("same_token", [True, False], ids=["same-token", "new-token"])
async def test_a_layer_device_re_registered_from_a_second_session_survives_the_first(
    client, new_session, db, same_token
):
    first = await new_session("alice")
    second = await new_session("alice")
    await layer_register(client, first, "phone", apns_token(1))
    token = apns_token(1) if same_token else apns_token(2)
    await layer_register(client, second, "phone", token)
    await store_of(client).end_session(SessionRef.from_token(first))
    [row] = await registrations(db)
    assert (row["device_id"], row["token"]) == ("phone", token)
    assert row["session_id"] == await session_id(db, second)


async def test_a_purged_expired_session_takes_its_registrations(client, new_session, db):
    session = await new_session("alice")
    await _register_both_dialects(client, session)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 minute'")
    assert await store_of(client).purge_expired_sessions() == 1
    assert await registrations(db) == []


async def test_the_25_token_limit_counts_both_dialects_and_evicts_the_oldest_of_either(
    client, new_session, db
):
    navixy_session = await new_session("alice")
    layer_session = await new_session("alice")
    await navixy_bind(client, navixy_session, apns_token(1000))
    for number in range(1, 25):
        await layer_register(client, layer_session, f"dev-{number}", apns_token(number))
    assert len(await registrations(db)) == 25
    await layer_register(client, layer_session, "dev-25", apns_token(25))
    rows = await registrations(db)
    assert len(rows) == 25
    assert all(row["device_id"] is not None for row in rows)


async def test_a_session_ended_through_one_gateway_is_refused_at_once_by_another(
    client, other_client, new_session, db
):
    session = await new_session("alice")
    # Both processes have now used (and may remember) the session.
    await layer_register(other_client, session, "phone", apns_token(1))
    await navixy_bind(other_client, session, apns_token(2))
    response = await client.delete(f"/sessions/{session}", headers=layer_headers())
    assert response.status == 204

    response = await other_client.post(
        "/push_tokens",
        json={"token": apns_token(3), "type": "apns", "device_id": "tablet"},
        headers=layer_headers(session),
    )
    assert response.status == 401
    params = {"hash": session, "application": "navixy_iphone_viewer", "token": apns_token(4)}
    response = await navixy(other_client, BIND, params)
    assert response.status == 400
    assert (await response.json())["status"]["code"] == 4
    outcomes = await store_of(other_client).apply_writes(
        [RegisterToken(SessionRef.from_token(session), "tv", Provider.APNS, apns_token(5))]
    )
    assert isinstance(outcomes[0], SessionNotFound)
    assert await registrations(db) == []


async def test_a_session_that_expires_after_use_is_refused_at_once(client, new_session, db):
    session = await new_session("alice")
    await layer_register(client, session, "phone", apns_token(1))
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    response = await client.post(
        "/push_tokens",
        json={"token": apns_token(2), "type": "apns", "device_id": "tablet"},
        headers=layer_headers(session),
    )
    assert response.status == 401
    response = await navixy(client, DELETE, {"hash": session})
    assert (await response.json())["status"]["code"] == 4
    rows = await registrations(db)
    assert [(r["device_id"], r["token"]) for r in rows] == [("phone", apns_token(1))]


# --- concurrency ----------------------------------------------------------------------------


ROUNDS = 20


@pytest.mark.parametrize(
    ("alice_dialect", "bob_dialect"),
    [("layer", "layer"), ("navixy", "navixy"), ("layer", "navixy"), ("navixy", "layer")],
)
async def test_concurrent_binds_of_one_token_by_two_users_leave_exactly_one_row(
    client, other_client, new_session, db, alice_dialect, bob_dialect
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    token = apns_token(0xABC)

    async def bind(gateway: Client, dialect: str, session: str, device: str) -> None:
        if dialect == "layer":
            await layer_register(gateway, session, device, token)
        else:
            await navixy_bind(gateway, session, token)

    for round_number in range(ROUNDS):
        # Alternate which gateway process serves whom, so both orders of arrival occur.
        first, second = (client, other_client) if round_number % 2 else (other_client, client)
        await asyncio.gather(
            bind(first, alice_dialect, alice, "alice-phone"),
            bind(second, bob_dialect, bob, "bob-phone"),
        )
        assert len(await holders(db, token)) == 1
    assert await db.fetchval("SELECT count(*) FROM registrations") == 1


async def test_concurrent_binds_of_one_token_by_many_users_leave_exactly_one_row(
    client, other_client, new_session, db
):
    sessions = [await new_session(f"user-{n}") for n in range(8)]
    token = apns_token(0xDEF)
    for _ in range(5):
        calls = []
        for number, session in enumerate(sessions):
            gateway = client if number % 2 else other_client
            if number % 4 < 2:
                calls.append(layer_register(gateway, session, f"device-{number}", token))
            else:
                calls.append(navixy_bind(gateway, session, token))
        await asyncio.gather(*calls)
        assert len(await holders(db, token)) == 1


Step = tuple[str, str | None]  # ("register", token) or ("unregister", None)


def _script(seed: int, steps: int = 15) -> list[Step]:
    rng = random.Random(seed)
    script: list[Step] = []
    for step in range(steps):
        if rng.random() < 0.6:
            script.append(("register", apns_token(seed * 1000 + step)))
        else:
            script.append(("unregister", None))
    return script


async def _state(db, session: str, device: str | None) -> str | None:
    """The token currently stored for a Layer device, or for a session's Navixy binding."""
    if device is None:
        token: str | None = await db.fetchval(
            "SELECT token FROM registrations WHERE session_id = $1 AND device_id IS NULL",
            await session_id(db, session),
        )
    else:
        token = await db.fetchval(
            "SELECT token FROM registrations WHERE user_id = 'alice' AND device_id = $1", device
        )
    return token


async def test_interleaved_register_and_unregister_keep_each_callers_order(
    client, other_client, new_session, db
):
    """Each caller sends its commands one after another; the callers run concurrently.

    After every acknowledged command, and at the end, the caller's key holds exactly what its
    last command said. All callers are one user, so they contend for the same user's lock.
    """
    callers: list[tuple[Client, str, str | None, list[Step]]] = []
    for number in range(6):
        gateway = client if number % 2 else other_client
        session = await new_session("alice")
        device = f"device-{number}" if number < 4 else None  # two Navixy callers
        callers.append((gateway, session, device, _script(number + 1)))
    db_lock = asyncio.Lock()  # one test connection, shared by the callers' checks

    async def run(gateway: Client, session: str, device: str | None, script: list[Step]) -> None:
        for action, token in script:
            if action == "register":
                assert token is not None
                if device is None:
                    await navixy_bind(gateway, session, token)
                else:
                    await layer_register(gateway, session, device, token)
            elif device is None:
                await navixy_delete(gateway, session)
            else:
                await layer_unregister(gateway, session, device)
            async with db_lock:
                assert await _state(db, session, device) == token

    await asyncio.gather(*(run(*caller) for caller in callers))
    for _, session, device, script in callers:
        assert await _state(db, session, device) == script[-1][1]


async def test_one_device_with_requests_from_two_gateways_ends_as_the_last_acknowledged(
    client, other_client, new_session, db
):
    """One device, its commands alternating between two gateway processes, each awaited."""
    session = await new_session("alice")
    script = _script(99, steps=30)
    for number, (action, token) in enumerate(script):
        gateway = client if number % 2 else other_client
        if action == "register":
            assert token is not None
            await layer_register(gateway, session, "phone", token)
        else:
            await layer_unregister(gateway, session, "phone")
    assert await _state(db, session, "phone") == script[-1][1]


# --- atomicity -----------------------------------------------------------------------------


async def test_invalid_requests_in_either_dialect_change_no_rows(client, new_session, db):
    alice = await new_session("alice")
    bob = await new_session("bob")
    await layer_register(client, alice, "phone", apns_token(1))
    await navixy_bind(client, bob, apns_token(2))
    before = await snapshot(db)

    # Each would move apns_token(1) or apns_token(2) if it were half applied.
    layer_bad = [
        {"token": apns_token(2), "type": "apns", "device_id": "phone", "ios_version": "x"},
        {"token": apns_token(2), "type": "apns", "device_id": "bad\x00id"},
        {"token": apns_token(2), "type": "apns", "device_id": "phone", "gcm_sender_id": "1"},
        {"token": apns_token(2), "type": "apns"},
    ]
    for body in layer_bad:
        response = await client.post("/push_tokens", json=body, headers=layer_headers(alice))
        assert response.status == 422
    response = await client.post(
        "/push_tokens",
        json={"token": apns_token(2), "type": "apns", "device_id": "phone"},
        headers=layer_headers(random_hash()),
    )
    assert response.status == 401
    navixy_bad: list[dict[str, Any]] = [
        {"hash": bob, "application": "navixy_iphone_viewer", "token": apns_token(1),
         "category_filter": "nope"},
        {"hash": bob, "application": "navixy_iphone_viewer", "token": apns_token(1),
         "parameters": subscription_keys()},
        {"hash": random_hash(), "application": "navixy_iphone_viewer", "token": apns_token(1)},
        {"hash": bob, "application": "w3c_pushapi", "token": "http://insecure.example/x",
         "parameters": subscription_keys()},
    ]
    for params in navixy_bad:
        response = await navixy(client, BIND, params)
        assert response.status == 400
    assert await snapshot(db) == before


async def test_a_command_the_database_rejects_fails_alone_and_leaves_nothing_half_done(
    client, new_session, db
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    await layer_register(client, bob, "bob-phone", apns_token(1))
    good = RegisterToken(
        session=SessionRef.from_token(alice), device_id="alice-phone",
        provider=Provider.APNS, token=apns_token(2),
    )
    # An empty device id passes no surface, but the schema's CHECK refuses it; had its token
    # release been applied, bob would lose apns_token(1).
    rejected = RegisterToken(
        session=SessionRef.from_token(alice), device_id="",
        provider=Provider.APNS, token=apns_token(1),
    )
    outcomes = await store_of(client).apply_writes([good, rejected])
    assert outcomes[0] is None
    assert isinstance(outcomes[1], DatabaseError)
    rows = await registrations(db)
    assert [(r["user_id"], r["device_id"], r["token"]) for r in rows] == [
        ("alice", "alice-phone", apns_token(2)),
        ("bob", "bob-phone", apns_token(1)),
    ]


# --- group commit: the store's batch semantics -------------------------------------------------


def register(session: str, device: str | None, token: str) -> RegisterToken:
    return RegisterToken(
        session=SessionRef.from_token(session),
        device_id=device,
        provider=Provider.APNS,
        token=token,
    )


def unregister(session: str, device: str | None) -> UnregisterToken:
    return UnregisterToken(session=SessionRef.from_token(session), device_id=device)


@pytest.mark.parametrize("device", ["phone", None], ids=["layer-device", "navixy-binding"])
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ([("register", 1), ("register", 2)], 2),
        ([("register", 1), ("unregister", None)], None),
        ([("unregister", None), ("register", 1)], 1),
        ([("register", 1), ("unregister", None), ("register", 3)], 3),
        ([("register", 1), ("register", 2), ("register", 1)], 1),
        ([("register", 1), ("register", 2), ("unregister", None)], None),
    ],
    ids=["replace", "register-unregister", "unregister-register", "r-u-r", "r1-r2-r1", "r-r-u"],
)
async def test_store_batch_last_command_per_key_wins(client, new_session, db, device, script,
                                                     expected):
    session = await new_session("alice")
    commands: list[WriteCommand] = [
        register(session, device, apns_token(number)) if action == "register"
        else unregister(session, device)
        for action, number in script
    ]
    outcomes = await store_of(client).apply_writes(commands)
    assert outcomes == [None] * len(commands)
    rows = await registrations(db)
    assert [r["token"] for r in rows] == ([] if expected is None else [apns_token(expected)])


async def test_store_batch_last_command_per_key_wins_with_a_row_already_there(
    client, new_session, db
):
    session = await new_session("alice")
    await layer_register(client, session, "phone", apns_token(9))
    outcomes = await store_of(client).apply_writes(
        [unregister(session, "phone"), register(session, "phone", apns_token(9))]
    )
    assert outcomes == [None, None]
    assert [r["token"] for r in await registrations(db)] == [apns_token(9)]


async def test_store_batch_token_moved_on_within_the_batch_still_leaves_its_other_holder(
    client, new_session, db
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    await layer_register(client, bob, "bob-phone", apns_token(1))
    outcomes = await store_of(client).apply_writes(
        [register(alice, "phone", apns_token(1)), register(alice, "phone", apns_token(2))]
    )
    assert outcomes == [None, None]
    rows = await registrations(db)
    assert [(r["user_id"], r["device_id"], r["token"]) for r in rows] == [
        ("alice", "phone", apns_token(2))
    ]


async def test_store_batch_token_registered_then_unregistered_still_leaves_its_other_holder(
    client, new_session, db
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    await navixy_bind(client, bob, apns_token(1))
    outcomes = await store_of(client).apply_writes(
        [register(alice, None, apns_token(1)), unregister(alice, None)]
    )
    assert outcomes == [None, None]
    assert await registrations(db) == []


async def test_store_batch_same_token_for_two_users_goes_to_the_last(client, new_session, db):
    alice = await new_session("alice")
    bob = await new_session("bob")
    outcomes = await store_of(client).apply_writes(
        [register(alice, "phone", apns_token(1)), register(bob, None, apns_token(1)),
         register(alice, "tablet", apns_token(2))]
    )
    assert outcomes == [None, None, None]
    rows = await registrations(db)
    assert [(r["user_id"], r["device_id"], r["token"]) for r in rows] == [
        ("alice", "tablet", apns_token(2)),
        ("bob", None, apns_token(1)),
    ]


async def test_store_batch_with_an_unknown_session_fails_only_that_command(
    client, new_session, db
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    await navixy_bind(client, bob, apns_token(3))
    commands: list[WriteCommand] = [
        register(alice, "phone", apns_token(1)),
        register(random_hash(), "phone", apns_token(2)),
        unregister(bob, None),
        register(alice, None, apns_token(4)),
    ]
    outcomes = await store_of(client).apply_writes(commands)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], SessionNotFound)
    assert outcomes[2:] == [None, None]
    rows = await registrations(db)
    assert [(r["user_id"], r["device_id"], r["token"]) for r in rows] == [
        ("alice", "phone", apns_token(1)),
        ("alice", None, apns_token(4)),
    ]


async def test_store_batch_with_an_expired_session_fails_only_that_command(
    client, new_session, db
):
    alice = await new_session("alice")
    expired = await new_session("bob")
    await db.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = 'bob'"
    )
    outcomes = await store_of(client).apply_writes(
        [register(expired, "phone", apns_token(2)), register(alice, "phone", apns_token(1))]
    )
    assert isinstance(outcomes[0], SessionNotFound)
    assert outcomes[1] is None
    assert [r["token"] for r in await registrations(db)] == [apns_token(1)]


async def test_store_batch_keeps_registration_order_for_the_limit(client, new_session, db):
    session = await new_session("alice")
    commands: list[WriteCommand] = [
        register(session, f"dev-{n}", apns_token(n)) for n in range(1, 27)
    ]
    outcomes = await store_of(client).apply_writes(commands)
    assert outcomes == [None] * 26
    devices = {r["device_id"] for r in await registrations(db)}
    assert devices == {f"dev-{n}" for n in range(2, 27)}
