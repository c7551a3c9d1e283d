"""The Navixy surface: action paths, three request forms, the hash, the envelope."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import (
    BIND,
    DELETE,
    ENDPOINT,
    FORMS,
    LOGOUT,
    NAVIXY_FCM,
    apns_token,
    b64url,
    compressed_point,
    expire,
    navixy,
    navixy_error,
    navixy_ok,
    off_curve_point,
    random_hash,
    registrations,
    session_id,
    snapshot,
    subscription_keys,
)

PREFIXES = ["/v2", ""]
SLASHES = ["", "/"]


def android(hash_: str, token: str = NAVIXY_FCM, **extra: Any) -> dict[str, Any]:
    return {"hash": hash_, "application": "navixy_android_viewer", "token": token, **extra}


def webpush(hash_: str, keys: Any, token: str = ENDPOINT) -> dict[str, Any]:
    params = {"hash": hash_, "application": "w3c_pushapi", "token": token}
    if keys is not None:
        params["parameters"] = keys
    return params


async def sessions_alive(db) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM sessions WHERE expires_at > now()")
    return count


# --- the page's examples ------------------------------------------------------------


async def test_navixy_page_bind_example_verbatim_succeeds_and_stores_the_binding(
    client, new_session, db
):
    hash_ = await new_session("alice")
    body = (
        '{"hash": "22eac1c27af4be7b9d04da2ce1af111b", "application": "navixy_android_viewer", '
        '"token": "f4be7b9d04da2ce1af111b"}'
    ).replace("22eac1c27af4be7b9d04da2ce1af111b", hash_)
    response = await client.post(
        "/v2/user/session/push_token/bind",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    await navixy_ok(response)
    [row] = await registrations(db)
    assert row["user_id"] == "alice"
    assert row["session_id"] == await session_id(db, hash_)
    assert (row["provider"], row["token"], row["device_id"]) == ("fcm", NAVIXY_FCM, None)
    assert row["category_filter"] == "*"


async def test_navixy_page_delete_example_as_post_json_verbatim_removes_the_binding(
    client, new_session, db
):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(hash_)))
    body = '{"hash": "22eac1c27af4be7b9d04da2ce1af111b"}'.replace(
        "22eac1c27af4be7b9d04da2ce1af111b", hash_
    )
    response = await client.post(
        "/v2/user/session/push_token/delete",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    await navixy_ok(response)
    assert await registrations(db) == []


async def test_navixy_page_delete_example_as_http_get_verbatim_removes_the_binding(
    client, new_session, db
):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(hash_)))
    url = "/v2/user/session/push_token/delete?hash=a6aa75587e5c59c32d347da438505fc3"
    response = await client.get(url.replace("a6aa75587e5c59c32d347da438505fc3", hash_))
    await navixy_ok(response)
    assert await registrations(db) == []


# --- every action in every form, at every path ---------------------------------------


@pytest.mark.parametrize("slash", SLASHES, ids=["no-slash", "slash"])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["v2", "bare"])
@pytest.mark.parametrize("form", FORMS)
async def test_navixy_bind_succeeds_in_every_form_and_path(
    client, new_session, db, form, prefix, slash
):
    hash_ = await new_session("alice")
    response = await navixy(client, BIND, android(hash_), form, prefix=prefix, slash=slash)
    await navixy_ok(response)
    rows = await registrations(db)
    assert [(r["provider"], r["token"], r["device_id"]) for r in rows] == [
        ("fcm", NAVIXY_FCM, None)
    ]


@pytest.mark.parametrize("slash", SLASHES, ids=["no-slash", "slash"])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["v2", "bare"])
@pytest.mark.parametrize("form", FORMS)
async def test_navixy_delete_succeeds_in_every_form_and_path(
    client, new_session, db, form, prefix, slash
):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(hash_)))
    response = await navixy(client, DELETE, {"hash": hash_}, form, prefix=prefix, slash=slash)
    await navixy_ok(response)
    assert await registrations(db) == []
    assert await sessions_alive(db) == 1


@pytest.mark.parametrize("slash", SLASHES, ids=["no-slash", "slash"])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["v2", "bare"])
@pytest.mark.parametrize("form", FORMS)
async def test_navixy_logout_succeeds_in_every_form_and_path(
    client, new_session, db, form, prefix, slash
):
    hash_ = await new_session("alice")
    response = await navixy(client, LOGOUT, {"hash": hash_}, form, prefix=prefix, slash=slash)
    await navixy_ok(response)
    assert await sessions_alive(db) == 0


# --- Web Push -------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_navixy_w3c_pushapi_with_a_real_subscription_is_stored_in_every_form(
    client, new_session, db, form
):
    hash_ = await new_session("alice")
    keys = subscription_keys()
    await navixy_ok(await navixy(client, BIND, webpush(hash_, keys), form))
    [row] = await registrations(db)
    assert row["provider"] == "webpush"
    assert row["token"] == ENDPOINT
    assert row["webpush_p256dh"] == keys["p256dh"]
    assert row["webpush_auth"] == keys["auth"]


async def test_navixy_w3c_pushapi_keys_are_stored_without_base64_padding(
    client, new_session, db
):
    hash_ = await new_session("alice")
    keys = subscription_keys()
    padded = {"p256dh": keys["p256dh"] + "=", "auth": keys["auth"] + "=="}
    await navixy_ok(await navixy(client, BIND, webpush(hash_, padded)))
    [row] = await registrations(db)
    assert (row["webpush_p256dh"], row["webpush_auth"]) == (keys["p256dh"], keys["auth"])


def _bad_subscriptions() -> list[Any]:
    keys = subscription_keys()
    return [
        pytest.param("w3c_pushapi", ENDPOINT, None, "parameters", id="missing-parameters"),
        pytest.param(
            "navixy_android_viewer", NAVIXY_FCM, keys, "parameters", id="parameters-with-android"
        ),
        pytest.param(
            "navixy_iphone_viewer", apns_token(1), keys, "parameters", id="parameters-with-iphone"
        ),
        pytest.param(
            "w3c_pushapi", "http://push.example.com/send/abc", keys, "token", id="http-endpoint"
        ),
        pytest.param("w3c_pushapi", "not a url", keys, "token", id="not-a-url"),
        pytest.param(
            "w3c_pushapi",
            ENDPOINT,
            {**keys, "p256dh": b64url(off_curve_point())},
            "parameters.p256dh",
            id="off-curve-p256dh",
        ),
        pytest.param(
            "w3c_pushapi",
            ENDPOINT,
            {**keys, "p256dh": b64url(compressed_point())},
            "parameters.p256dh",
            id="compressed-p256dh",
        ),
        pytest.param(
            "w3c_pushapi",
            ENDPOINT,
            {**keys, "auth": b64url(b"\x01" * 15)},
            "parameters.auth",
            id="short-auth",
        ),
        pytest.param(
            "w3c_pushapi", ENDPOINT, {"auth": keys["auth"]}, "parameters.p256dh", id="no-p256dh"
        ),
        pytest.param(
            "w3c_pushapi", ENDPOINT, {"p256dh": keys["p256dh"]}, "parameters.auth", id="no-auth"
        ),
        pytest.param("w3c_pushapi", ENDPOINT, "{not json", "parameters", id="parameters-not-json"),
        pytest.param("w3c_pushapi", ENDPOINT, [keys], "parameters", id="parameters-list"),
        pytest.param("w3c_push", ENDPOINT, keys, "application", id="unknown-application"),
    ]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("application", "token", "keys", "parameter"), _bad_subscriptions())
async def test_navixy_bind_with_bad_subscription_is_code_7_naming_the_parameter(
    client, new_session, db, form, application, token, keys, parameter
):
    hash_ = await new_session("alice")
    params = {"hash": hash_, "application": application, "token": token}
    if keys is not None:
        params["parameters"] = keys
    body = await navixy_error(await navixy(client, BIND, params, form), 7)
    assert isinstance(body["errors"], list)
    for error in body["errors"]:
        assert set(error) == {"parameter", "error"}
        assert isinstance(error["error"], str)
        assert error["error"]
    assert parameter in [error["parameter"] for error in body["errors"]]
    assert await registrations(db) == []


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"token": NAVIXY_FCM}, "application"),
        ({"application": "navixy_android_viewer"}, "token"),
        ({"application": "navixy_iphone_viewer", "token": "not-hex-at-all-but-long-enough"},
         "token"),
        ({"application": "navixy_android_viewer", "token": "bad token!"}, "token"),
    ],
    ids=["no-application", "no-token", "iphone-not-hex", "android-bad-characters"],
)
@pytest.mark.parametrize("form", FORMS)
async def test_navixy_bind_with_missing_or_bad_token_is_code_7(
    client, new_session, db, form, params, parameter
):
    hash_ = await new_session("alice")
    body = await navixy_error(await navixy(client, BIND, {"hash": hash_, **params}, form), 7)
    assert parameter in [error["parameter"] for error in body["errors"]]


# --- category_filter -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (None, "*"),
        ("*", "*"),
        ("chat_message,history_rule", "chat_message,history_rule"),
        ("history_rule,chat_message", "chat_message,history_rule"),
        ("-history_task,history_rule", "-history_rule,history_task"),
        ("history_work_status", "history_work_status"),
    ],
    ids=["default", "star", "sorted", "unsorted", "exclusion", "single"],
)
@pytest.mark.parametrize("form", FORMS)
async def test_navixy_category_filter_is_stored_normalised(
    client, new_session, db, form, given, stored
):
    hash_ = await new_session("alice")
    params = android(hash_)
    if given is not None:
        params["category_filter"] = given
    await navixy_ok(await navixy(client, BIND, params, form))
    [row] = await registrations(db)
    assert row["category_filter"] == stored


@pytest.mark.parametrize(
    "category_filter",
    ["chat_message,unknown_thing", "-bogus", "", "chat_message,,history_rule", "*,chat_message",
     "chat_message,-history_rule"],
    ids=["unknown", "unknown-excluded", "empty", "empty-item", "star-in-list", "inner-minus"],
)
async def test_navixy_bad_category_filter_is_code_7_naming_category_filter(
    client, new_session, db, category_filter
):
    hash_ = await new_session("alice")
    params = android(hash_, category_filter=category_filter)
    body = await navixy_error(await navixy(client, BIND, params), 7)
    assert [error["parameter"] for error in body["errors"]] == ["category_filter"]
    assert await registrations(db) == []


# --- the hash ---------------------------------------------------------------------------


async def _bound_user(db) -> str:
    [row] = await registrations(db)
    user: str = row["user_id"]
    return user


async def _bind_with_hashes_in_body_and_query(client, new_session, body: str):
    """A bind by body-user's hash in the body (``json`` or ``data``), query-user's in the query."""
    body_hash = await new_session("body-user")
    query_hash = await new_session("query-user")
    return await client.post(
        f"/v2/{BIND}", params={"hash": query_hash}, **{body: android(body_hash)}
    )


async def test_navixy_hash_in_the_body_wins_over_the_query_string(client, new_session, db):
    response = await _bind_with_hashes_in_body_and_query(client, new_session, "json")
    await navixy_ok(response)
    assert await _bound_user(db) == "body-user"


async def test_navixy_hash_in_the_form_body_wins_over_the_query_string(client, new_session, db):
    response = await _bind_with_hashes_in_body_and_query(client, new_session, "data")
    await navixy_ok(response)
    assert await _bound_user(db) == "body-user"


async def test_navixy_hash_in_the_query_string_wins_over_the_header(client, new_session, db):
    query_hash = await new_session("query-user")
    header_hash = await new_session("header-user")
    params = {"application": "navixy_android_viewer", "token": NAVIXY_FCM, "hash": query_hash}
    response = await client.get(
        f"/v2/{BIND}", params=params, headers={"Authorization": f"NVX {header_hash}"}
    )
    await navixy_ok(response)
    assert await _bound_user(db) == "query-user"


@pytest.mark.parametrize("form", FORMS)
async def test_navixy_hash_from_the_nvx_authorization_header_alone_is_used(
    client, new_session, db, form
):
    header_hash = await new_session("header-user")
    params = {"application": "navixy_android_viewer", "token": NAVIXY_FCM}
    response = await navixy(
        client, BIND, params, form, headers={"Authorization": f"NVX {header_hash}"}
    )
    await navixy_ok(response)
    assert await _bound_user(db) == "header-user"


async def test_navixy_a_malformed_body_hash_is_not_replaced_by_the_query_hash(
    client, new_session, db
):
    query_hash = await new_session("query-user")
    response = await client.post(
        f"/v2/{BIND}", params={"hash": query_hash}, json=android("not-a-hash")
    )
    await navixy_error(response, 3)
    assert await registrations(db) == []


@pytest.mark.parametrize("action", [BIND, DELETE, LOGOUT])
@pytest.mark.parametrize("form", FORMS)
async def test_navixy_missing_hash_is_code_3(client, new_session, db, action, form):
    await new_session("alice")
    params = android("x") if action == BIND else {}
    params.pop("hash", None)
    await navixy_error(await navixy(client, action, params, form), 3, status=400)


@pytest.mark.parametrize(
    "bad_hash",
    ["0" * 31, "0" * 33, "g" * 32, "", " " + "0" * 31, "0123456789abcdef0123456789abcde\n"],
    ids=["31-chars", "33-chars", "non-hex", "empty", "leading-space", "trailing-newline"],
)
@pytest.mark.parametrize("action", [BIND, DELETE, LOGOUT])
async def test_navixy_malformed_hash_is_code_3(client, db, action, bad_hash):
    params = android(bad_hash) if action == BIND else {"hash": bad_hash}
    await navixy_error(await navixy(client, action, params), 3)


@pytest.mark.parametrize(
    "authorization",
    ["NVX", "NVX ", "NVX  {}", "Bearer {}", "nvx {}", "NVX {}x", "{}"],
    ids=["scheme-only", "empty", "two-spaces", "bearer", "lowercase", "too-long", "bare"],
)
async def test_navixy_malformed_authorization_header_is_code_3(
    client, new_session, db, authorization
):
    hash_ = await new_session("alice")
    params = {"application": "navixy_android_viewer", "token": NAVIXY_FCM}
    response = await navixy(
        client, BIND, params, headers={"Authorization": authorization.format(hash_)}
    )
    await navixy_error(response, 3)
    assert await registrations(db) == []


@pytest.mark.parametrize("action", [BIND, DELETE, LOGOUT])
async def test_navixy_unknown_session_is_code_4(client, db, action):
    hash_ = random_hash()
    params = android(hash_) if action == BIND else {"hash": hash_}
    await navixy_error(await navixy(client, action, params), 4, status=400)


@pytest.mark.parametrize("action", [BIND, DELETE, LOGOUT])
async def test_navixy_expired_session_is_code_4(client, new_session, db, action):
    hash_ = await new_session("alice")
    await expire(db, hash_)
    params = android(hash_) if action == BIND else {"hash": hash_}
    await navixy_error(await navixy(client, action, params), 4)
    assert await registrations(db) == []


@pytest.mark.parametrize("action", [BIND, DELETE, LOGOUT])
async def test_navixy_logged_out_session_is_code_4(client, new_session, db, action):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, LOGOUT, {"hash": hash_}))
    params = android(hash_) if action == BIND else {"hash": hash_}
    await navixy_error(await navixy(client, action, params), 4)
    assert await registrations(db) == []


async def test_navixy_hash_is_case_insensitive(client, new_session, db):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(hash_.upper())))
    assert await _bound_user(db) == "alice"


# --- malformed requests, unknown actions, wrong methods --------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b'{"hash": }', b"[]", b'["hash"]', b'"text"', b"null", b"\xff"],
    ids=["truncated", "text", "bad-value", "empty-array", "array", "string", "null", "not-utf8"],
)
@pytest.mark.parametrize("action", [BIND, DELETE, LOGOUT])
async def test_navixy_unparseable_json_body_is_code_5(client, new_session, db, action, body):
    hash_ = await new_session("alice")
    response = await client.post(
        f"/v2/{action}",
        params={"hash": hash_},
        data=body,
        headers={"Content-Type": "application/json"},
    )
    await navixy_error(response, 5)
    assert await sessions_alive(db) == 1


async def test_navixy_body_of_an_unsupported_content_type_is_code_5(client, new_session, db):
    hash_ = await new_session("alice")
    response = await client.post(
        f"/v2/{BIND}", data=b"hash=" + hash_.encode(), headers={"Content-Type": "text/plain"}
    )
    await navixy_error(response, 5)


@pytest.mark.parametrize(
    "path",
    ["/v2/user/foo", "/user/foo", "/v2/user/session/push_token/list", "/v2/", "/v2",
     "/v2/user/session/push_token", "/user/session/push_token/bind/extra"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_navixy_unknown_action_is_code_111(client, new_session, db, path, method):
    hash_ = await new_session("alice")
    response = await client.request(method, path, params={"hash": hash_})
    await navixy_error(response, 111)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("action", [BIND, DELETE, LOGOUT])
@pytest.mark.parametrize("prefix", PREFIXES, ids=["v2", "bare"])
@pytest.mark.parametrize("slash", SLASHES, ids=["no-slash", "slash"])
async def test_navixy_wrong_method_on_a_known_action_is_code_112(
    client, new_session, db, method, action, prefix, slash
):
    hash_ = await new_session("alice")
    response = await client.request(
        method, f"{prefix}/{action}{slash}", params=android(hash_) if action == BIND else {}
    )
    await navixy_error(response, 112)
    assert await registrations(db) == []
    assert await sessions_alive(db) == 1


@pytest.mark.parametrize("name", ["hash", "token", "application"])
async def test_navixy_duplicate_query_parameter_is_code_7(client, new_session, db, name):
    hash_ = await new_session("alice")
    params = [*android(hash_).items(), (name, android(hash_)[name])]
    response = await client.get(f"/v2/{BIND}", params=params)
    body = await navixy_error(response, 7)
    assert [error["parameter"] for error in body["errors"]] == [name]
    assert await registrations(db) == []


async def test_navixy_duplicate_form_parameter_is_code_7(client, new_session, db):
    hash_ = await new_session("alice")
    data = [*android(hash_).items(), ("token", "other-token-1234")]
    response = await client.post(f"/v2/{BIND}", data=data)
    body = await navixy_error(response, 7)
    assert [error["parameter"] for error in body["errors"]] == ["token"]


# --- bind, delete, logout semantics ----------------------------------------------------------


async def test_navixy_second_bind_on_a_session_replaces_the_first(client, new_session, db):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(hash_, "first-token-123")))
    await navixy_ok(
        await navixy(
            client, BIND, {"hash": hash_, "application": "navixy_iphone_viewer",
                           "token": apns_token(5)},
        )
    )
    rows = await registrations(db)
    assert [(r["provider"], r["token"]) for r in rows] == [("apns", apns_token(5))]


async def test_navixy_bindings_of_two_sessions_of_one_user_coexist(client, new_session, db):
    first = await new_session("alice")
    second = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(first, "token-of-first")))
    await navixy_ok(await navixy(client, BIND, android(second, "token-of-second")))
    assert {r["token"] for r in await registrations(db)} == {"token-of-first", "token-of-second"}
    await navixy_ok(await navixy(client, DELETE, {"hash": first}))
    assert [r["token"] for r in await registrations(db)] == ["token-of-second"]


async def test_navixy_delete_with_nothing_bound_succeeds(client, new_session, db):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, DELETE, {"hash": hash_}))
    await navixy_ok(await navixy(client, DELETE, {"hash": hash_}))
    assert await sessions_alive(db) == 1


async def test_navixy_logout_ends_the_session_and_removes_its_binding(client, new_session, db):
    hash_ = await new_session("alice")
    other = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(hash_, "token-of-first")))
    await navixy_ok(await navixy(client, BIND, android(other, "token-of-other")))
    await navixy_ok(await navixy(client, LOGOUT, {"hash": hash_}))
    assert [r["token"] for r in await registrations(db)] == ["token-of-other"]
    await navixy_error(await navixy(client, BIND, android(hash_, "token-of-first")), 4)
    await navixy_error(await navixy(client, LOGOUT, {"hash": hash_}), 4)


async def test_navixy_errors_change_nothing(client, new_session, db):
    hash_ = await new_session("alice")
    await navixy_ok(await navixy(client, BIND, android(hash_)))
    before = await snapshot(db)
    bad = [
        (BIND, android(hash_, "bad token!")),
        (BIND, android(hash_, category_filter="nope")),
        (BIND, webpush(hash_, None)),
        (BIND, android(random_hash(), "fresh-token-1")),
        (DELETE, {"hash": random_hash()}),
        (LOGOUT, {"hash": "0" * 31}),
    ]
    for action, params in bad:
        response = await navixy(client, action, params)
        assert response.status == 400
        assert response.content_type == "application/json"
    assert await snapshot(db) == before


@pytest.mark.parametrize("form", ["json", "form"])
async def test_navixy_too_large_body_is_code_9_http_412(client, new_session, db, form):
    hash_ = await new_session("alice")
    params = android(hash_, padding="x" * (128 * 1024))
    await navixy_error(await navixy(client, BIND, params, form), 9, status=412)
    assert await registrations(db) == []


async def test_navixy_null_hash_in_the_body_falls_back_to_the_query_string(client, new_session):
    token = await new_session("nora")
    response = await client.post(
        "/v2/user/session/push_token/delete", params={"hash": token}, json={"hash": None}
    )
    assert response.status == 200
    assert await response.json() == {"success": True}
