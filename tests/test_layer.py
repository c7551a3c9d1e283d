"""The Layer surface: /push_tokens and /sessions, its headers, its error bodies."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.commands import DeadToken, Provider, PruneTokens
from gateway.keys import EXECUTOR
from tests.conftest import LAYER_ACCEPT, layer_headers
from tests.helpers import (
    BIND,
    ENDPOINT,
    LAYER_APNS,
    LAYER_DEVICE,
    NAVIXY_FCM,
    apns_token,
    expire,
    layer_error,
    navixy,
    navixy_ok,
    random_hash,
    registrations,
    snapshot,
    subscription_keys,
)

FCM = "dQw4w9WgXcQ:APA91bFakeFcmTokenForTests_-"

# The page's "Example" JSON block, byte for byte.
PAGE_EXAMPLE_JSON = """{
    "token": "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949",
    "type": "apns",
    "device_id": "a7775566-bfbf-11e5-bf72-359a01002888",
    "apns_bundle_id": "com.layer.bundleid",
    "ios_version": "9.0"
}"""

# The page's curl -d body, byte for byte.
PAGE_CURL_BODY = (
    '{"token": "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949", '
    '"type": "apns", "device_id": "a7775566-bfbf-11e5-bf72-359a01002888", '
    '"apns_bundle_id": "com.layer.bundleid"}'
)


def page_headers(token: str, *, content_type: bool = True) -> dict[str, str]:
    """The page's curl headers, with its single-quoted session-token."""
    headers = {
        "Accept": "application/vnd.layer+json; version=1.0",
        "Authorization": f"Layer session-token='{token}'",
    }
    if content_type:
        headers["Content-Type"] = "application/json"
    return headers


def apns_body(device_id: Any = "dev-1", token: Any = LAYER_APNS, **extra: Any) -> dict[str, Any]:
    return {"token": token, "type": "apns", "device_id": device_id, **extra}


# --- the page's examples ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ios_version"),
    [(PAGE_EXAMPLE_JSON, "9.0"), (PAGE_CURL_BODY, None)],
    ids=["example-json", "curl-body"],
)
async def test_layer_page_register_example_verbatim_is_202_empty_and_stored(
    client, new_session, db, body, ios_version
):
    token = await new_session("alice")
    response = await client.post("/push_tokens", data=body, headers=page_headers(token))
    assert response.status == 202, await response.text()
    assert await response.read() == b""
    [row] = await registrations(db)
    assert row["user_id"] == "alice"
    assert row["provider"] == "apns"
    assert row["token"] == LAYER_APNS
    assert row["device_id"] == LAYER_DEVICE
    assert row["apns_bundle_id"] == "com.layer.bundleid"
    assert row["ios_version"] == ios_version
    assert row["gcm_sender_id"] is None
    assert row["category_filter"] == "*"


async def test_layer_page_unregister_example_verbatim_is_202_empty_and_row_gone(
    client, new_session, db
):
    token = await new_session("alice")
    response = await client.post("/push_tokens", data=PAGE_CURL_BODY, headers=page_headers(token))
    assert response.status == 202
    response = await client.delete(
        "/push_tokens/a7775566-bfbf-11e5-bf72-359a01002888",
        headers=page_headers(token, content_type=False),
    )
    assert response.status == 202, await response.text()
    assert await response.read() == b""
    assert await registrations(db) == []


async def test_layer_unregister_of_unknown_device_is_still_202(client, new_session, db):
    token = await new_session("alice")
    response = await client.delete("/push_tokens/never-registered", headers=layer_headers(token))
    assert response.status == 202
    assert await response.read() == b""


async def test_layer_gcm_registration_is_stored_as_fcm_with_sender_id(client, new_session, db):
    token = await new_session("alice")
    response = await client.post(
        "/push_tokens",
        json={"token": FCM, "type": "gcm", "device_id": "android-1", "gcm_sender_id": "1234"},
        headers=layer_headers(token),
    )
    assert response.status == 202, await response.text()
    [row] = await registrations(db)
    assert (row["provider"], row["token"], row["gcm_sender_id"]) == ("fcm", FCM, "1234")


# --- the session --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header_name", "template"),
    [
        ("Authorization", 'Layer session-token="{}"'),
        ("Authorization", "Layer session-token='{}'"),
        ("authorization", 'Layer session-token="{}"'),
        ("authorization", "Layer session-token='{}'"),
    ],
    ids=["double", "single", "lowercase-double", "lowercase-single"],
)
async def test_layer_session_token_is_read_in_both_quote_styles_and_any_header_case(
    client, new_session, db, header_name, template
):
    token = await new_session("alice")
    headers = {"Accept": LAYER_ACCEPT, header_name: template.format(token)}
    response = await client.post("/push_tokens", json=apns_body(), headers=headers)
    assert response.status == 202, await response.text()
    assert len(await registrations(db)) == 1


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Layer",
        "Bearer {}",
        "Layer session-token={}",
        "Layer session-token=\"{}'",
        "Layer token=\"{}\"",
        'Layer session-token="not-a-token"',
        'Layer session-token="{}0"',
        'Layer session-token=""',
    ],
    ids=[
        "missing",
        "empty",
        "scheme-only",
        "bearer",
        "unquoted",
        "mismatched-quotes",
        "wrong-parameter",
        "not-hex",
        "33-chars",
        "empty-token",
    ],
)
async def test_layer_register_without_a_well_formed_session_is_401_authentication_required(
    client, new_session, db, authorization
):
    token = await new_session("alice")
    headers = {"Accept": LAYER_ACCEPT}
    if authorization is not None:
        headers["Authorization"] = authorization.format(token)
    response = await client.post("/push_tokens", json=apns_body(), headers=headers)
    await layer_error(response, 401, 4, "authentication_required")
    assert await registrations(db) == []


async def test_layer_register_with_unknown_session_is_401(client, db):
    response = await client.post(
        "/push_tokens", json=apns_body(), headers=layer_headers(random_hash())
    )
    await layer_error(response, 401, 4, "authentication_required")


async def test_layer_register_with_expired_session_is_401(client, new_session, db):
    token = await new_session("alice", ttl=3600)
    await expire(db, token)
    response = await client.post("/push_tokens", json=apns_body(), headers=layer_headers(token))
    await layer_error(response, 401, 4, "authentication_required")
    assert await registrations(db) == []


async def test_layer_register_with_revoked_session_is_401(client, new_session, db):
    token = await new_session("alice")
    response = await client.delete(f"/sessions/{token}", headers=layer_headers())
    assert response.status == 204
    response = await client.post("/push_tokens", json=apns_body(), headers=layer_headers(token))
    await layer_error(response, 401, 4, "authentication_required")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_layer_other_endpoints_with_unknown_session_are_401(client, db, method):
    path = "/push_tokens" if method == "GET" else "/push_tokens/dev-1"
    response = await client.request(method, path, headers=layer_headers(random_hash()))
    await layer_error(response, 401, 4, "authentication_required")


# --- Accept -------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "application/json",
        "application/vnd.layer+json; version=4.0",
        "application/vnd.layer+json",
        "application/vnd.layer+json; version=1",
        "text/html, application/json",
    ],
    ids=["missing", "any", "json", "version-4.0", "no-version", "version-1", "list-without"],
)
@pytest.mark.parametrize("endpoint", ["register", "unregister", "list", "end-session"])
async def test_layer_request_without_the_layer_accept_is_406_invalid_header(
    client, new_session, db, accept, endpoint
):
    token = await new_session("alice")
    headers = layer_headers(token, accept=accept)
    if endpoint == "register":
        response = await client.post("/push_tokens", json=apns_body(), headers=headers)
    elif endpoint == "unregister":
        response = await client.delete("/push_tokens/dev-1", headers=headers)
    elif endpoint == "list":
        response = await client.get("/push_tokens", headers=headers)
    else:
        response = await client.delete(f"/sessions/{token}", headers=headers)
    await layer_error(response, 406, 107, "invalid_header", {"header": "Accept"})
    assert await registrations(db) == []
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


@pytest.mark.parametrize(
    "accept",
    [
        "application/json, application/vnd.layer+json; version=1.0",
        "application/vnd.layer+json; version=1.0, */*;q=0.1",
        "text/html;q=0.9, application/vnd.layer+json;version=1.0",
        'application/vnd.layer+json; version="1.0"',
        "APPLICATION/VND.LAYER+JSON; VERSION=1.0",
    ],
    ids=["second", "first", "no-spaces", "quoted-version", "upper-case"],
)
async def test_layer_accept_listing_several_media_ranges_including_layer_is_accepted(
    client, new_session, db, accept
):
    token = await new_session("alice")
    response = await client.post(
        "/push_tokens", json=apns_body(), headers=layer_headers(token, accept=accept)
    )
    assert response.status == 202, await response.text()


# --- body validation ------------------------------------------------------------


@pytest.mark.parametrize("missing", ["token", "type", "device_id"])
async def test_layer_register_without_a_required_property_is_422_missing_property(
    client, new_session, db, missing
):
    token = await new_session("alice")
    body = apns_body()
    del body[missing]
    response = await client.post("/push_tokens", json=body, headers=layer_headers(token))
    await layer_error(response, 422, 104, "missing_property", {"property": missing})
    assert await registrations(db) == []


@pytest.mark.parametrize(
    ("body", "prop"),
    [
        (apns_body(type="voip"), "type"),
        (apns_body(type="APNS"), "type"),
        (apns_body(type=None), "type"),
        (apns_body(token=12345), "token"),
        (apns_body(token=None), "token"),
        (apns_body(token=[LAYER_APNS]), "token"),
        (apns_body(token={"hex": LAYER_APNS}), "token"),
        (apns_body(token=""), "token"),
        (apns_body(token="zz" * 32), "token"),
        (apns_body(token=LAYER_APNS[:-1]), "token"),
        (apns_body(token="0x" + LAYER_APNS), "token"),
        ({"token": "has spaces in it", "type": "gcm", "device_id": "d"}, "token"),
        (apns_body(ios_version="nine"), "ios_version"),
        (apns_body(ios_version="9."), "ios_version"),
        (apns_body(ios_version=9.0), "ios_version"),
        (apns_body(ios_version="\u0669.\u0660"), "ios_version"),
        (apns_body(ios_version="\uff19.\uff10"), "ios_version"),
        (apns_body(ios_version="9.0.1.2"), "ios_version"),
        ({"token": FCM, "type": "gcm", "device_id": "d", "apns_bundle_id": "com.x"},
         "apns_bundle_id"),
        ({"token": FCM, "type": "gcm", "device_id": "d", "ios_version": "9.0"}, "ios_version"),
        (apns_body(gcm_sender_id="1234"), "gcm_sender_id"),
        (apns_body(device_id="dev\x00ice"), "device_id"),
        (apns_body(device_id="dev\nice"), "device_id"),
        (apns_body(device_id="\x1b[31mred"), "device_id"),
        (apns_body(device_id=""), "device_id"),
        (apns_body(device_id="x" * 256), "device_id"),
        (apns_body(device_id=42), "device_id"),
        (apns_body(apns_bundle_id="com.\x07bell"), "apns_bundle_id"),
    ],
    ids=[
        "type-voip",
        "type-uppercase",
        "type-null",
        "token-number",
        "token-null",
        "token-list",
        "token-object",
        "token-empty",
        "apns-not-hex",
        "apns-odd-length",
        "apns-0x-prefix",
        "gcm-with-spaces",
        "ios-version-word",
        "ios-version-trailing-dot",
        "ios-version-number",
        "ios-version-arabic-indic-digits",
        "ios-version-fullwidth-digits",
        "ios-version-four-parts",
        "apns-bundle-with-gcm",
        "ios-version-with-gcm",
        "gcm-sender-with-apns",
        "device-nul",
        "device-newline",
        "device-escape",
        "device-empty",
        "device-too-long",
        "device-number",
        "bundle-control",
    ],
)
async def test_layer_register_with_a_bad_property_is_422_invalid_property(
    client, new_session, db, body, prop
):
    token = await new_session("alice")
    response = await client.post("/push_tokens", json=body, headers=layer_headers(token))
    await layer_error(response, 422, 105, "invalid_property", {"property": prop})
    assert await registrations(db) == []


@pytest.mark.parametrize(
    "device_id",
    ["dev%00ice", "dev%0Aice", "%1B%5B31m"],
    ids=["nul", "newline", "escape"],
)
async def test_layer_unregister_with_control_characters_in_device_id_is_422(
    client, new_session, db, device_id
):
    token = await new_session("alice")
    response = await client.delete(f"/push_tokens/{device_id}", headers=layer_headers(token))
    await layer_error(response, 422, 105, "invalid_property", {"property": "device_id"})


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b'{"token": }', b"[]", b'[{"token": "x"}]', b'"text"', b"null",
     b"42", b"\xff\xfe"],
    ids=["empty", "text", "truncated", "bad-value", "empty-array", "array", "string", "null",
         "number", "not-utf8"],
)
async def test_layer_register_with_a_body_that_is_not_a_json_object_is_400_invalid_request(
    client, new_session, db, body
):
    token = await new_session("alice")
    headers = {**layer_headers(token), "Content-Type": "application/json"}
    response = await client.post("/push_tokens", data=body, headers=headers)
    await layer_error(response, 400, 10, "invalid_request")
    assert await registrations(db) == []


async def test_layer_register_ignores_unknown_properties(client, new_session, db):
    token = await new_session("alice")
    response = await client.post(
        "/push_tokens", json=apns_body(colour="blue"), headers=layer_headers(token)
    )
    assert response.status == 202, await response.text()


async def test_layer_apns_token_is_stored_lower_case(client, new_session, db):
    token = await new_session("alice")
    response = await client.post(
        "/push_tokens", json=apns_body(token=LAYER_APNS.upper()), headers=layer_headers(token)
    )
    assert response.status == 202
    [row] = await registrations(db)
    assert row["token"] == LAYER_APNS


# --- replacement, transfer and the per-user limit ------------------------------------


async def test_layer_registering_again_for_the_same_device_replaces_the_token(
    client, new_session, db
):
    token = await new_session("alice")
    for number in (1, 2):
        response = await client.post(
            "/push_tokens",
            json=apns_body("phone", apns_token(number)),
            headers=layer_headers(token),
        )
        assert response.status == 202
    rows = await registrations(db)
    assert [(r["device_id"], r["token"]) for r in rows] == [("phone", apns_token(2))]


async def test_layer_reregistering_a_device_keeps_created_at_and_advances_updated_at(
    client, new_session, db
):
    token = await new_session("alice")
    response = await client.post(
        "/push_tokens", json=apns_body("phone", apns_token(1)), headers=layer_headers(token)
    )
    assert response.status == 202
    first = await db.fetchrow("SELECT created_at, updated_at FROM registrations")
    response = await client.post(
        "/push_tokens", json=apns_body("phone", apns_token(2)), headers=layer_headers(token)
    )
    assert response.status == 202
    second = await db.fetchrow("SELECT created_at, updated_at FROM registrations")
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]


async def test_layer_same_token_registered_by_another_user_moves_to_them(
    client, new_session, db
):
    alice = await new_session("alice")
    bob = await new_session("bob")
    response = await client.post(
        "/push_tokens", json=apns_body("alice-phone"), headers=layer_headers(alice)
    )
    assert response.status == 202
    response = await client.post(
        "/push_tokens", json=apns_body("bob-phone"), headers=layer_headers(bob)
    )
    assert response.status == 202
    rows = await registrations(db)
    assert [(r["user_id"], r["device_id"], r["token"]) for r in rows] == [
        ("bob", "bob-phone", LAYER_APNS)
    ]


async def test_layer_same_token_moved_to_another_device_of_the_same_user_leaves_the_first(
    client, new_session, db
):
    token = await new_session("alice")
    for device in ("old-phone", "new-phone"):
        response = await client.post(
            "/push_tokens", json=apns_body(device), headers=layer_headers(token)
        )
        assert response.status == 202
    rows = await registrations(db)
    assert [r["device_id"] for r in rows] == ["new-phone"]


async def _register_devices(client, token: str, numbers: list[int]) -> None:
    for number in numbers:
        response = await client.post(
            "/push_tokens",
            json=apns_body(f"dev-{number}", apns_token(number)),
            headers=layer_headers(token),
        )
        assert response.status == 202, await response.text()


async def _devices(db) -> set[str]:
    return {row["device_id"] for row in await registrations(db)}


async def test_layer_26th_registration_evicts_the_least_recently_registered(
    client, new_session, db
):
    token = await new_session("alice")
    await _register_devices(client, token, list(range(1, 27)))
    devices = await _devices(db)
    assert len(devices) == 25
    assert "dev-1" not in devices
    assert {f"dev-{n}" for n in range(2, 27)} == devices


async def test_layer_reregistering_a_device_makes_it_recent_and_changes_who_is_evicted(
    client, new_session, db
):
    token = await new_session("alice")
    await _register_devices(client, token, list(range(1, 26)))
    await _register_devices(client, token, [1])
    await _register_devices(client, token, [26])
    devices = await _devices(db)
    assert len(devices) == 25
    assert "dev-1" in devices
    assert "dev-2" not in devices


async def test_layer_limit_is_per_user(client, new_session, db):
    alice = await new_session("alice")
    bob = await new_session("bob")
    await _register_devices(client, alice, list(range(1, 26)))
    response = await client.post(
        "/push_tokens", json=apns_body("bob-1", apns_token(1000)), headers=layer_headers(bob)
    )
    assert response.status == 202
    assert len(await _devices(db)) == 26


# --- listing ----------------------------------------------------------------------


async def _list(client, token: str) -> list[dict[str, Any]]:
    response = await client.get("/push_tokens", headers=layer_headers(token))
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    body: list[dict[str, Any]] = await response.json()
    return body


async def test_layer_list_shows_the_callers_registrations_from_both_dialects(
    client, new_session, db
):
    layer_session = await new_session("alice")
    navixy_ios = await new_session("alice")
    navixy_web = await new_session("alice")
    stranger = await new_session("mallory")
    keys = subscription_keys()

    response = await client.post(
        "/push_tokens",
        json=apns_body("iphone", apns_bundle_id="com.layer.bundleid", ios_version="9.0"),
        headers=layer_headers(layer_session),
    )
    assert response.status == 202
    response = await client.post(
        "/push_tokens",
        json={"token": FCM, "type": "gcm", "device_id": "pixel", "gcm_sender_id": "42"},
        headers=layer_headers(layer_session),
    )
    assert response.status == 202
    await navixy_ok(
        await navixy(
            client,
            BIND,
            {"hash": navixy_ios, "application": "navixy_iphone_viewer", "token": apns_token(7),
             "category_filter": "chat_message"},
        )
    )
    await navixy_ok(
        await navixy(
            client,
            BIND,
            {"hash": navixy_web, "application": "w3c_pushapi", "token": ENDPOINT,
             "parameters": keys},
        )
    )
    await navixy_ok(
        await navixy(
            client,
            BIND,
            {"hash": stranger, "application": "navixy_android_viewer", "token": NAVIXY_FCM},
        )
    )

    listed = await _list(client, layer_session)
    by_token = {entry["token"]: entry for entry in listed}
    assert set(by_token) == {LAYER_APNS, FCM, apns_token(7), ENDPOINT}
    for entry in listed:
        assert {"token", "type", "device_id", "category_filter", "created_at",
                "updated_at"} <= set(entry)
        assert isinstance(entry["created_at"], str)
        assert isinstance(entry["updated_at"], str)

    assert by_token[LAYER_APNS]["type"] == "apns"
    assert by_token[LAYER_APNS]["device_id"] == "iphone"
    assert by_token[LAYER_APNS]["category_filter"] == "*"
    assert by_token[LAYER_APNS]["apns_bundle_id"] == "com.layer.bundleid"
    assert by_token[LAYER_APNS]["ios_version"] == "9.0"
    assert by_token[FCM]["type"] == "gcm"
    assert by_token[FCM]["device_id"] == "pixel"
    assert by_token[FCM]["gcm_sender_id"] == "42"
    assert by_token[apns_token(7)]["type"] == "apns"
    assert by_token[apns_token(7)]["device_id"] is None
    assert by_token[apns_token(7)]["category_filter"] == "chat_message"
    assert by_token[ENDPOINT]["type"] == "webpush"
    assert by_token[ENDPOINT]["device_id"] is None
    assert by_token[ENDPOINT]["parameters"] == keys

    # Any of the user's sessions sees the same list; another user's does not.
    assert {e["token"] for e in await _list(client, navixy_web)} == set(by_token)
    assert [e["token"] for e in await _list(client, stranger)] == [NAVIXY_FCM]


async def test_layer_list_is_empty_without_registrations(client, new_session, db):
    token = await new_session("alice")
    assert await _list(client, token) == []


async def test_layer_list_drops_an_evicted_registration(client, new_session, db):
    token = await new_session("alice")
    await _register_devices(client, token, list(range(1, 27)))
    listed = await _list(client, token)
    assert len(listed) == 25
    assert "dev-1" not in {entry["device_id"] for entry in listed}


async def test_layer_list_drops_a_pruned_dead_token(client, new_session, db):
    token = await new_session("alice")
    await _register_devices(client, token, [1, 2])
    await navixy_ok(
        await navixy(client, BIND, {"hash": token, "application": "navixy_iphone_viewer",
                                    "token": apns_token(3)})
    )
    store = client.app[EXECUTOR].store
    dead = PruneTokens((DeadToken(Provider.APNS, apns_token(1)),
                        DeadToken(Provider.APNS, apns_token(3))))
    assert await store.prune_tokens(dead) == 2
    assert [entry["token"] for entry in await _list(client, token)] == [apns_token(2)]


async def test_layer_list_drops_a_registration_of_an_expired_or_purged_session(
    client, new_session, db
):
    viewer = await new_session("alice")
    other = await new_session("alice")
    response = await client.post(
        "/push_tokens", json=apns_body("tablet"), headers=layer_headers(other)
    )
    assert response.status == 202
    assert len(await _list(client, viewer)) == 1

    await expire(db, other)
    assert await _list(client, viewer) == []
    assert await client.app[EXECUTOR].store.purge_expired_sessions() == 1
    assert await registrations(db) == []
    assert await _list(client, viewer) == []


# --- sessions, endpoints, methods -----------------------------------------------------


# --- GET /identities/:user_id --------------------------------------------------


async def test_layer_identity_of_the_callers_own_user_is_200_layers_identity_object(
    client, new_session, db
):
    token = await new_session("alice smith/1")
    response = await client.get("/identities/alice%20smith%2F1", headers=layer_headers(token))
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert body == {
        "id": "layer:///identities/alice%20smith%2F1",
        "url": f"http://{response.url.host}:{response.url.port}/identities/alice%20smith%2F1",
        "user_id": "alice smith/1",
        "display_name": "",
        "avatar_url": None,
        "first_name": "",
        "last_name": "",
        "phone_number": "",
        "email_address": "",
        "public_key": "",
        "metadata": {},
        "type": "user",
        "identity_type": "user",
    }


async def test_layer_identity_is_also_served_where_web_xdk_asks_for_it_over_http(
    client, new_session, db
):
    token = await new_session("alice")
    path = "/http://127.0.0.1:9999/identities/alice"
    response = await client.get(path, headers=layer_headers(token))
    assert response.status == 200
    assert (await response.json())["user_id"] == "alice"


async def test_layer_identity_of_another_user_is_404_not_found(client, new_session, db):
    await new_session("bob")
    token = await new_session("alice")
    response = await client.get("/identities/bob", headers=layer_headers(token))
    await layer_error(response, 404, 102, "not_found")


@pytest.mark.parametrize("session", ["none", "unknown", "ended"])
async def test_layer_identity_without_a_live_session_is_401(client, new_session, db, session):
    token = await new_session("alice")
    if session == "ended":
        assert (await client.delete(f"/sessions/{token}", headers=layer_headers())).status == 204
    presented = {"none": None, "unknown": random_hash(), "ended": token}[session]
    response = await client.get("/identities/alice", headers=layer_headers(presented))
    await layer_error(response, 401, 4, "authentication_required")


async def test_layer_identity_without_the_layer_accept_is_406(client, new_session, db):
    token = await new_session("alice")
    headers = layer_headers(token, accept="application/json")
    response = await client.get("/identities/alice", headers=headers)
    await layer_error(response, 406, 107, "invalid_header", {"header": "Accept"})


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH"])
async def test_layer_identity_with_another_method_is_405(client, new_session, db, method):
    token = await new_session("alice")
    response = await client.request(method, "/identities/alice", headers=layer_headers(token))
    await layer_error(response, 405, 109, "method_not_allowed")


async def test_layer_delete_session_is_204_then_401_and_its_registrations_are_gone(
    client, new_session, db
):
    token = await new_session("alice")
    survivor = await new_session("alice")
    response = await client.post("/push_tokens", json=apns_body("a"), headers=layer_headers(token))
    assert response.status == 202
    await navixy_ok(
        await navixy(
            client, BIND, {"hash": token, "application": "navixy_android_viewer",
                           "token": NAVIXY_FCM},
        )
    )
    response = await client.post(
        "/push_tokens",
        json=apns_body("b", apns_token(2)),
        headers=layer_headers(survivor),
    )
    assert response.status == 202

    response = await client.delete(f"/sessions/{token}", headers=layer_headers())
    assert response.status == 204
    assert await response.read() == b""

    rows = await registrations(db)
    assert [(r["device_id"], r["token"]) for r in rows] == [("b", apns_token(2))]
    response = await client.get("/push_tokens", headers=layer_headers(token))
    await layer_error(response, 401, 4, "authentication_required")
    response = await client.delete(f"/sessions/{token}", headers=layer_headers())
    await layer_error(response, 401, 4, "authentication_required")


@pytest.mark.parametrize("path", ["/sessions/not-a-token", f"/sessions/{random_hash()}"])
async def test_layer_delete_of_an_unknown_session_is_401(client, db, path):
    response = await client.delete(path, headers=layer_headers())
    await layer_error(response, 401, 4, "authentication_required")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nothing-here"), ("POST", "/push_token"), ("GET", "/session"),
     ("POST", "/push_tokens/"), ("GET", "/v1/push_tokens")],
)
async def test_layer_unknown_endpoint_is_404_invalid_endpoint(
    client, new_session, db, method, path
):
    token = await new_session("alice")
    response = await client.request(method, path, headers=layer_headers(token))
    await layer_error(response, 404, 106, "invalid_endpoint")


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/push_tokens"), ("PATCH", "/push_tokens"), ("DELETE", "/push_tokens"),
     ("GET", "/push_tokens/dev-1"), ("GET", f"/sessions/{'0' * 32}"), ("GET", "/sessions"),
     ("GET", "/nonces")],
)
async def test_layer_wrong_method_is_405_method_not_allowed(
    client, new_session, db, method, path
):
    token = await new_session("alice")
    response = await client.request(method, path, headers=layer_headers(token))
    await layer_error(response, 405, 109, "method_not_allowed")


async def test_layer_errors_change_nothing(client, new_session, db):
    token = await new_session("alice")
    response = await client.post("/push_tokens", json=apns_body(), headers=layer_headers(token))
    assert response.status == 202
    before = await snapshot(db)
    bad_requests = [
        ("POST", "/push_tokens", apns_body("dev-1", apns_token(9), type="x"), token),
        ("POST", "/push_tokens", apns_body("dev-2", "nothex"), token),
        ("POST", "/push_tokens", apns_body("dev-1", apns_token(9)), random_hash()),
        ("DELETE", "/push_tokens/dev-1", None, random_hash()),
    ]
    for method, path, body, session in bad_requests:
        response = await client.request(method, path, json=body, headers=layer_headers(session))
        assert response.status >= 400
        assert response.content_type == "application/json"
    assert await snapshot(db) == before


async def test_layer_too_large_body_is_413_invalid_request(client, new_session, db):
    token = await new_session("alice")
    body = apns_body(padding="x" * (128 * 1024))
    response = await client.post("/push_tokens", json=body, headers=layer_headers(token))
    await layer_error(response, 413, 10, "invalid_request")
    assert await registrations(db) == []
