"""Hypothesis strategies: hostile values, Navixy and Layer request specs, and requests
of any shape at all; ``FUZZ``, the settings every property test runs with."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.hostile.harness import APNS, BIND, DELETE, LAYER_ACCEPT, LOGOUT, SEED_DEVICES, Request
from tests.hostile.specs import (
    MEDIA_TYPES,
    RAW_JSON,
    SQL,
    WEIRD,
    HashRef,
    LayerSpec,
    NavixySpec,
    Raw,
    urlencoded,
)

# --- strategies -----------------------------------------------------------------------


def _point(secret: int) -> str:
    key = ec.derive_private_key(secret, ec.SECP256R1()).public_key()
    raw = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


P256DH = [_point(n) for n in (3, 5, 7)]
AUTH = ["AAECAwQFBgcICQoLDA0ODw", "EBESExQVFhcYGRobHB0eHw=="]

hostile_text = st.one_of(
    st.sampled_from(SQL + WEIRD),
    st.text(max_size=30),
    st.text(st.characters(max_codepoint=0xA0), min_size=1, max_size=12),  # C0, DEL and C1 controls
    st.integers(256, 3000).map(lambda n: "x" * n),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=6,
)
raws = st.integers(0, 10_000).map(Raw)
hash_refs = st.builds(
    HashRef,
    st.sampled_from(["alice", "alice", "bob", "unknown"]),
    st.sampled_from(["plain", "plain", "plain", "upper", "short", "padded", "doubled"]),
)
apns_tokens = st.binary(min_size=16, max_size=100).map(bytes.hex)
fcm_tokens = st.from_regex(r"[A-Za-z0-9_:-]{8,64}", fullmatch=True)
endpoints = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~/", min_size=1, max_size=30
).map(lambda path: f"https://push.example/{path}")
push_tokens = st.one_of(
    apns_tokens, fcm_tokens, endpoints, st.sampled_from(sorted(SEED_DEVICES.values()))
)


def push_tokens_of_every_kind() -> list[str]:
    """Valid tokens of each provider, to put where another kind belongs."""
    return [
        APNS,
        APNS.upper(),
        "fcm-token:abc_DEF-123",
        "https://push.example/x",
        "http://push.example/x",
        "https://user@push.example/x",
        "https://push.example:abc/",
    ]


device_ids = st.one_of(
    st.sampled_from(sorted(SEED_DEVICES)),
    st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=20),
    st.sampled_from(SQL),
)


def chance(draw: st.DrawFn, n: int) -> bool:
    """True about once in n draws. Hypothesis favours the first of sampled_from's
    elements (and 0 among integers), so the rare outcome goes last."""
    return bool(draw(st.sampled_from([False] * (n - 1) + [True])))


def field_values(valid: st.SearchStrategy[Any], raw: bool = True) -> st.SearchStrategy[Any]:
    options = [valid, valid, hostile_text, json_values]
    if raw:
        options.append(raws)
    return st.one_of(*options)


NAVIXY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "hash": field_values(hash_refs),
    "application": field_values(
        st.sampled_from(["navixy_android_viewer", "navixy_iphone_viewer", "w3c_pushapi"])
    ),
    "token": field_values(push_tokens),
    "category_filter": field_values(
        st.sampled_from(
            ["*", "chat_message", "-history_rule,chat_message", " history_task , history_info "]
        )
    ),
    "parameters": field_values(
        st.fixed_dictionaries({"p256dh": st.sampled_from(P256DH), "auth": st.sampled_from(AUTH)})
    ),
    "\x00session": json_values,  # where the surface keeps the session it read
}
navixy_pairs = st.lists(
    st.one_of(
        st.sampled_from(sorted(NAVIXY_FIELDS)).flatmap(
            lambda name: st.tuples(st.just(name), NAVIXY_FIELDS[name])
        ),
        st.tuples(
            st.one_of(st.sampled_from(SQL), st.text(max_size=10)), field_values(hostile_text)
        ),
    ),
    max_size=7,
).map(tuple)

NAVIXY_AUTH = ["NVX {h}", "NVX {h}", "NVX  {h}", "nvx {h}", "NVX", "NVX {h} x", "Bearer {h}", "{h}"]
LAYER_AUTH = [
    'Layer session-token="{h}"',
    'Layer session-token="{h}"',
    "Layer session-token='{h}'",
    'layer  SESSION-TOKEN = "{h}" ',
    "Layer session-token={h}",
    'Layer session-token="{h}',
    'Bearer "{h}"',
    'Layer session-token="{h}", realm="x"',
    'Layer session-token=""',
]
# Header values the HTTP parser lets through: visible ASCII, space, tab and obs-text.
header_values = st.one_of(
    st.sampled_from([s.encode() for s in SQL]),
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127)),
    st.integers(100, 4000).map(lambda n: b"A" * n),
)
FRAMING = {
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "content-encoding",
    "host",
    "upgrade",
    "content-type",
    "authorization",
    "accept",
}
extra_headers = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
        .filter(lambda n: n.lower() not in FRAMING)
        .map(str.encode),
        header_values,
    ),
    max_size=3,
).map(tuple)


def authorization(templates: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.tuples(st.sampled_from(templates), hash_refs),
        header_values,
    )


# Content types the gateway is expected to refuse (or read) without trouble. Unknown
# charsets have a test of their own (test_pinned.py), so only real codecs appear here.
ODD_CONTENT_TYPES = [
    b"text/plain",
    b"application/xml",
    b"APPLICATION/JSON",
    b"application/json; charset=latin-1",
    b"application/json; charset",
    b"application/x-www-form-urlencoded; charset=utf-16",
    b"application/x-www-form-urlencoded; charset=us-ascii",
    b"multipart/form-data",
    b"application/json, text/plain",
    b";;;",
    b"",
    b"*/*",
    b"application/json\xff",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
MUTATIONS = ["truncate", "bom", "nul", "empty", "oversize", "gzip"]

APPLICATION_TOKENS: dict[str, st.SearchStrategy[str]] = {
    "navixy_iphone_viewer": apns_tokens,
    "navixy_android_viewer": fcm_tokens,
    "w3c_pushapi": endpoints,
}
live_refs = st.builds(
    HashRef,
    st.sampled_from(["alice", "alice", "bob"]),
    st.sampled_from(["plain", "plain", "upper"]),
)


@st.composite
def spoil(
    draw: st.DrawFn, pairs: tuple[tuple[str, Any], ...], fields: dict[str, st.SearchStrategy[Any]]
) -> tuple[tuple[str, Any], ...]:
    """The pairs with none, one or two values replaced: by a hostile value mostly, else by
    another of the field's own (valid or not)."""
    spoilt = list(pairs)
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        if not spoilt:
            break
        index = draw(st.integers(0, len(spoilt) - 1))
        name = spoilt[index][0]
        own = fields.get(name, hostile_text)
        spoilt[index] = (name, draw(st.one_of(hostile_text, own, hostile_text, json_values, raws)))
    return tuple(spoilt)


@st.composite
def valid_navixy_params(draw: st.DrawFn) -> tuple[tuple[str, Any], ...]:
    """A valid bind's parameters (a subset serves delete and logout)."""
    application = draw(st.sampled_from(sorted(APPLICATION_TOKENS)))
    pairs: list[tuple[str, Any]] = [
        ("hash", draw(live_refs)),
        ("application", application),
        ("token", draw(APPLICATION_TOKENS[application])),
    ]
    if application == "w3c_pushapi":
        keys = {"p256dh": draw(st.sampled_from(P256DH)), "auth": draw(st.sampled_from(AUTH))}
        pairs.append(("parameters", keys))
    if draw(st.booleans()):
        pairs.append(
            ("category_filter", draw(st.sampled_from(["*", "chat_message", "-history_rule"])))
        )
    return tuple(draw(st.permutations(pairs)))


# Mostly the three actions; sometimes a path that names none of them.
NAVIXY_PATH_ACTIONS = (
    [BIND] * 12
    + [DELETE] * 4
    + [LOGOUT] * 4
    + [
        "user/session/push_token",
        "user/x",
        "",
        "user/logout//",
        "BIND",
    ]
)


@st.composite
def navixy_specs(draw: st.DrawFn) -> NavixySpec:
    action = draw(st.sampled_from(NAVIXY_PATH_ACTIONS))
    form = draw(st.sampled_from(["json", "json", "form", "multipart", "query", "query"]))
    method = "GET" if form == "query" else "POST"
    if chance(draw, 15):
        method = draw(st.sampled_from(METHODS))
    auth = draw(authorization(NAVIXY_AUTH)) if chance(draw, 4) else None
    if not chance(draw, 3):
        # A valid request, then hostile parameters after it (which, in JSON, override it).
        params = draw(valid_navixy_params())
        if chance(draw, 5):  # the hash in the header instead
            auth = ("NVX {h}", params[[k for k, _ in params].index("hash")][1])
            params = tuple(pair for pair in params if pair[0] != "hash")
        params = draw(spoil(params, NAVIXY_FIELDS))
        if chance(draw, 4):  # more: unknown names, or a parameter again
            params += draw(navixy_pairs.map(lambda pairs: pairs[:3]))
    else:
        params = draw(navixy_pairs)
    query = draw(navixy_pairs) if form != "query" and chance(draw, 5) else ()
    content_type = draw(st.sampled_from(ODD_CONTENT_TYPES)) if chance(draw, 10) else None
    mutation = draw(st.sampled_from(MUTATIONS)) if form != "query" and chance(draw, 5) else "none"
    return NavixySpec(
        action=action,
        prefix=draw(st.sampled_from(["/v2", ""])),
        slash=draw(st.sampled_from(["", "/"])),
        form=form,
        method=method,
        params=params,
        query=query,
        content_type=content_type,
        auth=auth,
        mutation=mutation,
        headers=draw(extra_headers),
    )


LAYER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "token": field_values(push_tokens),
    "type": field_values(st.sampled_from(["apns", "gcm"])),
    "device_id": field_values(device_ids),
    "apns_bundle_id": field_values(
        st.sampled_from(["com.example.app", "'; DROP TABLE sessions; --"])
    ),
    "gcm_sender_id": field_values(st.sampled_from(["123456789012", "sender"])),
    "ios_version": field_values(st.sampled_from(["9.0", "17.4.1", "1"])),
    "\x00session": json_values,
}


@st.composite
def layer_fields(draw: st.DrawFn) -> tuple[tuple[str, Any], ...]:
    pairs: list[tuple[str, Any]] = []
    # The three required fields, usually valid, so that many examples are written.
    if not chance(draw, 4):
        kind = draw(st.sampled_from(["apns", "gcm"]))
        token = draw(apns_tokens if kind == "apns" else fcm_tokens)
        pairs += [("token", token), ("type", kind), ("device_id", draw(device_ids))]
        if kind == "apns" and draw(st.booleans()):
            pairs += [("apns_bundle_id", "com.example.app"), ("ios_version", "17.4")]
        if kind == "gcm" and draw(st.booleans()):
            pairs.append(("gcm_sender_id", "123456789012"))
        pairs = list(draw(spoil(tuple(pairs), LAYER_FIELDS)))
        if draw(st.booleans()):
            return tuple(pairs)
    extra = draw(
        st.lists(
            st.one_of(
                st.sampled_from(sorted(LAYER_FIELDS)).flatmap(
                    lambda name: st.tuples(st.just(name), LAYER_FIELDS[name])
                ),
                st.tuples(st.text(max_size=10), field_values(hostile_text)),
            ),
            max_size=4,
        )
    )
    return tuple(pairs + extra)


@st.composite
def layer_specs(draw: st.DrawFn) -> LayerSpec:
    route = draw(st.sampled_from(["register"] * 6 + ["unregister"] * 2 + ["list", "end_session"]))
    method = {"register": "POST", "unregister": "DELETE", "list": "GET", "end_session": "DELETE"}[
        route
    ]
    if chance(draw, 15):
        method = draw(st.sampled_from(METHODS))
    device: Any = None
    if route == "unregister":
        device = draw(st.one_of(device_ids, device_ids, hostile_text.filter(bool), raws))
    elif route == "end_session":
        device = draw(hash_refs)
    accept: bytes | None = LAYER_ACCEPT
    if chance(draw, 12):
        accept = draw(
            st.sampled_from(
                [
                    None,
                    b"application/vnd.layer+json; version=4.0",
                    b"application/json",
                    b"*/*",
                    b'application/vnd.layer+json; version="1.0"',
                    b"text/html, application/vnd.layer+json;version=1.0",
                    b"application/vnd.layer+json; version=1.0\xff",
                ]
            )
        )
    auth: Any = ('Layer session-token="{h}"', draw(live_refs))
    if chance(draw, 8):
        auth = draw(authorization(LAYER_AUTH))
    return LayerSpec(
        route=route,
        method=method,
        device=device,
        fields=draw(layer_fields()),
        accept=accept,
        auth=auth,
        content_type=draw(st.sampled_from(ODD_CONTENT_TYPES)) if chance(draw, 12) else None,
        mutation=draw(st.sampled_from(MUTATIONS)) if chance(draw, 5) else "none",
        headers=draw(extra_headers),
    )


PATHS = [
    "/push_tokens",
    "/push_tokens/",
    "/push_tokens/x",
    "/sessions/x",
    "/v2",
    "/v2/",
    "/user",
    "/user/",
    "/V2/user/logout",
    "/v2/user/logout",
    "/user/logout/",
    "/v2/user/session/push_token/bind",
    "/user/session/push_token/delete/",
    "/",
    "//v2/user/logout",
    "/v2/user/../user/logout",
    "/internal/x",
]


@st.composite
def generic_requests(draw: st.DrawFn) -> Request:
    """Anything: a method, a path, a query, headers and a body, none of them meant to fit."""
    path = draw(
        st.one_of(
            st.sampled_from(PATHS),
            st.tuples(st.sampled_from(PATHS), st.text(max_size=20)).map(
                lambda pair: pair[0] + "/" + quote(pair[1].encode(), safe="/")
            ),
            st.lists(st.text(max_size=8), max_size=4).map(
                lambda parts: "/" + "/".join(quote(p.encode(), safe="") for p in parts)
            ),
        )
    )
    query = draw(st.lists(st.tuples(st.text(max_size=8), field_values(hostile_text)), max_size=4))
    target = path.encode()
    while query and len(urlencoded(tuple(query), None)) > 7_000:  # the request-line limit
        query.pop()
    if query:
        target += b"?" + urlencoded(tuple(query), None)
    headers = list(draw(extra_headers))
    if draw(st.booleans()):
        headers.append(
            (b"Content-Type", draw(st.sampled_from(ODD_CONTENT_TYPES + list(MEDIA_TYPES.values()))))
        )
    if draw(st.booleans()):
        headers.append((b"Authorization", draw(header_values)))
    if draw(st.booleans()):
        headers.append((b"Accept", draw(st.sampled_from([LAYER_ACCEPT, b"*/*"]))))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=200), st.sampled_from(RAW_JSON)))
    return Request(draw(st.sampled_from(METHODS)), target, tuple(headers), body)


FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


spoilers = st.one_of(hostile_text, json_values, st.sampled_from(push_tokens_of_every_kind()))


@st.composite
def valid_layer_fields(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["apns", "gcm"]))
    fields: dict[str, Any] = {
        "token": draw(apns_tokens if kind == "apns" else fcm_tokens),
        "type": kind,
        "device_id": draw(device_ids),
    }
    if kind == "apns":
        fields.update(apns_bundle_id="com.example.app", ios_version="17.4")
    else:
        fields["gcm_sender_id"] = "123456789012"
    return fields
