"""Request specifications, resolved against a seeded world: the pools of hostile values,
the body encoders written by hand (so that keys repeat and bytes stay raw), and the
Navixy and Layer specs the strategies draw and the case table builds."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tests.hostile.harness import MAX_BODY, NAVIXY_ACTIONS, Intent, Request, World

SQL = [
    "'; DROP TABLE registrations; --",
    "'); TRUNCATE sessions CASCADE; --",
    '" OR 1=1 --',
    "' OR ''='",
    "1; DELETE FROM sessions",
    "1' UNION SELECT token_sha256 FROM sessions --",
    "$1",
    "%' --",
    "\\x00",
    "NULL",
]
WEIRD = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e\u202d",
    "\ufeff",
    "\uffff",
    "\u0085",
    "\u200b",
    "e\u0301",
    "\U0001d54f\U0001f4f1",
    "日本語",
    "\r\n",
    "\t",
    "null",
    "*",
    "-",
    ",",
    "{}",
    "[]",
]
# JSON text that orjson refuses or turns into something that is not a string.
RAW_JSON = [
    b"1e309",
    b"-1e309",
    b"1" + b"0" * 400,
    b"-" + b"9" * 400,
    b"1e-400",
    b"[" * 10_000 + b"]" * 10_000,
    b'{"a":' * 2_000 + b"1" + b"}" * 2_000,
    b'"\xff\xfe"',
    b'"\xc0\xaf"',
    b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"',
    b'"a\x00b"',
    b'"\\u0000"',
    b'"\\ud800"',
    b'"\\udc00\\ud800"',
    b"NaN",
    b"Infinity",
    b"0x1F",
    b"01",
    b"tru",
    b'"unterminated',
    b"[1,]",
    b"18446744073709551616",
]
# Whole url-encoded values no parameter accepts.
RAW_URLENCODED = [b"%FF", b"%C0%AF", b"%ED%A0%80", b"%F4%90%80%80", b"%00", b"%", b"%zz", b"%E4%B8"]
# Multipart field bodies sent as they are.
RAW_PART = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"a\x00b", b"\x00" * 8, b""]
BOUNDARY = "hostile-boundary-7f3a"

# --- request specifications, resolved against a world ------------------------------------


@dataclass(frozen=True)
class HashRef:
    """A session hash, known only once the example's world is seeded."""

    who: str  # alice, bob, unknown
    shape: str = "plain"

    def resolve(self, world: World) -> str:
        value = world.hashes[self.who]
        shapes = {
            "plain": value,
            "upper": value.upper(),  # still valid: hashes are case-insensitive
            "short": value[:-1],
            "padded": f" {value} ",
            "doubled": value + value,
        }
        return shapes[self.shape]


@dataclass(frozen=True)
class Raw:
    """A value sent as raw bytes from the form's pool of undecodable or refused input."""

    index: int


def _json_literal(value: Any, world: World) -> bytes:
    if isinstance(value, Raw):
        return RAW_JSON[value.index % len(RAW_JSON)]
    if isinstance(value, HashRef):
        value = value.resolve(world)
    # json, not orjson: it writes integers of any size (and NaN, Infinity: invalid JSON).
    return json.dumps(value, ensure_ascii=False).encode()


def _url_value(value: Any, world: World | None) -> bytes:
    if isinstance(value, Raw):
        return RAW_URLENCODED[value.index % len(RAW_URLENCODED)]
    if isinstance(value, HashRef):
        assert world is not None
        value = value.resolve(world)
    if not isinstance(value, str):
        value = json.dumps(value)  # the form and query forms carry JSON-typed values as text
    return quote(value.encode(), safe="").encode()


def _part_value(value: Any, world: World) -> bytes:
    if isinstance(value, Raw):
        return RAW_PART[value.index % len(RAW_PART)]
    if isinstance(value, HashRef):
        value = value.resolve(world)
    text: str = value if isinstance(value, str) else json.dumps(value)
    return text.encode()


def json_body(pairs: tuple[tuple[str, Any], ...], world: World) -> bytes:
    """A JSON object written by hand, so that keys can repeat and values can be anything."""
    members = [
        json.dumps(k, ensure_ascii=False).encode() + b":" + _json_literal(v, world)
        for k, v in pairs
    ]
    return b"{" + b",".join(members) + b"}"


def urlencoded(pairs: tuple[tuple[str, Any], ...], world: World | None) -> bytes:
    return b"&".join(
        quote(k.encode(), safe="").encode() + b"=" + _url_value(v, world) for k, v in pairs
    )


def multipart_body(parts: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A multipart/form-data body of (name, value) parts, the name written as given."""
    out = b""
    for name, value in parts:
        out += (
            b"--" + BOUNDARY.encode() + b"\r\n"
            b'Content-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
        )
    return out + b"--" + BOUNDARY.encode() + b"--\r\n"


def multipart(pairs: tuple[tuple[str, Any], ...], world: World) -> bytes:
    # Control characters in a part's headers have a test of their own (test_pinned.py).
    def safe(name: str) -> bytes:
        return "".join(c for c in name if c >= " " and c not in '"\x7f').encode()

    return multipart_body((safe(name), _part_value(value, world)) for name, value in pairs)


def text_values(pairs: tuple[tuple[str, Any], ...], name: str, world: World) -> frozenset[str]:
    found = set()
    for key, value in pairs:
        if key == name:
            if isinstance(value, HashRef):
                found.add(value.resolve(world))
            elif isinstance(value, str):
                found.add(value)
    return frozenset(found)


def mutate(body: bytes, mutation: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A body spoilt (or padded, or compressed) one way; the headers that go with it."""
    if mutation == "truncate":
        return body[: len(body) // 2], []
    if mutation == "bom":
        return b"\xef\xbb\xbf" + body, []
    if mutation == "nul":
        return body + b"\x00", []
    if mutation == "empty":
        return b"", []
    if mutation == "oversize":
        return body + b" " * (MAX_BODY + 1 - len(body)), []
    if mutation == "gzip":
        return gzip.compress(body, mtime=0), [(b"Content-Encoding", b"gzip")]
    return body, []


def _auth_header(spec: Any, world: World) -> list[tuple[bytes, bytes]]:
    if spec is None:
        return []
    if isinstance(spec, bytes):
        return [(b"Authorization", spec)]
    template, ref = spec
    return [(b"Authorization", template.format(h=ref.resolve(world)).encode())]


MEDIA_TYPES = {
    "json": b"application/json",
    "form": b"application/x-www-form-urlencoded",
    "multipart": b"multipart/form-data; boundary=" + BOUNDARY.encode(),
}


@dataclass(frozen=True)
class NavixySpec:
    action: str
    prefix: str
    slash: str
    form: str
    method: str
    params: tuple[tuple[str, Any], ...]
    query: tuple[tuple[str, Any], ...]
    content_type: bytes | None
    auth: Any
    mutation: str
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def build(self, world: World) -> tuple[Request, Intent]:
        path = f"{self.prefix}/{self.action}{self.slash}"
        query = self.query
        body = b""
        if self.form == "query":
            query = self.params + self.query
        elif self.form == "json":
            body = json_body(self.params, world)
        elif self.form == "form":
            body = urlencoded(self.params, world)
        else:
            body = multipart(self.params, world)
        headers = list(self.headers) + _auth_header(self.auth, world)
        if self.form != "query":
            body, more = mutate(body, self.mutation)
            headers += more
            media = MEDIA_TYPES[self.form] if self.content_type is None else self.content_type
            headers.append((b"Content-Type", media))
        # A request line over aiohttp's 8190 bytes is refused before routing, so in Layer's
        # dialect whatever the path (test_pinned.py): parameters that would not fit are left out.
        kept: list[tuple[str, Any]] = []
        for pair in query:
            if len(urlencoded((*kept, pair), world)) < 7_000:
                kept.append(pair)
        query = tuple(kept)
        target = path.encode() + (b"?" + urlencoded(query, world) if query else b"")
        action = (
            NAVIXY_ACTIONS.get(self.action, "none") if self.method in {"GET", "POST"} else "none"
        )
        everything = tuple(kept) + (() if self.form == "query" else self.params)
        intent = Intent(action, tokens=text_values(everything, "token", world))
        return Request(self.method, target, tuple(headers), body), intent


@dataclass(frozen=True)
class LayerSpec:
    route: str
    method: str
    device: Any
    fields: tuple[tuple[str, Any], ...]
    accept: bytes | None
    auth: Any
    content_type: bytes | None
    mutation: str
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def build(self, world: World) -> tuple[Request, Intent]:
        headers = list(self.headers) + _auth_header(self.auth, world)
        if self.accept is not None:
            headers.append((b"Accept", self.accept))
        body = b""
        intent = Intent()
        if self.route == "register":
            target = b"/push_tokens"
            body, more = mutate(json_body(self.fields, world), self.mutation)
            headers += more
            headers.append((b"Content-Type", self.content_type or b"application/json"))
            intent = Intent(
                "register",
                tokens=text_values(self.fields, "token", world),
                device_ids=text_values(self.fields, "device_id", world),
            )
        elif self.route == "unregister":
            if isinstance(self.device, Raw):
                target = b"/push_tokens/" + RAW_URLENCODED[self.device.index % len(RAW_URLENCODED)]
                intent = Intent("unregister")
            else:
                target = b"/push_tokens/" + quote(self.device.encode(), safe="").encode()
                intent = Intent("unregister", device_ids=frozenset({self.device}))
        elif self.route == "end_session":
            value = self.device.resolve(world) if isinstance(self.device, HashRef) else "x"
            target = b"/sessions/" + quote(value, safe="").encode()
            intent = Intent("end_session")
        else:
            target = b"/push_tokens"
            intent = Intent("list")
        # What the method and path ask for, whichever route the body was built for.
        routes = {"register": "POST", "unregister": "DELETE", "end_session": "DELETE"}
        if self.route == "register" and self.method == "GET":
            intent = Intent("list")
        elif self.route == "list" and self.method == "POST":
            intent = Intent("register")
        elif self.method != routes.get(intent.action, "GET"):
            intent = Intent("none")
        return Request(self.method, target, tuple(headers), body), intent
