"""The senders' internal API: the admin key, fan-out targets, dead-token pruning, sessions."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import ClientConnectionResetError, ClientResponse, web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import ConfigError, Settings
from gateway.errors import DatabaseUnavailable
from gateway.keys import INTERNAL_STORE, SETTINGS
from gateway.surfaces import internal
from gateway.validation import DEFAULT_CATEGORIES, category_filter_admits
from tests.conftest import ClientFactory, layer_headers
from tests.helpers import (
    BIND,
    ENDPOINT,
    LOGOUT,
    NAVIXY_FCM,
    apns_token,
    expire,
    fcm_token,
    navixy,
    navixy_error,
    navixy_ok,
    subscription_keys,
)

ADMIN_KEY = "internal-test-key-6b1f0c2d9e8a7f35"
TARGETS = "/internal/v1/targets"
FEEDBACK = "/internal/v1/feedback"
SESSIONS = "/internal/v1/sessions"

# One request per route, each valid but for the key.
ROUTES = [
    ("POST", TARGETS, {"users": ["alice"], "category": "chat_message"}),
    ("POST", FEEDBACK, {"feedback": []}),
    ("POST", SESSIONS, {"user": "alice"}),
    ("DELETE", f"{SESSIONS}/{'0' * 32}", None),
    ("GET", "/internal/v1/nowhere", None),
    ("GET", TARGETS, None),
]


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> TestClient:  # type: ignore[type-arg]
    """The gateway with its internal API open under ADMIN_KEY."""
    return await aiohttp_client(create_app(replace(settings, admin_token=ADMIN_KEY)))


def admin(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def internal_error(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert an internal API error with this status and code; return its error object."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def bad_parameters(error: dict[str, Any]) -> list[str]:
    return [parameter["name"] for parameter in error["parameters"]]


async def open_session(api: TestClient, user: str, **extra: Any) -> str:  # type: ignore[type-arg]
    response = await api.post(SESSIONS, json={"user": user, **extra}, headers=admin())
    assert response.status == 201, await response.text()
    token: str = (await response.json())["token"]
    return token


async def fan_out(
    api: TestClient,  # type: ignore[type-arg]
    users: list[str],
    category: str = "chat_message",
    **extra: Any,
) -> list[dict[str, Any]]:
    request = {"users": users, "category": category, **extra}
    response = await api.post(TARGETS, data=large(request), headers=admin())
    assert response.status == 200, await response.text()
    assert response.content_type == internal.NDJSON
    body = await response.read()
    assert body == b"" or body.endswith(b"\n")
    return [orjson.loads(line) for line in body.splitlines()]


def large(body: Any) -> io.BytesIO:
    """A JSON body as a stream: the client warns about raw bodies over 1 MiB."""
    return io.BytesIO(orjson.dumps(body))


def tokens(targets: list[dict[str, Any]]) -> set[str]:
    return {target["token"] for target in targets}


async def layer_register(
    api: TestClient,  # type: ignore[type-arg]
    session: str,
    device_id: str,
    token: str,
    **extra: Any,
) -> None:
    body = {"token": token, "type": "apns", "device_id": device_id, **extra}
    response = await api.post("/push_tokens", json=body, headers=layer_headers(session))
    assert response.status == 202, await response.text()


async def navixy_bind(
    api: TestClient,  # type: ignore[type-arg]
    session: str,
    application: str,
    token: str,
    category_filter: str | None = None,
    **extra: Any,
) -> None:
    params = {"hash": session, "application": application, "token": token, **extra}
    if category_filter is not None:
        params["category_filter"] = category_filter
    await navixy_ok(await navixy(api, BIND, params))


# --- the admin key ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {ADMIN_KEY}x", "Bearer ", f"Basic {ADMIN_KEY}", ADMIN_KEY, "Bearer"],
)
async def test_every_internal_route_answers_401_without_the_right_key(
    api, db, method, path, body, authorization
):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await api.request(method, path, json=body, headers=headers)
    await internal_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_the_bearer_scheme_is_case_insensitive(api):
    response = await api.post(SESSIONS, json={"user": "alice"}, headers={
        "Authorization": f"bearer {ADMIN_KEY}"
    })
    assert response.status == 201


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_without_a_configured_key_the_internal_api_is_shut(client, method, path, body):
    response = await client.request(method, path, json=body, headers=admin())
    await internal_error(response, 401, "unauthorized")


async def test_the_key_is_checked_before_the_body_is_read(api):
    response = await api.post(TARGETS, data=b"not json", headers=admin("wrong-key-wrong-key"))
    await internal_error(response, 401, "unauthorized")


def test_gateway_admin_token_is_read_from_the_environment():
    assert Settings.from_env({}).admin_token is None
    assert Settings.from_env({"GATEWAY_ADMIN_TOKEN": ""}).admin_token is None
    assert Settings.from_env({"GATEWAY_ADMIN_TOKEN": ADMIN_KEY}).admin_token == ADMIN_KEY
    assert ADMIN_KEY not in repr(Settings.from_env({"GATEWAY_ADMIN_TOKEN": ADMIN_KEY}))


@pytest.mark.parametrize("value", ["short", "sixteen chars ok", "x" * 15, "é" * 20])
def test_a_weak_or_unsendable_admin_token_stops_the_gateway(value):
    with pytest.raises(ConfigError, match="GATEWAY_ADMIN_TOKEN"):
        Settings.from_env({"GATEWAY_ADMIN_TOKEN": value})


async def test_unknown_internal_paths_answer_404_in_the_internal_format(api):
    for path in ("/internal", "/internal/", "/internal/v2/targets", "/internal/v1/targets/x"):
        response = await api.post(path, json={}, headers=admin())
        await internal_error(response, 404, "unknown_endpoint")


async def test_a_known_internal_path_with_the_wrong_method_answers_405(api):
    await internal_error(await api.get(TARGETS, headers=admin()), 405, "method_not_allowed")
    response = await api.put(f"{SESSIONS}/{'0' * 32}", headers=admin())
    await internal_error(response, 405, "method_not_allowed")


async def test_the_public_dialects_keep_their_own_error_formats(api):
    response = await api.get("/v2/user/nowhere")
    await navixy_error(response, 111)
    response = await api.get("/nowhere", headers=layer_headers())
    assert (await response.json())["id"] == "invalid_endpoint"


# --- fan-out ------------------------------------------------------------------------


async def mixed_audience(api: TestClient) -> None:  # type: ignore[type-arg]
    """Registrations of every filter form, made through both public dialects."""
    alice = await open_session(api, "alice")
    alice_phone = await open_session(api, "alice")
    bob = await open_session(api, "bob")
    bob_laptop = await open_session(api, "bob")
    carol = await open_session(api, "carol")
    # Layer registrations carry no filter: '*'.
    await layer_register(api, alice, "alice-ipad", apns_token(1), apns_bundle_id="com.example")
    await navixy_bind(
        api, alice_phone, "navixy_android_viewer", fcm_token(2), "chat_message,history_rule"
    )
    await navixy_bind(api, bob, "navixy_iphone_viewer", apns_token(3), "-history_rule,history_task")
    await navixy_bind(
        api, bob_laptop, "w3c_pushapi", ENDPOINT, "-chat_message", parameters=subscription_keys()
    )
    await navixy_bind(api, carol, "navixy_android_viewer", fcm_token(5), "history_info")


async def test_fan_out_applies_each_filter_form_for_each_category(api, db):
    await mixed_audience(api)
    expected = {
        "chat_message": {apns_token(1), fcm_token(2), apns_token(3)},
        "history_rule": {apns_token(1), fcm_token(2), ENDPOINT},
        "history_task": {apns_token(1), ENDPOINT},
        "history_info": {apns_token(1), apns_token(3), ENDPOINT, fcm_token(5)},
    }
    for category, wanted in expected.items():
        assert tokens(await fan_out(api, ["alice", "bob", "carol"], category)) == wanted


async def test_fan_out_agrees_with_category_filter_admits_on_every_category(api, db):
    await mixed_audience(api)
    rows = await db.fetch("SELECT token, category_filter FROM registrations")
    assert {row["category_filter"] for row in rows} == {
        "*", "chat_message,history_rule", "-history_rule,history_task", "-chat_message",
        "history_info",
    }
    for category in sorted(DEFAULT_CATEGORIES):
        wanted = {
            row["token"] for row in rows if category_filter_admits(row["category_filter"], category)
        }
        assert tokens(await fan_out(api, ["alice", "bob", "carol"], category)) == wanted


async def test_fan_out_answers_what_a_sender_needs_for_each_provider(api):
    alice = await open_session(api, "alice")
    await layer_register(
        api, alice, "alice-ipad", apns_token(1).upper(), apns_bundle_id="com.example",
        ios_version="17.2",
    )
    await api.post(
        "/push_tokens",
        json={"token": fcm_token(2), "type": "gcm", "device_id": "alice-pixel",
              "gcm_sender_id": "1234"},
        headers=layer_headers(alice),
    )
    keys = subscription_keys()
    await navixy_bind(api, alice, "w3c_pushapi", ENDPOINT, parameters=keys)
    targets = sorted(await fan_out(api, ["alice"]), key=lambda target: target["provider"])
    assert targets == [
        {
            "user": "alice", "provider": "apns", "token": apns_token(1),
            "apns_bundle_id": "com.example", "gcm_sender_id": None, "ios_version": "17.2",
            "webpush": None, "device_id": "alice-ipad",
        },
        {
            "user": "alice", "provider": "fcm", "token": fcm_token(2),
            "apns_bundle_id": None, "gcm_sender_id": "1234", "ios_version": None,
            "webpush": None, "device_id": "alice-pixel",
        },
        {
            "user": "alice", "provider": "webpush", "token": ENDPOINT,
            "apns_bundle_id": None, "gcm_sender_id": None, "ios_version": None,
            "webpush": keys, "device_id": None,
        },
    ]


async def test_fan_out_leaves_out_the_excluded_users(api):
    await mixed_audience(api)
    targets = await fan_out(api, ["alice", "bob", "carol"], "history_info", exclude_users=["bob"])
    assert tokens(targets) == {apns_token(1), fcm_token(5)}
    assert {target["user"] for target in targets} == {"alice", "carol"}
    assert await fan_out(api, ["bob"], "history_info", exclude_users=["bob", "dave"]) == []


async def test_fan_out_only_reaches_the_users_asked_for(api):
    await mixed_audience(api)
    targets = await fan_out(api, ["carol", "nobody"], "history_info")
    assert [target["user"] for target in targets] == ["carol"]


async def test_a_user_named_twice_gets_each_registration_once(api):
    await mixed_audience(api)
    targets = await fan_out(api, ["carol", "carol", "carol"], "history_info")
    assert len(targets) == 1


async def test_fan_out_skips_registrations_of_expired_sessions(api, db):
    alice = await open_session(api, "alice")
    alice_phone = await open_session(api, "alice")
    await layer_register(api, alice, "alice-ipad", apns_token(1))
    await navixy_bind(api, alice_phone, "navixy_android_viewer", NAVIXY_FCM)
    await expire(db, alice)
    # Still stored, until the purge: only the query's liveness check hides it.
    assert await db.fetchval("SELECT count(*) FROM registrations") == 2
    assert tokens(await fan_out(api, ["alice"])) == {NAVIXY_FCM}


async def test_fan_out_skips_registrations_of_ended_sessions(api):
    alice = await open_session(api, "alice")
    alice_phone = await open_session(api, "alice")
    alice_laptop = await open_session(api, "alice")
    await layer_register(api, alice, "alice-ipad", apns_token(1))
    await navixy_bind(api, alice_phone, "navixy_android_viewer", NAVIXY_FCM)
    await navixy_bind(api, alice_laptop, "navixy_iphone_viewer", apns_token(2))
    assert (await api.delete(f"{SESSIONS}/{alice}", headers=admin())).status == 204
    await navixy_ok(await navixy(api, LOGOUT, {"hash": alice_phone}))
    assert tokens(await fan_out(api, ["alice"])) == {apns_token(2)}


async def test_fan_out_with_no_targets_is_an_empty_ndjson_body(api):
    response = await api.post(
        TARGETS, json={"users": ["nobody"], "category": "chat_message"}, headers=admin()
    )
    assert response.status == 200
    assert response.content_type == internal.NDJSON
    assert await response.read() == b""


async def test_fan_out_frames_one_json_object_per_line(api):
    await mixed_audience(api)
    response = await api.post(
        TARGETS,
        json={"users": ["alice", "bob", "carol"], "category": "history_info"},
        headers=admin(),
    )
    body = await response.read()
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert body.endswith(b"\n")
    lines = body.split(b"\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert line.startswith(b"{")
        assert isinstance(orjson.loads(line), dict)
    assert len(lines) - 1 == 4


async def bulk_registrations(db: asyncpg.Connection, users: int, per_user: int) -> list[str]:
    """users x per_user registrations written straight into the tables; the user ids."""
    await db.execute(
        """
        INSERT INTO sessions (token_sha256, user_id, expires_at)
        SELECT sha256(('bulk-' || i)::bytea), 'bulk-' || i, now() + interval '1 hour'
        FROM generate_series(1, $1) AS i
        """,
        users,
    )
    await db.execute(
        """
        INSERT INTO registrations (user_id, session_id, device_id, provider, token, category_filter)
        SELECT s.user_id, s.id, 'device-' || d, 'fcm', 'bulk:' || s.user_id || ':' || d,
               CASE d % 3 WHEN 0 THEN '*' WHEN 1 THEN 'chat_message' ELSE '-history_rule' END
        FROM sessions AS s CROSS JOIN generate_series(1, $1) AS d
        WHERE s.user_id LIKE 'bulk-%'
        """,
        per_user,
    )
    return [f"bulk-{i}" for i in range(1, users + 1)]


async def test_a_large_fan_out_streams_every_row(api, db):
    users = await bulk_registrations(db, users=1000, per_user=5)
    response = await api.post(
        TARGETS, json={"users": users, "category": "chat_message"}, headers=admin()
    )
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    chunks = 0
    body = bytearray()
    async for chunk in response.content.iter_any():
        chunks += 1
        body += chunk
    targets = [orjson.loads(line) for line in body.splitlines()]
    assert len(targets) == 5000
    assert len(tokens(targets)) == 5000
    assert {target["user"] for target in targets} == set(users)
    assert chunks > 1


async def test_a_large_fan_out_applies_the_filter_to_every_row(api, db):
    users = await bulk_registrations(db, users=1000, per_user=6)
    # Of each user's six: two '*', two 'chat_message', two '-history_rule'.
    assert len(await fan_out(api, users, "chat_message")) == 6000
    assert len(await fan_out(api, users, "history_rule")) == 2000
    assert len(await fan_out(api, users, "history_task")) == 4000


async def test_a_failure_before_the_first_row_is_an_error_status(api, monkeypatch):
    async def unavailable(query: Any) -> AsyncIterator[list[Any]]:
        if query.users:
            raise DatabaseUnavailable("down")
        yield []

    monkeypatch.setattr(api.app[INTERNAL_STORE], "find_targets", unavailable)
    response = await api.post(
        TARGETS, json={"users": ["alice"], "category": "chat_message"}, headers=admin()
    )
    await internal_error(response, 503, "database_unavailable")


async def test_a_failure_mid_stream_cuts_the_answer_short(api, db, monkeypatch):
    users = await bulk_registrations(db, users=200, per_user=5)
    store = api.app[INTERNAL_STORE]
    real = store.find_targets

    async def dies_after_one_batch(query: Any) -> AsyncIterator[list[Any]]:
        async for batch in real(query):
            yield batch
            raise DatabaseUnavailable("the connection died")

    monkeypatch.setattr(store, "find_targets", dies_after_one_batch)
    response = await api.post(
        TARGETS, json={"users": users, "category": "chat_message"}, headers=admin()
    )
    assert response.status == 200
    # No terminating chunk: the sender cannot mistake a partial list for all of it.
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({"category": "chat_message"}, "users"),
        ({"users": [], "category": "chat_message"}, "users"),
        ({"users": "alice", "category": "chat_message"}, "users"),
        ({"users": ["alice", 7], "category": "chat_message"}, "users.1"),
        ({"users": ["alice", ""], "category": "chat_message"}, "users.1"),
        ({"users": ["al\x00ice"], "category": "chat_message"}, "users.0"),
        ({"users": ["x" * 256], "category": "chat_message"}, "users.0"),
        ({"users": ["alice"], "category": "chat_message", "exclude_users": [None]},
         "exclude_users.0"),
        ({"users": ["alice"]}, "category"),
        ({"users": ["alice"], "category": "birthday"}, "category"),
        ({"users": ["alice"], "category": "chat_message", "exclude_user": ["alice"]},
         "exclude_user"),
    ],
)
async def test_a_bad_fan_out_request_names_the_bad_parameter(api, body, parameter):
    error = await internal_error(
        await api.post(TARGETS, json=body, headers=admin()), 400, "invalid_parameters"
    )
    assert bad_parameters(error) == [parameter]


async def test_an_audience_over_the_limit_is_refused(api):
    users = [f"u{i}" for i in range(internal.MAX_AUDIENCE + 1)]
    response = await api.post(
        TARGETS, data=large({"users": users, "category": "chat_message"}), headers=admin()
    )
    error = await internal_error(response, 400, "invalid_parameters")
    assert bad_parameters(error) == ["users"]


async def test_an_audience_at_the_limit_is_accepted_beyond_the_public_body_limit(api):
    users = [f"user-{i:08d}" for i in range(internal.MAX_AUDIENCE)]
    assert len(orjson.dumps({"users": users})) > Settings().max_body_bytes
    assert await fan_out(api, users) == []


async def test_only_the_first_bad_user_ids_are_reported(api):
    users = ["\x01"] * 1000
    response = await api.post(
        TARGETS, json={"users": users, "category": "chat_message"}, headers=admin()
    )
    error = await internal_error(response, 400, "invalid_parameters")
    assert len(error["parameters"]) == internal.MAX_PROBLEMS_SHOWN


@pytest.mark.parametrize("body", [b"{", b"[]", b"\"users\"", b""])
async def test_a_body_that_is_not_a_json_object_is_malformed(api, body):
    response = await api.post(TARGETS, data=body, headers=admin())
    await internal_error(response, 400, "malformed_request")


async def test_an_oversized_body_answers_413(api):
    body = b'{"users": ["' + b"x" * internal.MAX_TARGETS_BODY_BYTES + b'"]}'
    response = await api.post(TARGETS, data=io.BytesIO(body), headers=admin())
    await internal_error(response, 413, "request_too_large")


# --- pruning ------------------------------------------------------------------------


async def test_feedback_removes_dead_tokens_of_every_provider_and_counts_them(api, db):
    await mixed_audience(api)
    response = await api.post(
        FEEDBACK,
        json={"feedback": [
            # APNs tokens match whatever their case.
            {"provider": "apns", "token": apns_token(1).upper(), "reason": "Unregistered"},
            {"provider": "apns", "token": apns_token(3), "reason": "BadDeviceToken"},
            {"provider": "fcm", "token": fcm_token(2), "reason": "UNREGISTERED"},
            {"provider": "webpush", "token": ENDPOINT, "reason": "410"},
        ]},
        headers=admin(),
    )
    assert response.status == 200
    assert await response.json() == {"removed": 4}
    rows = await db.fetch("SELECT token FROM registrations")
    assert [row["token"] for row in rows] == [fcm_token(5)]


async def test_feedback_ignores_unknown_tokens_and_counts_a_repeated_one_once(api, db):
    await mixed_audience(api)
    response = await api.post(
        FEEDBACK,
        json={"feedback": [
            {"provider": "fcm", "token": fcm_token(5), "reason": "UNREGISTERED"},
            {"provider": "fcm", "token": fcm_token(5), "reason": "UNREGISTERED"},
            {"provider": "fcm", "token": fcm_token(99), "reason": "UNREGISTERED"},
            {"provider": "webpush", "token": ENDPOINT + "x", "reason": "404"},
        ]},
        headers=admin(),
    )
    assert await response.json() == {"removed": 1}
    assert await db.fetchval("SELECT count(*) FROM registrations") == 4


async def test_feedback_removes_a_token_only_under_its_own_provider(api, db):
    alice = await open_session(api, "alice")
    same = apns_token(7)
    await layer_register(api, alice, "alice-ipad", same)
    await navixy_bind(api, alice, "navixy_android_viewer", same)
    response = await api.post(
        FEEDBACK,
        json={"feedback": [{"provider": "fcm", "token": same, "reason": "UNREGISTERED"}]},
        headers=admin(),
    )
    assert await response.json() == {"removed": 1}
    assert await db.fetchval("SELECT provider FROM registrations") == "apns"


async def test_feedback_spares_a_token_registered_again_after_it_was_observed_dead(api, db):
    # APNs reports when a token became invalid; the app may since have been
    # reinstalled and have registered the same token anew.
    alice = await open_session(api, "alice")
    token = apns_token(8)
    await layer_register(api, alice, "alice-ipad", token)
    registered = await db.fetchval("SELECT updated_at FROM registrations")
    entry = {"provider": "apns", "token": token, "reason": "Unregistered"}

    before = (registered - timedelta(seconds=1)).isoformat()
    response = await api.post(
        FEEDBACK, json={"feedback": [{**entry, "observed_at": before}]}, headers=admin()
    )
    assert await response.json() == {"removed": 0}
    assert await db.fetchval("SELECT count(*) FROM registrations") == 1

    after = (registered + timedelta(seconds=1)).astimezone(UTC).isoformat()
    response = await api.post(
        FEEDBACK, json={"feedback": [{**entry, "observed_at": after}]}, headers=admin()
    )
    assert await response.json() == {"removed": 1}
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0


@pytest.mark.parametrize("observed_at", ["2026-11-24T10:00:00", "yesterday", 1732442400])
async def test_feedback_observed_at_must_be_a_date_time_with_an_offset(api, observed_at):
    entry = {
        "provider": "apns", "token": apns_token(8), "reason": "Unregistered",
        "observed_at": observed_at,
    }
    response = await api.post(FEEDBACK, json={"feedback": [entry]}, headers=admin())
    error = await internal_error(response, 400, "invalid_parameters")
    assert bad_parameters(error) == ["feedback.0.observed_at"]


async def test_empty_feedback_removes_nothing(api):
    response = await api.post(FEEDBACK, json={"feedback": []}, headers=admin())
    assert await response.json() == {"removed": 0}


@pytest.mark.parametrize(
    ("entry", "parameter"),
    [
        ({"provider": "apns", "token": apns_token(1), "reason": "UNREGISTERED"}, "reason"),
        ({"provider": "apns", "token": apns_token(1), "reason": "TooManyRequests"}, "reason"),
        ({"provider": "fcm", "token": NAVIXY_FCM, "reason": "Unregistered"}, "reason"),
        ({"provider": "fcm", "token": NAVIXY_FCM, "reason": "INVALID_ARGUMENT"}, "reason"),
        ({"provider": "webpush", "token": ENDPOINT, "reason": "500"}, "reason"),
        ({"provider": "webpush", "token": ENDPOINT, "reason": 410}, "reason"),
        ({"provider": "gcm", "token": NAVIXY_FCM, "reason": "UNREGISTERED"}, "provider"),
        ({"provider": "apns", "token": "not-hex", "reason": "Unregistered"}, "token"),
        ({"provider": "webpush", "token": "http://push.example/x", "reason": "410"}, "token"),
        ({"provider": "fcm", "reason": "UNREGISTERED"}, "token"),
        ({"provider": "fcm", "token": NAVIXY_FCM, "reason": "UNREGISTERED", "at": 1}, "at"),
    ],
)
async def test_feedback_validates_each_entry_for_its_provider(api, db, entry, parameter):
    await mixed_audience(api)
    before = await db.fetchval("SELECT count(*) FROM registrations")
    good = {"provider": "fcm", "token": fcm_token(5), "reason": "UNREGISTERED"}
    response = await api.post(FEEDBACK, json={"feedback": [good, entry]}, headers=admin())
    error = await internal_error(response, 400, "invalid_parameters")
    assert bad_parameters(error) == [f"feedback.1.{parameter}"]
    # All or nothing: the good entry was not applied either.
    assert await db.fetchval("SELECT count(*) FROM registrations") == before


@pytest.mark.parametrize("body", [{}, {"feedback": {"provider": "fcm"}}, {"feedback": None}])
async def test_feedback_must_be_a_list(api, body):
    error = await internal_error(
        await api.post(FEEDBACK, json=body, headers=admin()), 400, "invalid_parameters"
    )
    assert bad_parameters(error) == ["feedback"]


async def test_feedback_over_the_limit_is_refused(api):
    entry = {"provider": "fcm", "token": NAVIXY_FCM, "reason": "UNREGISTERED"}
    body = {"feedback": [entry] * (internal.MAX_FEEDBACK + 1)}
    error = await internal_error(
        await api.post(FEEDBACK, data=large(body), headers=admin()), 400, "invalid_parameters"
    )
    assert bad_parameters(error) == ["feedback"]


# --- sessions -----------------------------------------------------------------------


async def test_a_session_opened_over_http_works_in_both_dialects(api, db):
    response = await api.post(SESSIONS, json={"user": "alice", "ttl": 600}, headers=admin())
    assert response.status == 201
    body = await response.json()
    assert set(body) == {"token", "expires_at"}
    token = body["token"]
    assert len(token) == 32
    assert int(token, 16) >= 0
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert abs(expires_at - (datetime.now(UTC) + timedelta(seconds=600))) < timedelta(seconds=30)
    await layer_register(api, token, "alice-ipad", apns_token(1))
    await navixy_bind(api, token, "navixy_android_viewer", NAVIXY_FCM)
    assert tokens(await fan_out(api, ["alice"])) == {apns_token(1), NAVIXY_FCM}
    assert await db.fetchval("SELECT user_id FROM sessions") == "alice"


async def test_a_session_without_ttl_lasts_the_configured_default(api):
    response = await api.post(SESSIONS, json={"user": "alice"}, headers=admin())
    expires_at = datetime.fromisoformat((await response.json())["expires_at"])
    default = timedelta(seconds=api.app[SETTINGS].session_ttl)
    assert abs(expires_at - (datetime.now(UTC) + default)) < timedelta(seconds=30)


async def test_deleting_a_session_ends_it_and_its_registrations_in_both_dialects(api, db):
    token = await open_session(api, "alice")
    await layer_register(api, token, "alice-ipad", apns_token(1))
    await navixy_bind(api, token, "navixy_android_viewer", NAVIXY_FCM)
    response = await api.delete(f"{SESSIONS}/{token.upper()}", headers=admin())
    assert response.status == 204
    assert await response.read() == b""
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0
    response = await api.post(
        "/push_tokens",
        json={"token": apns_token(2), "type": "apns", "device_id": "d"},
        headers=layer_headers(token),
    )
    assert response.status == 401
    await navixy_error(
        await navixy(api, BIND, {"hash": token, "application": "navixy_android_viewer",
                                 "token": NAVIXY_FCM}),
        4,
    )


async def test_deleting_an_unknown_or_ended_session_answers_404(api, db):
    await internal_error(
        await api.delete(f"{SESSIONS}/{'ab' * 16}", headers=admin()), 404, "session_not_found"
    )
    token = await open_session(api, "alice")
    assert (await api.delete(f"{SESSIONS}/{token}", headers=admin())).status == 204
    await internal_error(
        await api.delete(f"{SESSIONS}/{token}", headers=admin()), 404, "session_not_found"
    )
    expired = await open_session(api, "bob")
    await expire(db, expired)
    await internal_error(
        await api.delete(f"{SESSIONS}/{expired}", headers=admin()), 404, "session_not_found"
    )


async def test_deleting_a_malformed_session_token_names_it(api):
    error = await internal_error(
        await api.delete(f"{SESSIONS}/not-a-token", headers=admin()), 400, "invalid_parameters"
    )
    assert bad_parameters(error) == ["token"]


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({}, "user"),
        ({"user": ""}, "user"),
        ({"user": "a\nb"}, "user"),
        ({"user": 7}, "user"),
        ({"user": "alice", "ttl": 0}, "ttl"),
        ({"user": "alice", "ttl": -5}, "ttl"),
        ({"user": "alice", "ttl": internal.MAX_SESSION_TTL + 1}, "ttl"),
        ({"user": "alice", "ttl": "600"}, "ttl"),
        ({"user": "alice", "ttl": 1.5}, "ttl"),
        ({"user": "alice", "ttl": True}, "ttl"),
        ({"user": "alice", "expires": 5}, "expires"),
    ],
)
async def test_a_bad_session_request_names_the_bad_parameter(api, db, body, parameter):
    error = await internal_error(
        await api.post(SESSIONS, json=body, headers=admin()), 400, "invalid_parameters"
    )
    assert bad_parameters(error) == [parameter]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0



async def test_a_sender_that_goes_away_ends_the_query_and_frees_its_connection(
    api, db, monkeypatch
):
    users = await bulk_registrations(db, users=1000, per_user=5)
    store = api.app[INTERNAL_STORE]
    real = store.find_targets
    closed: list[bool] = []

    async def watched(query: Any) -> AsyncIterator[list[Any]]:
        try:
            async with contextlib.aclosing(real(query)) as batches:
                async for batch in batches:
                    yield batch
        finally:
            closed.append(True)

    write = web.StreamResponse.write
    writes: list[int] = []

    async def gone_after_one_write(self: web.StreamResponse, data: bytes) -> None:
        # What aiohttp raises once the peer has closed the socket.
        if writes:
            raise ClientConnectionResetError("Cannot write to closing transport")
        writes.append(len(data))
        await write(self, data)

    monkeypatch.setattr(store, "find_targets", watched)
    monkeypatch.setattr(web.StreamResponse, "write", gone_after_one_write)
    response = await api.post(
        TARGETS, data=large({"users": users, "category": "chat_message"}), headers=admin()
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert writes == [pytest.approx(internal.WRITE_CHUNK_BYTES, rel=0.05)]
    # The client sees the cut before the server has rolled the cursor back.
    for _ in range(100):
        if closed:
            break
        await asyncio.sleep(0.02)
    assert closed == [True]


async def test_internal_body_that_is_not_its_content_encoding_is_a_400(api):
    response = await api.post(
        "/internal/v1/feedback",
        data=b"not gzip at all",
        headers={**admin(), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    await internal_error(response, 400, "malformed_request")
