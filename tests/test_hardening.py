"""Issue 9, items 4-13: the defects an adversarial review found, and the classes behind them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import EXECUTOR
from gateway.observability import METRICS, AccessLogger
from tests.conftest import ClientFactory, layer_headers
from tests.helpers import (
    BIND,
    DELETE,
    LAYER_APNS,
    NAVIXY_FCM,
    apns_token,
    expire,
    layer_error,
    navixy,
    navixy_error,
)
from tests.test_cli import gateway
from tests.test_internal import ADMIN_KEY, FEEDBACK, SESSIONS, admin, bad_parameters, internal_error

# --- raw HTTP ---------------------------------------------------------------------------


async def exchange(server: Live, raw: bytes) -> bytes:
    """Send raw bytes, read the answer to the end of the connection."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def head_of(answer: bytes) -> tuple[int, dict[str, str]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


# Requests aiohttp's HTTP parser refuses before any handler runs.
UNREADABLE = {
    "nul-in-path": b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "overlong-line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad-chunk-size": (
        b"POST /push_tokens HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    ),
    "tls-handshake": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "bad-method": b"G\x01T / HTTP/1.1\r\n\r\n",
}


@dataclass
class Live:
    app: web.Application
    host: str
    port: int


@pytest.fixture
async def server(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[Live]:
    """The gateway on a real port as `gateway serve` runs it: access log on, handlers not
    cancelled when their client leaves (aiohttp's TestServer would cancel them)."""
    app = create_app(replace(settings, admin_token=ADMIN_KEY))
    runner = web.AppRunner(app, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Live(app, host, port)
    finally:
        await runner.cleanup()


# --- 13: X-Request-Id on every response; 111 for an empty action segment --------------


@pytest.mark.parametrize("raw", UNREADABLE.values(), ids=list(UNREADABLE))
async def test_a_request_the_parser_refuses_gets_a_request_id(server, raw):
    status, headers = head_of(await exchange(server, raw))
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert len(headers["x-request-id"]) == 32


async def test_a_bad_expect_gets_a_request_id_and_keeps_the_callers(server):
    raw = (
        b"POST /v2/user/session/push_token/bind HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n"
        b"X-Request-Id: mine-1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    status, headers = head_of(await exchange(server, raw))
    assert status == 400
    assert headers["x-request-id"] == "mine-1"


# Each route refuses a bad Expect itself (gateway.expect), in the dialect that
# owns its path; Layer's where none does. The last cases are paths no route
# serves, and a served path with another method.
EXPECT_ROUTES = [
    ("POST", "/push_tokens", "layer"),
    ("DELETE", "/sessions/0123", "layer"),
    ("POST", "/v2/user/logout", "navixy"),
    ("POST", "/user/logout/", "navixy"),
    ("POST", "/v2/no/such/action", "navixy"),
    ("POST", "/internal/fanout", "internal"),
    ("POST", "/internal/notifications", "internal"),
    ("GET", "/internal/no-such-endpoint", "internal"),
    ("GET", "/health/live", "layer"),
    ("GET", "/metrics", "layer"),
    ("GET", "/openapi.json", "layer"),
    ("GET", "/docs", "layer"),
    ("GET", "/docs/assets/swagger-ui.css", "layer"),
    ("GET", "/webpush/vapid-public-key", "layer"),
    ("GET", "/no/such/path", "layer"),
    ("POST", "/", "layer"),
    ("GET", "/v2", "navixy"),
    ("PUT", "/push_tokens", "layer"),
]


@pytest.mark.parametrize(("method", "path", "dialect"), EXPECT_ROUTES)
async def test_every_route_refuses_a_bad_expect_in_its_dialect(server, method, path, dialect):
    raw = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n"
        "Connection: close\r\n\r\n{}"
    ).encode()
    answer = await exchange(server, raw)
    status, headers = head_of(answer)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    body = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    if dialect == "navixy":
        assert body["success"] is False
    elif dialect == "layer":
        assert body["id"] == "invalid_request"
    else:
        assert "id" not in body and "success" not in body


async def test_a_100_continue_expectation_gets_the_interim_answer_then_the_real_one(server):
    raw = (
        b"POST /v2/user/logout HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    answer = await exchange(server, raw)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 ")


@pytest.mark.parametrize(
    "path",
    [
        "/v2//user/session/push_token/delete",
        "/v2//user/logout",
        "/v2/user/session/push_token/delete//",
        "/v2///user/session/push_token/bind/",
        "/v2/user/session/push_token/delete%2F",
        "/v2/user%2Flogout",
        "/user/logout//",
        "/user//logout",
    ],
)
async def test_a_known_action_behind_an_empty_segment_is_an_unknown_action(client, path):
    await navixy_error(await client.get(path), 111)
    await navixy_error(await client.post(path), 111)
    await navixy_error(await client.put(path), 111)


# --- 12: the access log ------------------------------------------------------------------


@pytest.mark.parametrize("raw", UNREADABLE.values(), ids=list(UNREADABLE))
async def test_a_request_the_parser_refuses_gets_an_access_line(server, raw, caplog):
    caplog.set_level(logging.INFO)
    await exchange(server, raw)
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert [(r.status, r.route) for r in access] == [(400, "unmatched")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 11: a client that leaves mid-body ---------------------------------------------------


async def counted(server: Live, status: int) -> int:
    stats = server.app[METRICS].requests.stats
    return sum(s.count for (_, _, code), s in stats.items() if code == str(status))


async def wait_for_count(server: Live, status: int, count: int) -> None:
    for _ in range(500):
        if await counted(server, status) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no request counted as {status}")


PARTIAL_BODIES = {
    "navixy-json": (
        b"POST /v2/user/session/push_token/bind HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"hash\": "
    ),
    "navixy-form": (
        b"POST /user/logout HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\nhash="
    ),
    "internal": (
        b"POST /internal/v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + ADMIN_KEY.encode()
        + b"\r\nContent-Length: 500\r\n\r\n{\"user\""
    ),
}


@pytest.mark.parametrize("raw", PARTIAL_BODIES.values(), ids=list(PARTIAL_BODIES))
async def test_a_client_leaving_mid_body_is_a_499_logged_at_info(server, raw, caplog):
    caplog.set_level(logging.INFO)
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(raw)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await wait_for_count(server, 499, 1)
    assert await counted(server, 500) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("gateway")]
    assert [r for r in caplog.records if "closed" in r.getMessage() and r.levelno == logging.INFO]


# --- 10: session lifetimes are bounded before anything is written -------------------------


async def test_cli_refuses_a_ttl_past_the_bound_and_writes_nothing(database_url, db):
    result = await gateway(database_url, "session", "create", "alice", "--ttl", "999999999999")
    assert result.returncode == 2
    assert "--ttl" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_cli_accepts_a_ttl_at_the_bound(database_url, db):
    from gateway.validation import MAX_SESSION_TTL

    ttl = str(MAX_SESSION_TTL)
    result = await gateway(database_url, "session", "create", "alice", "--ttl", ttl)
    assert result.returncode == 0, result.stderr
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


@pytest.fixture
async def api(
    aiohttp_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> TestClient:  # type: ignore[type-arg]
    return await aiohttp_client(create_app(replace(settings, admin_token=ADMIN_KEY)))


@pytest.mark.parametrize("ttl", [999999999999, 10**40, -(10**40), 0])
async def test_the_internal_api_refuses_a_ttl_past_the_same_bound(api, db, ttl):
    response = await api.post(SESSIONS, json={"user": "alice", "ttl": ttl}, headers=admin())
    assert bad_parameters(await internal_error(response, 400, "invalid_parameters")) == ["ttl"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


def test_gateway_session_ttl_has_the_same_bound():
    from gateway.config import ConfigError
    from gateway.validation import MAX_SESSION_TTL

    assert Settings.from_env({"GATEWAY_SESSION_TTL": str(MAX_SESSION_TTL)}).session_ttl
    with pytest.raises(ConfigError, match="GATEWAY_SESSION_TTL"):
        Settings.from_env({"GATEWAY_SESSION_TTL": str(MAX_SESSION_TTL + 1)})


# --- 9: dates that reach PostgreSQL are range-checked at the edge ------------------------


@pytest.mark.parametrize(
    "observed_at",
    [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59+00:00",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2999-01-01T00:00:00Z",
    ],
)
async def test_feedback_observed_at_far_in_the_past_or_future_names_the_field(api, observed_at):
    entry = {
        "provider": "apns", "token": apns_token(8), "reason": "Unregistered",
        "observed_at": observed_at,
    }
    response = await api.post(FEEDBACK, json={"feedback": [entry, entry]}, headers=admin())
    error = await internal_error(response, 400, "invalid_parameters")
    assert bad_parameters(error) == ["feedback.0.observed_at", "feedback.1.observed_at"]


async def test_feedback_observed_at_within_the_range_is_accepted(api):
    entry = {
        "provider": "apns", "token": apns_token(8), "reason": "Unregistered",
        "observed_at": "2024-02-29T23:59:59-23:59",
    }
    response = await api.post(FEEDBACK, json={"feedback": [entry]}, headers=admin())
    assert response.status == 200, await response.text()


# --- 8: duplicate keys in JSON bodies -----------------------------------------------------


def layer_body(**extra: Any) -> dict[str, Any]:
    return {"token": LAYER_APNS, "type": "apns", "device_id": "d-1", **extra}


def with_repeat(body: dict[str, Any], key: str, value: Any) -> bytes:
    """The JSON of ``body`` with ``key`` given once more at the end."""
    text = orjson.dumps(body)
    return text[:-1] + b"," + orjson.dumps(key) + b":" + orjson.dumps(value) + b"}"


async def test_layer_refuses_a_repeated_key_naming_it(client, new_session, db):
    token = await new_session("alice")
    body = with_repeat(layer_body(), "device_id", "d-2")
    response = await client.post(
        "/push_tokens", data=body,
        headers={**layer_headers(token), "Content-Type": "application/json"},
    )
    error = await layer_error(response, 422, 105, "invalid_property", {"property": "device_id"})
    assert "more than once" in error["message"]
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0


@pytest.mark.parametrize("key", ["hash", "token", "application"])
async def test_navixy_json_refuses_a_repeated_key_naming_it(client, new_session, db, key):
    alice, bob = await new_session("alice"), await new_session("bob")
    body = {"hash": alice, "application": "navixy_android_viewer", "token": NAVIXY_FCM}
    values = {"hash": bob, "token": NAVIXY_FCM + "x", "application": "navixy_iphone_viewer"}
    response = await client.post(
        f"/v2/{BIND}", data=with_repeat(body, key, values[key]),
        headers={"Content-Type": "application/json"},
    )
    error = await navixy_error(response, 7)
    assert error["errors"] == [{"parameter": key, "error": "is given more than once"}]
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0


async def test_a_repeated_key_inside_a_nested_object_is_named_by_its_path(client, new_session):
    alice = await new_session("alice")
    nested = b'{"p256dh": "a", "auth": "b", "auth": "c"}'
    for form in ("json", "form", "query"):
        params: dict[str, Any] = {
            "hash": alice, "application": "w3c_pushapi",
            "token": "https://fcm.googleapis.com/fcm/send/x",
            "parameters": nested.decode() if form != "json" else {"placeholder": 1},
        }
        if form == "json":
            raw = orjson.dumps(params).replace(b'{"placeholder":1}', nested)
            response = await client.post(
                f"/v2/{BIND}", data=raw, headers={"Content-Type": "application/json"}
            )
        else:
            response = await navixy(client, BIND, params, form)
        error = await navixy_error(response, 7)
        assert error["errors"] == [
            {"parameter": "parameters.auth", "error": "is given more than once"}
        ], form


async def test_navixy_delete_refuses_a_repeated_hash(client, new_session):
    alice, bob = await new_session("alice"), await new_session("bob")
    response = await client.post(
        f"/v2/{DELETE}", data=with_repeat({"hash": alice}, "hash", bob),
        headers={"Content-Type": "application/json"},
    )
    error = await navixy_error(response, 7)
    assert error["errors"][0]["parameter"] == "hash"


async def test_the_internal_api_refuses_a_repeated_key_naming_it(api, db):
    response = await api.post(
        SESSIONS, data=with_repeat({"user": "alice"}, "user", "bob"), headers=admin()
    )
    assert bad_parameters(await internal_error(response, 400, "invalid_parameters")) == ["user"]
    entry = b'{"provider": "apns", "token": "%s", "reason": "Unregistered", "token": "00"}' % (
        apns_token(1).encode()
    )
    response = await api.post(FEEDBACK, data=b'{"feedback": [%s]}' % entry, headers=admin())
    error = await internal_error(response, 400, "invalid_parameters")
    assert bad_parameters(error) == ["feedback.0.token"]


async def test_keys_that_differ_only_by_escapes_are_the_same_key(client, new_session):
    alice = await new_session("alice")
    raw = b'{"hash": "%s", "h\\u0061sh": "%s"}' % (alice.encode(), alice.encode())
    response = await client.post(
        f"/v2/{DELETE}", data=raw, headers={"Content-Type": "application/json"}
    )
    error = await navixy_error(response, 7)
    assert error["errors"][0]["parameter"] == "hash"


async def test_the_same_key_in_sibling_objects_is_not_a_repeat(api):
    entries = [
        {"provider": "apns", "token": apns_token(n), "reason": "Unregistered"} for n in (1, 2)
    ]
    response = await api.post(FEEDBACK, json={"feedback": entries}, headers=admin())
    assert response.status == 200, await response.text()


# --- 4: only live registrations count towards the 25 --------------------------------------


async def layer_register(client: TestClient, session: str, device: str, token: str) -> None:  # type: ignore[type-arg]
    body = {"token": token, "type": "apns", "device_id": device}
    response = await client.post("/push_tokens", json=body, headers=layer_headers(session))
    assert response.status == 202, await response.text()


async def live_devices(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch(
        "SELECT r.device_id FROM registrations AS r JOIN sessions AS s ON s.id = r.session_id"
        " WHERE s.expires_at > now()"
    )
    return {row["device_id"] for row in rows}


async def test_a_dead_registration_goes_before_a_live_one_at_the_limit(client, new_session, db):
    old = await new_session("alice")
    live = await new_session("alice")
    for number in range(1, 25):
        await layer_register(client, live, f"dev-{number}", apns_token(number))
    # The newest registration is the one whose session has just expired.
    await layer_register(client, old, "old-phone", apns_token(100))
    await expire(db, old)

    await layer_register(client, live, "dev-25", apns_token(25))

    assert await live_devices(db) == {f"dev-{number}" for number in range(1, 26)}
    assert await db.fetchval("SELECT count(*) FROM registrations") == 25
    # The limit still holds among live ones: a 26th evicts the oldest live one.
    await layer_register(client, live, "dev-26", apns_token(26))
    assert await live_devices(db) == {f"dev-{number}" for number in range(2, 27)}


async def test_several_dead_registrations_all_go_before_any_live_one(client, new_session, db):
    dead = [await new_session("alice") for _ in range(3)]
    live = await new_session("alice")
    for number in range(1, 23):
        await layer_register(client, live, f"dev-{number}", apns_token(number))
    for number, session in enumerate(dead):
        await layer_register(client, session, f"dead-{number}", apns_token(200 + number))
    for session in dead:
        await expire(db, session)
    for number in range(23, 26):
        await layer_register(client, live, f"dev-{number}", apns_token(number))
    assert await live_devices(db) == {f"dev-{number}" for number in range(1, 26)}


async def test_feedback_counts_only_live_registrations_removed(api, db):
    from tests.test_internal import open_session

    alice = await open_session(api, "alice")
    bob = await open_session(api, "bob")
    await layer_register(api, alice, "phone", apns_token(1))
    await layer_register(api, bob, "phone", apns_token(2))
    await expire(db, bob)
    entries = [
        {"provider": "apns", "token": apns_token(n), "reason": "Unregistered"} for n in (1, 2)
    ]
    response = await api.post(FEEDBACK, json={"feedback": entries}, headers=admin())
    assert await response.json() == {"removed": 1}
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0


# --- 5: ending a session never fails on a conflict with a write batch ---------------------


async def wait_until_blocked(db: asyncpg.Connection, query_part: str) -> None:
    """Until a backend running a query that holds this text waits for a lock."""
    for _ in range(1000):
        blocked = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND strpos(query, $1) > 0",
            query_part,
        )
        if blocked:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing running {query_part!r} waited")


async def end_through(api: TestClient, surface: str, token: str) -> int:  # type: ignore[type-arg]
    """End a session through one of the ways a caller can; the HTTP status (0: no HTTP)."""
    if surface == "layer":
        return (await api.delete(f"/sessions/{token}", headers=layer_headers())).status
    if surface == "navixy":
        return (await api.get(f"/v2/user/logout?hash={token}")).status
    if surface == "internal":
        return (await api.delete(f"{SESSIONS}/{token}", headers=admin())).status
    purged = await api.app[EXECUTOR].store.purge_expired_sessions()
    assert purged == 1
    return 0


@pytest.mark.parametrize("surface", ["layer", "navixy", "internal", "purge"])
async def test_ending_a_session_while_a_batch_moves_its_devices_is_not_a_500(
    api, db, database_url, surface
):
    """The batch locks device b, then a; the cascade from the session locks a, then b.

    A third connection forces that interleaving: it holds an uncommitted row
    with the token the batch gives device b, so the batch waits there holding b,
    while the session's end takes a and waits for b. Its rollback lets the batch
    on to a: a deadlock, which PostgreSQL breaks by failing the session's end.
    """
    from gateway.commands import Provider, RegisterToken, SessionRef
    from tests.test_internal import open_session

    s1 = await open_session(api, "alice")
    s2 = await open_session(api, "alice")
    await open_session(api, "zed")
    await layer_register(api, s1, "a", apns_token(1))
    await layer_register(api, s1, "b", apns_token(2))
    zed_id = await db.fetchval("SELECT id FROM sessions WHERE user_id = 'zed'")

    blocker = await asyncpg.connect(database_url)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(
            "INSERT INTO registrations (user_id, session_id, device_id, provider, token)"
            " VALUES ('zed', $1, 'z', 'apns', $2)",
            zed_id, apns_token(20),
        )
        store = api.app[EXECUTOR].store
        moves = [
            RegisterToken(SessionRef.from_token(s2), "b", Provider.APNS, apns_token(20)),
            RegisterToken(SessionRef.from_token(s2), "a", Provider.APNS, apns_token(10)),
        ]
        batch = asyncio.create_task(store.apply_writes(moves))
        await wait_until_blocked(db, "SELECT apply_registration_writes")
        if surface == "purge":
            await expire(db, s1)
        ending = asyncio.create_task(end_through(api, surface, s1))
        await wait_until_blocked(db, "DELETE FROM sessions")
        await transaction.rollback()

        assert await batch == [None, None]
        assert await ending in {204, 200, 0}
    finally:
        await blocker.close()
    rows = await db.fetch("SELECT device_id, session_id, token FROM registrations ORDER BY 1")
    s2_id = await db.fetchval(
        "SELECT id FROM sessions WHERE token_sha256 = $1", SessionRef.from_token(s2).token_sha256
    )
    assert [(row["device_id"], row["session_id"]) for row in rows] == [("a", s2_id), ("b", s2_id)]
    assert await db.fetchval(
        "SELECT count(*) FROM sessions WHERE token_sha256 = $1",
        SessionRef.from_token(s1).token_sha256,
    ) == 0


def test_a_conflict_past_its_retries_is_unavailable_not_an_error():
    import asyncpg as pg

    from gateway.errors import DatabaseUnavailable
    from gateway.store import translate

    assert isinstance(translate(pg.DeadlockDetectedError("deadlock")), DatabaseUnavailable)
    assert isinstance(translate(pg.SerializationError("serialization")), DatabaseUnavailable)


# --- 6: one spelling per Web Push endpoint --------------------------------------------------


SPELLINGS = [
    "https://fcm.googleapis.com/fcm/send/abc",
    "HTTPS://FCM.GOOGLEAPIS.COM/fcm/send/abc",
    "https://fcm.googleapis.com:443/fcm/send/abc",
    "https://fcm.googleapis.com./fcm/send/abc",
    "https://Fcm.GoogleApis.com.:443/fcm/send/abc",
    "https://fcm%2Egoogleapis%2Ecom/fcm/send/abc",
    "https://fcm.googleapis.com:0443/fcm/send/abc",
]


def webpush_bind(hash_: str, endpoint: str) -> dict[str, Any]:
    from tests.helpers import subscription_keys

    return {
        "hash": hash_, "application": "w3c_pushapi", "token": endpoint,
        "parameters": subscription_keys(),
    }


async def test_spellings_of_one_endpoint_are_one_registration(client, new_session, db):
    from tests.helpers import navixy_ok

    for spelling in SPELLINGS:
        session = await new_session("alice")
        await navixy_ok(await navixy(client, BIND, webpush_bind(session, spelling)))
    tokens = await db.fetch("SELECT token FROM registrations")
    assert [row["token"] for row in tokens] == [SPELLINGS[0]]


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_feedback_in_any_spelling_prunes_the_endpoint(api, db, spelling):
    from tests.helpers import navixy_ok
    from tests.test_internal import open_session

    session = await open_session(api, "alice")
    await navixy_ok(await navixy(api, BIND, webpush_bind(session, SPELLINGS[1])))
    entry = {"provider": "webpush", "token": spelling, "reason": "410"}
    response = await api.post(FEEDBACK, json={"feedback": [entry]}, headers=admin())
    assert await response.json() == {"removed": 1}


@pytest.mark.parametrize(
    ("endpoint", "normal"),
    [
        ("https://bücher.example/p", "https://xn--bcher-kva.example/p"),
        ("https://BÜCHER.example/p", "https://xn--bcher-kva.example/p"),
        ("https://xn--bcher-kva.example/p", "https://xn--bcher-kva.example/p"),
        ("https://push.example", "https://push.example/"),
        ("https://push.example:/p", "https://push.example/p"),
        ("https://push.example:8443/p", "https://push.example:8443/p"),
        ("https://push.example/P/%7E?A=B", "https://push.example/P/%7E?A=B"),
        ("https://push.example/ü", "https://push.example/%C3%BC"),
        ("https://push。example/p", "https://push.example/p"),
    ],
)
def test_an_endpoint_is_normalised(endpoint, normal):
    from gateway.validation import normalize_webpush_endpoint

    assert normalize_webpush_endpoint(endpoint) == normal
    assert normalize_webpush_endpoint(normal) == normal


# --- 7: a Web Push endpoint must be on a public DNS name ------------------------------------


REFUSED_ENDPOINTS = [
    "https://127.0.0.1/",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1:5432/",
    "https://[::1]:8080/",
    "https://[::ffff:127.0.0.1]/",
    "https://[fe80::1%25eth0]/",
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0x7f.0.0.1/",
    "https://0177.0.0.1/",
    "https://127.1/",
    "https://127.0.0.1./",
    "https://1.2.3.4.5/",
    "https://localhost/",
    "https://LOCALHOST./",
    "https://push.localhost/",
    "https://printer.local/",
    "https://metadata.google.internal/",
    "https://router.lan/",
    "https://1.0.0.127.in-addr.arpa/",
    "https://gateway/",
    "https://host:0/",
    "https://host.example:65536/",
    "https://host.example:99999/",
    "https://host.example:-1/",
    "https://host.example:+80/",
    "https://%00/",
    "https://push%00.example/",
    "https://push.exa%0Ample/",
    "https://push%20.example/",
    "https://push\u200b.example/",
    "https://push.example/\u200bx",
    "https://\u202epush.example/",
    "https://push.example%FF/",
    "https://push..example/",
    "https://-push.example/",
    "https://push_1.example/",
    "https://user@push.example/",
    "https://push.example\\@evil.example/",
    "https:push.example/p",
    "https:/push.example/p",
    "https://push.example/p#frag",
    "https://push.example/p%00",
    "https://push.example/p?q=%0d%0aX-Injected:1",
    "https://push.example/p%7f",
    "http://push.example/p",
    "https://xn--zz.example/",
    "https://" + "a" * 64 + ".example/",
]


@pytest.mark.parametrize("endpoint", REFUSED_ENDPOINTS)
async def test_a_bind_to_a_non_public_endpoint_is_refused(client, new_session, db, endpoint):
    session = await new_session("alice")
    response = await navixy(client, BIND, webpush_bind(session, endpoint))
    error = await navixy_error(response, 7)
    assert [item["parameter"] for item in error["errors"]] == ["token"]
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0


@pytest.fixture
async def restricted(aiohttp_client: ClientFactory, settings: Settings, db: asyncpg.Connection):
    """The gateway with Web Push restricted to Google's and Mozilla's push services."""
    env = {"GATEWAY_WEBPUSH_ALLOWED_HOSTS": "googleapis.com, *.push.services.mozilla.com"}
    hosts = Settings.from_env(env).webpush_allowed_hosts
    return await aiohttp_client(create_app(replace(settings, webpush_allowed_hosts=hosts)))


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("https://fcm.googleapis.com/fcm/send/x", True),
        ("https://googleapis.com/x", True),
        ("https://FCM.googleapis.com./x", True),
        ("https://updates.push.services.mozilla.com/wpush/v2/x", True),
        ("https://evilgoogleapis.com/x", False),
        ("https://googleapis.com.evil.example/x", False),
        ("https://mozilla.com/x", False),
        ("https://push.example/x", False),
    ],
)
async def test_the_allow_list_admits_its_hosts_and_the_names_under_them(
    restricted, db, endpoint, allowed
):
    from tests.helpers import navixy_ok

    session = await restricted.app[EXECUTOR].store.create_session("alice", 3600)
    response = await navixy(restricted, BIND, webpush_bind(session, endpoint))
    if allowed:
        await navixy_ok(response)
    else:
        error = await navixy_error(response, 7)
        assert error["errors"][0]["parameter"] == "token"


@pytest.mark.parametrize("value", ["localhost", "10.0.0.1", "bad host.example", "a..b"])
def test_a_bad_allow_list_entry_stops_the_gateway(value):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="GATEWAY_WEBPUSH_ALLOWED_HOSTS"):
        Settings.from_env({"GATEWAY_WEBPUSH_ALLOWED_HOSTS": f"googleapis.com,{value}"})


def test_without_an_allow_list_every_public_name_is_admitted():
    assert Settings.from_env({}).webpush_allowed_hosts is None


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 (an address to refuse, not to bind)
        ("255.255.255.255", False),
        ("224.0.0.251", False),
        ("192.0.2.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),
        ("64:ff9b::a00:1", False),
        ("not an address", False),
    ],
)
def test_is_public_ip(address, public):
    from gateway.netguard import is_public_ip

    assert is_public_ip(address) is public


# What only one of the two former copies of the rule refused (netguard's at
# registration, delivery.net's at connection) both now refuse.
@pytest.mark.parametrize(
    "address",
    [
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo whose client is 8.8.8.8
        "64:ff9b:1:808:808::",  # NAT64 local-use
        "fec0::1",  # site-local
        "2606:4700::1111%eth0",  # a global address with a scope id
    ],
)
def test_the_public_address_rule_refuses_what_either_copy_refused(address):
    from gateway.netguard import is_public_ip

    assert not is_public_ip(address)


async def test_the_registrations_gauge_counts_only_live_registrations(client, new_session, db):
    alice, bob = await new_session("alice"), await new_session("bob")
    await layer_register(client, alice, "phone", apns_token(1))
    await layer_register(client, bob, "phone", apns_token(2))
    await expire(db, bob)
    assert await client.app[EXECUTOR].store.count_registrations_by_provider() == {"apns": 1}
