"""The hand-written adversarial cases: a table of requests built from the world, each
with the answer it must get (run by test_handwritten.py)."""

from __future__ import annotations

import dataclasses
import gzip
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tests.hostile.harness import (
    APNS,
    BIND,
    DELETE,
    FCM,
    LAYER_ACCEPT,
    LOGOUT,
    MAX_BODY,
    Intent,
    Request,
    World,
)
from tests.hostile.specs import (
    RAW_URLENCODED,
    SQL,
    HashRef,
    LayerSpec,
    NavixySpec,
    Raw,
    json_body,
    multipart,
    mutate,
    urlencoded,
)
from tests.hostile.strategies import AUTH

# --- hand-written adversarial cases ---------------------------------------------------
#
# Each is a request built from the world, and what must come back: ("navixy", code),
# ("layer", status, id), or ("ok",) for a success. The properties (oracle.py) are
# asserted on every one as well.


@dataclass(frozen=True)
class Case:
    build: Any  # (World) -> (Request, Intent)
    expect: tuple[Any, ...]


def _built(spec: NavixySpec | LayerSpec, body: bytes | None, chunked: bool) -> Any:
    """A case's build: the spec resolved against the world, its body replaced (when one is
    given), sent chunked if asked."""

    def build(world: World) -> tuple[Request, Intent]:
        request, intent = spec.build(world)
        if body is not None:
            request = dataclasses.replace(request, body=body)
        if chunked:
            request = dataclasses.replace(request, chunked=True)
        return request, intent

    return build


def navixy_request(
    action: str,
    form: str,
    params: tuple[tuple[str, Any], ...],
    *,
    prefix: str = "/v2",
    slash: str = "",
    body: bytes | None = None,
    content_type: bytes | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    auth: Any = None,
    chunked: bool = False,
) -> Any:
    spec = NavixySpec(
        action=action,
        prefix=prefix,
        slash=slash,
        form=form,
        method="GET" if form == "query" else "POST",
        params=params,
        query=(),
        content_type=content_type,
        auth=auth,
        mutation="none",
        headers=headers,
    )
    return _built(spec, body, chunked)


def _raw(
    method: str,
    target: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
    intent: Intent = Intent(),
    *,
    chunked: bool = False,
) -> Any:
    def build(world: World) -> tuple[Request, Intent]:
        return Request(method, target, headers, body, chunked), intent

    return build


def layer_request(
    route: str,
    fields: tuple[tuple[str, Any], ...] = (),
    *,
    device: Any = None,
    method: str | None = None,
    accept: bytes | None = LAYER_ACCEPT,
    auth: Any = ('Layer session-token="{h}"', HashRef("alice")),
    body: bytes | None = None,
    chunked: bool = False,
) -> Any:
    default = {
        "register": "POST",
        "unregister": "DELETE",
        "list": "GET",
        "end_session": "DELETE",
    }
    spec = LayerSpec(route, method or default[route], device, fields, accept, auth, None, "none")
    return _built(spec, body, chunked)


def _authorized(
    method: str,
    target: bytes,
    value: bytes,
    intent: Intent,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Any:
    """A request whose Authorization header is ``value``, alice's hash in place of {h}."""

    def build(world: World) -> tuple[Request, Intent]:
        authorization = (b"Authorization", value.replace(b"{h}", world.hashes["alice"].encode()))
        return Request(method, target, (*headers, authorization)), intent

    return build


ALICE = HashRef("alice")
ANDROID = (("hash", ALICE), ("application", "navixy_android_viewer"), ("token", FCM))


def android(**overrides: Any) -> tuple[tuple[str, Any], ...]:
    values = dict(ANDROID)
    values.update(overrides)
    return tuple(values.items())


def _webpush(parameters: Any) -> tuple[tuple[str, Any], ...]:
    """Alice's bind of a Web Push endpoint, with ``parameters`` as given."""
    return (
        ("hash", ALICE),
        ("application", "w3c_pushapi"),
        ("token", "https://push.example/x"),
        ("parameters", parameters),
    )


def layer_apns(**overrides: Any) -> tuple[tuple[str, Any], ...]:
    values: dict[str, Any] = {"token": APNS, "type": "apns", "device_id": "hostile-device"}
    values.update(overrides)
    return tuple(values.items())


def _navixy_body(pairs: tuple[tuple[str, Any], ...], value: bytes) -> Any:
    """A JSON bind body whose last member's value is the raw bytes given."""

    def body(world: World) -> bytes:
        head = json_body(pairs, world)
        return head[:-1] + b',"token":' + value + b"}"

    return body


def _altered(build: Any, alter: Any) -> Any:
    """A case's request, changed by ``alter`` after it is built."""

    def wrapped(world: World) -> tuple[Request, Intent]:
        request, intent = build(world)
        return alter(request), intent

    return wrapped


def _with_body(build: Any, body_of: Any) -> Any:
    def wrapped(world: World) -> tuple[Request, Intent]:
        request, intent = build(world)
        return dataclasses.replace(request, body=body_of(world)), intent

    return wrapped


INVALID_UTF8 = {
    "ff": b"\xff\xfe",
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "beyond-unicode": b"\xf4\x90\x80\x80",
    "truncated": b"\xe4\xb8",
}
HUGE_NUMBERS = {"1e309": b"1e309", "-1e309": b"-1e309", "10**400": b"1" + b"0" * 400}
DEEP = b"[" * 10_000 + b"]" * 10_000
LONG = "x" * 60_000
# 10 MB of JSON in about 10 KB: the limit applies to the body as decompressed.
GZIP_BOMB = gzip.compress(b'{"pad":"' + b"x" * 10_000_000 + b'"}', mtime=0)
FORMS3 = ["json", "form", "query"]

CASES: dict[str, Case] = {}

# Invalid UTF-8: raw in a JSON string or a form body is unparseable (5); in a multipart
# field it cannot be decoded (5); percent-escaped in a query or form, it leaves the
# parameters undecodable (5) rather than becoming U+FFFD.
for name, raw in INVALID_UTF8.items():
    CASES[f"navixy-json-token-invalid-utf8-{name}"] = Case(
        _with_body(
            navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], b'"' + raw + b'"')
        ),
        ("navixy", 5),
    )
    CASES[f"navixy-form-body-invalid-utf8-{name}"] = Case(
        _with_body(
            navixy_request(BIND, "form", ANDROID),
            lambda world, raw=raw: urlencoded(android(), world) + b"&token=" + raw,
        ),
        ("navixy", 5),
    )
    CASES[f"layer-json-device-invalid-utf8-{name}"] = Case(
        layer_request(
            "register",
            body=b'{"token":"' + APNS.encode() + b'","type":"apns","device_id":"' + raw + b'"}',
        ),
        ("layer", 400, "invalid_request"),
    )
for escaped in RAW_URLENCODED[:4]:
    label = escaped.decode().replace("%", "")
    CASES[f"navixy-query-hash-escape-{label}"] = Case(
        navixy_request(LOGOUT, "query", (("hash", Raw(RAW_URLENCODED.index(escaped))),)),
        ("navixy", 5),
    )
    CASES[f"navixy-query-token-escape-{label}"] = Case(
        navixy_request(BIND, "query", android(token=Raw(RAW_URLENCODED.index(escaped)))),
        ("navixy", 5),
    )
    CASES[f"navixy-form-category-escape-{label}"] = Case(
        navixy_request(BIND, "form", android(category_filter=Raw(RAW_URLENCODED.index(escaped)))),
        ("navixy", 5),
    )
    CASES[f"layer-delete-path-escape-{label}"] = Case(
        layer_request("unregister", device=Raw(RAW_URLENCODED.index(escaped))), ("ok",)
    )
CASES["navixy-multipart-hash-invalid-utf8"] = Case(
    navixy_request(BIND, "multipart", (("hash", Raw(0)), ("application", "navixy_android_viewer"))),
    ("navixy", 5),
)

# NUL bytes.
CASES["navixy-json-raw-nul-in-string"] = Case(
    _with_body(navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], b'"a\x00b"')),
    ("navixy", 5),
)
CASES["navixy-json-body-trailing-nul"] = Case(
    _with_body(navixy_request(BIND, "json", ANDROID), lambda w: json_body(ANDROID, w) + b"\x00"),
    ("navixy", 5),
)
for form in FORMS3:
    CASES[f"navixy-{form}-nul-token"] = Case(
        navixy_request(BIND, form, android(token="abcdefgh\x00")), ("navixy", 7)
    )
    CASES[f"navixy-{form}-nul-hash"] = Case(
        navixy_request(DELETE, form, (("hash", "\x00" * 32),)), ("navixy", 3)
    )
    CASES[f"navixy-{form}-nul-category"] = Case(
        navixy_request(BIND, form, android(category_filter="chat_message\x00")), ("navixy", 7)
    )
    CASES[f"navixy-{form}-nul-key-ignored"] = Case(
        navixy_request(BIND, form, (*ANDROID, ("\x00", "x"))), ("ok",)
    )
CASES["layer-nul-device-id"] = Case(
    layer_request("register", layer_apns(device_id="a\x00b")), ("layer", 422, "invalid_property")
)
CASES["layer-nul-path-device"] = Case(
    layer_request("unregister", device="a\x00b"), ("layer", 422, "invalid_property")
)
CASES["navixy-json-session-key-smuggled"] = Case(
    navixy_request(BIND, "json", (*ANDROID, ("\x00session", {"token_sha256": "x"}))), ("ok",)
)

# Huge numbers, everywhere a JSON value goes.
for name, number in HUGE_NUMBERS.items():
    CASES[f"navixy-json-hash-{name}"] = Case(
        _with_body(navixy_request(LOGOUT, "json", ()), lambda w, n=number: b'{"hash":' + n + b"}"),
        ("navixy", 5),
    )
    CASES[f"navixy-json-token-{name}"] = Case(
        _with_body(navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], number)),
        ("navixy", 5),
    )
    CASES[f"layer-json-ios-version-{name}"] = Case(
        layer_request(
            "register",
            body=b'{"token":"'
            + APNS.encode()
            + b'","type":"apns","device_id":"d","ios_version":'
            + number
            + b"}",
        ),
        ("layer", 400, "invalid_request"),
    )
    for form in ("query", "form"):
        CASES[f"navixy-{form}-parameters-{name}"] = Case(
            navixy_request(BIND, form, _webpush('{"p256dh":' + number.decode() + ',"auth":"x"}')),
            ("navixy", 7),
        )
CASES["navixy-json-int-beyond-64-bits-as-token"] = Case(
    _with_body(
        navixy_request(BIND, "json", ANDROID[:2]),
        _navixy_body(ANDROID[:2], b"18446744073709551616"),
    ),
    ("navixy", 7),
)

# Deep nesting: 10,000 levels.
CASES["navixy-json-body-deep"] = Case(
    _with_body(navixy_request(BIND, "json", ()), lambda w: DEEP), ("navixy", 5)
)
CASES["navixy-json-token-deep"] = Case(
    _with_body(navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], DEEP)),
    ("navixy", 5),
)
for form in ("form", "multipart"):
    CASES[f"navixy-{form}-parameters-deep"] = Case(
        navixy_request(BIND, form, _webpush(DEEP.decode())), ("navixy", 7)
    )
CASES["layer-json-body-deep"] = Case(
    layer_request("register", body=DEEP), ("layer", 400, "invalid_request")
)
CASES["layer-json-field-deep"] = Case(
    layer_request("register", body=b'{"type":"apns","device_id":"d","token":' + DEEP + b"}"),
    ("layer", 400, "invalid_request"),
)

# Duplicate parameters: an error in the query and the form forms, whichever the value.
for form in ("query", "form"):
    CASES[f"navixy-{form}-duplicate-hash"] = Case(
        navixy_request(DELETE, form, (("hash", ALICE), ("hash", ALICE))), ("navixy", 7)
    )
    CASES[f"navixy-{form}-duplicate-token-differing"] = Case(
        navixy_request(BIND, form, (*ANDROID, ("token", "other-token-123"))), ("navixy", 7)
    )
CASES["navixy-multipart-duplicate-token"] = Case(
    navixy_request(BIND, "multipart", (*ANDROID, ("token", FCM))), ("navixy", 7)
)
CASES["navixy-duplicate-in-query-of-a-post"] = Case(
    _altered(
        navixy_request(BIND, "json", ANDROID),
        lambda request: dataclasses.replace(request, target=request.target + b"?hash=a&hash=b"),
    ),
    ("navixy", 7),
)

# Wrong content types and empty bodies.
for media in [
    b"text/plain",
    b"application/xml",
    b"multipart/form-data",
    b"application/octet-stream",
    b"image/png",
]:
    CASES[f"navixy-content-type-{media.decode().replace('/', '-')}"] = Case(
        navixy_request(BIND, "json", ANDROID, content_type=media), ("navixy", 5)
    )
CASES["navixy-json-as-form"] = Case(
    _with_body(navixy_request(BIND, "form", ANDROID), lambda w: json_body(ANDROID, w)),
    ("navixy", 3),
)
CASES["navixy-form-as-json"] = Case(
    _with_body(navixy_request(BIND, "json", ANDROID), lambda w: urlencoded(ANDROID, w)),
    ("navixy", 5),
)
for form in ("json", "form", "multipart"):
    CASES[f"navixy-{form}-empty-body"] = Case(
        navixy_request(DELETE, form, (), body=b""), ("navixy", 3)
    )
for text in [b"[]", b'"hash"', b"null", b"1", b"{", b" "]:
    CASES[f"navixy-json-body-{text.decode().strip() or 'space'}"] = Case(
        _with_body(navixy_request(DELETE, "json", ()), lambda w, t=text: t), ("navixy", 5)
    )
CASES["layer-json-body-array"] = Case(
    layer_request("register", body=b"[]"), ("layer", 400, "invalid_request")
)
CASES["layer-empty-body"] = Case(
    layer_request("register", body=b""), ("layer", 400, "invalid_request")
)
CASES["layer-empty-object"] = Case(
    layer_request("register", body=b"{}"), ("layer", 422, "missing_property")
)

# Bodies over the limit: Navixy code 9 with HTTP 412, Layer 413; exactly at it is read.
for prefix in ("/v2", ""):
    for form in ("json", "form", "multipart"):
        for chunked in (False, True):
            CASES[
                f"navixy{prefix.replace('/', '-')}-{form}-{'chunked-' if chunked else ''}over-limit"
            ] = Case(
                _with_body(
                    navixy_request(BIND, form, ANDROID, prefix=prefix, chunked=chunked),
                    lambda w, f=form: mutate(
                        {"json": json_body, "form": urlencoded, "multipart": multipart}[f](
                            ANDROID, w
                        ),
                        "oversize",
                    )[0],
                ),
                ("navixy", 9),
            )
CASES["navixy-json-at-limit"] = Case(
    _with_body(
        navixy_request(BIND, "json", ANDROID),
        lambda w: mutate(json_body(ANDROID, w), "oversize")[0][:-1],
    ),
    ("ok",),
)
CASES["navixy-gzip-bomb"] = Case(
    navixy_request(
        BIND,
        "json",
        ANDROID,
        body=GZIP_BOMB,
        headers=((b"Content-Encoding", b"gzip"),),
    ),
    ("navixy", 9),
)
CASES["layer-over-limit"] = Case(
    layer_request("register", body=b'{"pad":"' + b"x" * MAX_BODY + b'"}'),
    ("layer", 413, "invalid_request"),
)
CASES["layer-chunked-over-limit"] = Case(
    layer_request("register", body=b'{"pad":"' + b"x" * MAX_BODY + b'"}', chunked=True),
    ("layer", 413, "invalid_request"),
)
CASES["layer-gzip-bomb"] = Case(
    _altered(
        layer_request("register", layer_apns()),
        lambda request: dataclasses.replace(
            request,
            body=GZIP_BOMB,
            headers=(*request.headers, (b"Content-Encoding", b"gzip")),
        ),
    ),
    ("layer", 413, "invalid_request"),
)

# SQL in every field, in every form: refused where the syntax forbids it, stored as
# plain text where it is a legal value (a Layer device id), and never executed.
for sql in SQL[:3]:
    tag = str(SQL.index(sql))
    for form in FORMS3:
        CASES[f"navixy-{form}-sql{tag}-hash"] = Case(
            navixy_request(DELETE, form, (("hash", sql),)), ("navixy", 3)
        )
        CASES[f"navixy-{form}-sql{tag}-application"] = Case(
            navixy_request(BIND, form, android(application=sql)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-sql{tag}-token"] = Case(
            navixy_request(BIND, form, android(token=sql)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-sql{tag}-category"] = Case(
            navixy_request(BIND, form, android(category_filter=sql)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-sql{tag}-parameters"] = Case(
            navixy_request(BIND, form, _webpush(sql)),
            ("navixy", 7),
        )
        CASES[f"navixy-{form}-sql{tag}-p256dh"] = Case(
            navixy_request(BIND, form, _webpush({"p256dh": sql, "auth": AUTH[0]})),
            ("navixy", 7),
        )
        CASES[f"navixy-{form}-sql{tag}-as-key"] = Case(
            navixy_request(BIND, form, (*ANDROID, (sql, sql))), ("ok",)
        )
    CASES[f"navixy-sql{tag}-authorization"] = Case(
        navixy_request(LOGOUT, "query", (), auth=("NVX " + sql.replace(" ", "_") + "{h}", ALICE)),
        ("navixy", 3),
    )
    CASES[f"layer-sql{tag}-device-id-is-stored"] = Case(
        layer_request("register", layer_apns(device_id=sql)), ("ok",)
    )
    CASES[f"layer-sql{tag}-device-path-deletes"] = Case(
        layer_request("unregister", device=sql), ("ok",)
    )
    for name in ("token", "type", "ios_version"):
        CASES[f"layer-sql{tag}-{name}"] = Case(
            layer_request("register", layer_apns(**{name: sql})),
            ("layer", 422, "invalid_property"),
        )
    CASES[f"layer-sql{tag}-apns-bundle-id-is-stored"] = Case(
        layer_request("register", layer_apns(apns_bundle_id=sql)), ("ok",)
    )
    CASES[f"layer-sql{tag}-gcm-sender"] = Case(
        layer_request(
            "register",
            (("token", FCM), ("type", "gcm"), ("device_id", "d"), ("gcm_sender_id", sql)),
        ),
        ("ok",) if "\x00" not in sql else ("layer", 422, "invalid_property"),
    )
    CASES[f"layer-sql{tag}-authorization"] = Case(
        layer_request("list", auth=(f'Layer session-token="{sql}"' + "{h}", ALICE)),
        ("layer", 401, "authentication_required"),
    )
    CASES[f"layer-sql{tag}-session-path"] = Case(
        _raw("DELETE", b"/sessions/" + quote(sql, safe="").encode(), ((b"Accept", LAYER_ACCEPT),)),
        ("layer", 401, "authentication_required"),
    )

# Absurdly long strings.
for form in ("json", "form", "multipart"):
    CASES[f"navixy-{form}-long-token"] = Case(
        navixy_request(BIND, form, android(token=LONG)), ("navixy", 7)
    )
    CASES[f"navixy-{form}-long-hash"] = Case(
        navixy_request(DELETE, form, (("hash", LONG),)), ("navixy", 3)
    )
    CASES[f"navixy-{form}-long-category"] = Case(
        navixy_request(BIND, form, android(category_filter=LONG)), ("navixy", 7)
    )
    if form != "multipart":  # a part header line over 8190 bytes: in test_pinned.py
        CASES[f"navixy-{form}-long-key-ignored"] = Case(
            navixy_request(BIND, form, (*ANDROID, ("k" * 50_000, "v"))), ("ok",)
        )
CASES["navixy-query-long-token"] = Case(
    navixy_request(BIND, "query", android(token="x" * 7_000)), ("navixy", 7)
)
CASES["navixy-long-authorization"] = Case(
    navixy_request(LOGOUT, "query", (), headers=((b"Authorization", b"NVX " + b"a" * 7_000),)),
    ("navixy", 3),
)
for name in ("token", "device_id", "apns_bundle_id", "ios_version"):
    CASES[f"layer-long-{name}"] = Case(
        layer_request("register", layer_apns(**{name: LONG})), ("layer", 422, "invalid_property")
    )
CASES["layer-long-path-device"] = Case(
    layer_request("unregister", device="d" * 5_000), ("layer", 422, "invalid_property")
)
CASES["layer-long-authorization"] = Case(
    layer_request("list", auth=b'Layer session-token="' + b"a" * 7_000 + b'"'),
    ("layer", 401, "authentication_required"),
)
CASES["layer-long-accept"] = Case(
    layer_request("list", accept=b"application/vnd.layer+json; version=" + b"1" * 7_000),
    ("layer", 406, "invalid_header"),
)

# Unicode: legal where an identifier is opaque, refused where the syntax is ASCII.
for sample in [
    "日本語",
    "\U0001f4f1 phone",
    "\u202eevil",
    "e\u0301",
    "\uffff",
    "\u0660\u0661\u0662",
]:
    tag = sample.encode("unicode_escape").decode().replace("\\", "")
    for form in FORMS3:
        CASES[f"navixy-{form}-unicode-token-{tag}"] = Case(
            navixy_request(BIND, form, android(token=FCM + sample)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-unicode-category-{tag}"] = Case(
            navixy_request(BIND, form, android(category_filter="chat_message" + sample)),
            ("navixy", 7),
        )
    CASES[f"layer-unicode-device-{tag}"] = Case(
        layer_request("register", layer_apns(device_id=sample)), ("ok",)
    )
    CASES[f"layer-unicode-path-device-{tag}"] = Case(
        layer_request("unregister", device=sample), ("ok",)
    )
    CASES[f"layer-unicode-ios-version-{tag}"] = Case(
        layer_request("register", layer_apns(ios_version=sample)),
        ("layer", 422, "invalid_property"),
    )
CASES["navixy-unicode-digits-apns"] = Case(
    navixy_request(BIND, "json", android(application="navixy_iphone_viewer", token="\u0661" * 64)),
    ("navixy", 7),
)

# Weird Authorization headers.
for i, value in enumerate(
    [
        b"NVX",
        b"NVX ",
        b"nvx {h}",
        b"NVX  {h}",
        b"NVX {h} x",
        b"Bearer {h}",
        b"{h}",
        b"NVX \xff\xfe",
        b"NVX {h}\xff",
        b"NVX\t{h}",
        b"Basic Zm9vOmJhcg==",
    ]
):
    CASES[f"navixy-authorization-{i}"] = Case(
        _authorized("GET", f"/v2/{LOGOUT}".encode(), value, Intent("logout")), ("navixy", 3)
    )
CASES["navixy-authorization-valid-header-wins-nothing-over-bad-body-hash"] = Case(
    navixy_request(LOGOUT, "json", (("hash", "nothex"),), auth=("NVX {h}", ALICE)), ("navixy", 3)
)
CASES["navixy-authorization-unknown-session"] = Case(
    navixy_request(LOGOUT, "query", (), auth=("NVX {h}", HashRef("unknown"))), ("navixy", 4)
)
for i, value in enumerate(
    [
        b"Layer",
        b'Layer session-token=""',
        b"Layer session-token={h}",
        b'Layer session-token="{h}',
        b'Layer session-token="{h}" x',
        b"Bearer {h}",
        b'Layer session-token="\xff\xfe"',
        b'Layer session-token="{h}\xff"',
        b"{h}",
        b'Layer session_token="{h}"',
    ]
):
    CASES[f"layer-authorization-{i}"] = Case(
        _authorized("GET", b"/push_tokens", value, Intent("list"), ((b"Accept", LAYER_ACCEPT),)),
        ("layer", 401, "authentication_required"),
    )
CASES["layer-authorization-unknown-session"] = Case(
    layer_request("register", layer_apns(), auth=('Layer session-token="{h}"', HashRef("unknown"))),
    ("layer", 401, "authentication_required"),
)
for i, value in enumerate(
    [
        b"",
        b"application/json",
        b"application/vnd.layer+json",
        b"application/vnd.layer+json; version=4.0",
        b"application/vnd.layer+json; version=1.0\xff",
        b"\xff\xfe",
    ]
):
    CASES[f"layer-accept-{i}"] = Case(
        layer_request("list", accept=value), ("layer", 406, "invalid_header")
    )

# Methods and paths.
for prefix in ("/v2", ""):
    for slash in ("", "/"):
        for method in ["PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"]:
            CASES[f"navixy{prefix.replace('/', '-')}{'-slash' if slash else ''}-{method}"] = Case(
                _raw(method, f"{prefix}/{LOGOUT}{slash}".encode()), ("navixy", 112)
            )
for path in [
    "/v2",
    "/v2/",
    "/v2/user",
    "/v2/user/x",
    "/user/x",
    "/v2/user/session/push_token",
    "/v2/user/logout/..",
    "/user/" + "x" * 3_000,
]:
    CASES[f"navixy-unknown-action-{path[:30]}"] = Case(_raw("GET", path.encode()), ("navixy", 111))
for method, path, status, error in [
    ("PUT", "/push_tokens", 405, "method_not_allowed"),
    ("DELETE", "/push_tokens", 405, "method_not_allowed"),
    ("PATCH", "/push_tokens/x", 405, "method_not_allowed"),
    ("GET", "/push_tokens/", 404, "invalid_endpoint"),
    ("GET", "/V2/user/logout", 404, "invalid_endpoint"),
    ("GET", "/user", 404, "invalid_endpoint"),
    ("GET", "//v2/user/logout", 404, "invalid_endpoint"),
    ("POST", "/", 404, "invalid_endpoint"),
    ("HEAD", "/push_tokens", 405, "method_not_allowed"),
]:
    CASES[f"layer-{method}-{path}"] = Case(
        _raw(method, path.encode(), ((b"Accept", LAYER_ACCEPT),)), ("layer", status, error)
    )
