"""Hostile input against both dialects: property-based (hypothesis) and hand-written cases.

The properties, for every request however malformed:

- the answer is never a 5xx, and it is a well-formed answer of the dialect its path
  belongs to (/v2/... and /user/... are Navixy, everything else Layer);
- every error is ``application/json``: Layer's ``{id, code, message, url, data}`` with
  the status its table gives, Navixy's ``{"success": false, "status": {code,
  description}}`` with ``errors`` beside it only for code 7; successes are Layer's
  empty 202 and Navixy's ``{"success": true}``;
- the database changes only through a valid command, and then only as that command
  says: both tables are read whole before and after every request.

The gateway runs as a real server on a thread with its own event loop (hypothesis's
``@given`` drives synchronous tests), and requests go out as raw bytes over a socket, so
that invalid UTF-8, NUL bytes, odd methods and broken framing reach the server unaltered.

The fuzzers leave out inputs that have regression tests of their own near the end of this
file: requests aiohttp's HTTP parser or expect handler refuses before any middleware runs
(``Expect``, unsupported Content-Encoding, bytes or lengths the parser refuses), unknown
charsets, multipart parts aiohttp cannot decode or whose headers it refuses, corrupt
Content-Encoding, invalid UTF-8 percent-escapes. A JSON key given twice takes its last
value, a policy pinned below.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gzip
import http.client
import json
import re
import secrets
import socket
import threading
from collections import Counter
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import asyncpg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.commands import SessionRef
from gateway.config import Settings
from tests.faults_support import Figures

T = TypeVar("T")

# aiohttp warns (BadContentDispositionHeader) on a multipart field name it cannot parse,
# then drops the name, which the gateway answers with code 5. The gateway runs in this
# process, so under filterwarnings=error the warning would become a 500 that production
# never shows.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader")

MAX_BODY = 64 * 1024
LAYER_ACCEPT = b"application/vnd.layer+json; version=1.0"
BIND = "user/session/push_token/bind"
DELETE = "user/session/push_token/delete"
LOGOUT = "user/logout"
NAVIXY_ACTIONS = {BIND: "bind", DELETE: "delete", LOGOUT: "logout"}
# The two pages' example tokens.
APNS = "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949"
FCM = "f4be7b9d04da2ce1af111b"

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


# --- the live gateway ---------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The state every example starts from: two users' live sessions and their tokens."""

    hashes: dict[str, str]  # alice, bob, unknown (well formed, of no session)
    session_ids: dict[str, int]
    users: dict[str, str]  # hash -> user

    @property
    def live(self) -> tuple[str, str]:
        return self.hashes["alice"], self.hashes["bob"]


SEED_DEVICES = {
    "seed-device": "ab" * 32,
    "'; DROP TABLE registrations; --": "cd" * 32,
    "dir/device": "ef" * 32,
    "日本語 device": "0123" * 16,
}


@dataclass(frozen=True)
class Snapshot:
    registrations: dict[int, dict[str, Any]]
    sessions: dict[int, dict[str, Any]]


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def describe(self) -> str:
        return f"{self.status} {self.headers.get('Content-Type')!r} {self.body[:300]!r}"


@dataclass(frozen=True)
class Request:
    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    chunked: bool = False

    def wire(self) -> bytes:
        lines = [self.method.encode() + b" " + self.target + b" HTTP/1.1", b"Host: gateway.test"]
        lines += [name + b": " + value for name, value in self.headers]
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
            size = 4096
            pieces = [self.body[i : i + size] for i in range(0, len(self.body), size)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        else:
            if self.body or self.method not in {"GET", "HEAD"}:
                lines.append(b"Content-Length: %d" % len(self.body))
            body = self.body
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def plaintext(self) -> bytes:
        """Everything the request carries, its body decompressed."""
        body = self.body
        if (b"Content-Encoding", b"gzip") in self.headers:
            body = gzip.decompress(body)
        return self.target + b"".join(n + b": " + v for n, v in self.headers) + body

    @property
    def path(self) -> str:
        """The path as the server routes it: percent-decoded."""
        raw = self.target.split(b"?", 1)[0].split(b"#", 1)[0]
        return unquote(raw.decode("latin-1"))


@dataclass(frozen=True)
class Intent:
    """What a request would do if it were valid, for judging a database change."""

    action: str = "none"  # bind, delete, logout, register, unregister, list, end_session
    tokens: frozenset[str] = frozenset()
    device_ids: frozenset[str] = frozenset()


class LiveGateway:
    """The app on a real socket, its loop on a thread of its own, and a connection to its DB."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hostile-gw", daemon=True)
        self.port = 0
        self._world: World | None = None
        self._pristine: Snapshot | None = None
        # Answers by status class ("2xx", ...), for the README's figures.
        self.answers: Counter[str] = Counter()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        # No rate limit: the fuzzers send hundreds of requests on one session.
        app = create_app(Settings(database_url=self.database_url, rate_limit=0))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.connection: asyncpg.Connection = await asyncpg.connect(self.database_url)

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    async def _stop(self) -> None:
        await self.connection.execute("DELETE FROM sessions")
        await self.connection.close()
        await self.runner.cleanup()

    # the database

    async def _snapshot(self) -> Snapshot:
        registrations = await self.connection.fetch("SELECT * FROM registrations ORDER BY id")
        sessions = await self.connection.fetch("SELECT * FROM sessions ORDER BY id")
        return Snapshot(
            {row["id"]: dict(row) for row in registrations},
            {row["id"]: dict(row) for row in sessions},
        )

    def snapshot(self) -> Snapshot:
        return self.run(self._snapshot())

    @staticmethod
    def _new_hash() -> str:
        # Fresh every time: the gateway caches sessions by digest.
        return secrets.token_hex(16)

    async def _seed(self) -> World:
        await self.connection.execute("DELETE FROM sessions")  # registrations cascade
        hashes = {who: self._new_hash() for who in ("alice", "bob", "unknown")}
        ids: dict[str, int] = {}
        for who in ("alice", "bob"):
            ids[who] = await self.connection.fetchval(
                "INSERT INTO sessions (token_sha256, user_id, expires_at)"
                " VALUES ($1, $2, now() + interval '1 hour') RETURNING id",
                SessionRef.from_token(hashes[who]).token_sha256,
                who,
            )
            await self.connection.execute(
                "INSERT INTO registrations (user_id, session_id, provider, token)"
                " VALUES ($1, $2, 'fcm', $3)",
                who,
                ids[who],
                f"seed-{who}-binding",
            )
        for device, token in SEED_DEVICES.items():
            await self.connection.execute(
                "INSERT INTO registrations (user_id, session_id, device_id, provider, token)"
                " VALUES ('alice', $1, $2, 'apns', $3)",
                ids["alice"],
                device,
                token,
            )
        return World(
            hashes=hashes,
            session_ids=ids,
            users={hashes["alice"]: "alice", hashes["bob"]: "bob"},
        )

    def world(self) -> World:
        """The seeded state; seeded again only when the last request changed it."""
        if self._world is None or self._pristine is None:
            self._world = self.run(self._seed())
            self._pristine = self.snapshot()
        return self._world

    def pristine(self) -> Snapshot:
        self.world()
        assert self._pristine is not None
        return self._pristine

    def changed(self) -> None:
        self._world = None
        self._pristine = None

    # HTTP

    def send(self, request: Request) -> Answer:
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            # The server may answer and close before reading an oversized body.
            with contextlib.suppress(OSError):
                sock.sendall(request.wire())
            response = http.client.HTTPResponse(sock, method=request.method)
            try:
                response.begin()
                self.answers[f"{response.status // 100}xx"] += 1
                return Answer(response.status, response.headers, response.read())
            finally:
                response.close()


FIGURES = Figures("hostile-input figures")


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, database_url: str) -> Iterator[LiveGateway]:
    live = LiveGateway(database_url)
    live.start()
    try:
        yield live
    finally:
        live.stop()
        FIGURES.attach(request.config, "hostile-figures")
        FIGURES.add(
            "hostile requests through LiveGateway.send",
            requests_sent=sum(live.answers.values()),
            answers=dict(sorted(live.answers.items())),
            five_xx_seen=live.answers["5xx"],
        )


# --- the dialects' answers ------------------------------------------------------------

LAYER_ERRORS: dict[str, tuple[int, set[int]]] = {
    # id: (code, HTTP statuses); 5xx and rate limiting are never right here.
    "authentication_required": (4, {401}),
    "invalid_request": (10, {400, 413}),
    "not_found": (102, {404}),
    "missing_property": (104, {422}),
    "invalid_property": (105, {422}),
    "invalid_endpoint": (106, {404}),
    "invalid_header": (107, {406}),
    "method_not_allowed": (109, {405}),
}
NAVIXY_ERRORS: dict[int, int] = {3: 400, 4: 400, 5: 400, 7: 400, 9: 412, 111: 400, 112: 400}


def is_navixy_path(path: str) -> bool:
    return path.startswith(("/v2/", "/user/")) or path == "/v2"


# Outside this file's two dialects: the senders' API (its own error format) and the
# operational routes, whose GET answers are not errors of either dialect.
INTERNAL_PREFIX = "/internal"
OPERATIONAL = {"/health/live", "/health/ready", "/metrics", "/openapi.json"}


def internal_error(answer: Answer) -> None:
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    assert isinstance(body, dict) and set(body) == {"error"}, answer.describe()
    assert isinstance(body["error"]["code"], str), answer.describe()
    assert isinstance(body["error"]["message"], str), answer.describe()


def layer_error(answer: Answer) -> dict[str, Any]:
    """Assert a well-formed Layer error (not a 5xx); return its body."""
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    assert isinstance(body, dict), answer.describe()
    assert set(body) == {"id", "code", "message", "url", "data"}, answer.describe()
    assert body["id"] in LAYER_ERRORS, answer.describe()
    code, statuses = LAYER_ERRORS[body["id"]]
    assert body["code"] == code and answer.status in statuses, answer.describe()
    assert isinstance(body["message"], str) and body["message"], answer.describe()
    assert isinstance(body["url"], str) and body["url"].startswith("https://"), answer.describe()
    assert isinstance(body["data"], dict), answer.describe()
    if code in {104, 105}:
        assert set(body["data"]) == {"property"}, answer.describe()
        assert isinstance(body["data"]["property"], str), answer.describe()
    if code == 107:
        assert body["data"] == {"header": "Accept"}, answer.describe()
    return body


def navixy_error(answer: Answer) -> dict[str, Any]:
    """Assert a well-formed Navixy error envelope (not a 5xx); return its body."""
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    assert isinstance(body, dict), answer.describe()
    assert body.get("success") is False, answer.describe()
    status = body.get("status")
    assert isinstance(status, dict) and set(status) == {"code", "description"}, answer.describe()
    code = status["code"]
    assert code in NAVIXY_ERRORS and answer.status == NAVIXY_ERRORS[code], answer.describe()
    assert isinstance(status["description"], str) and status["description"], answer.describe()
    if code == 7:
        assert set(body) == {"success", "status", "errors"}, answer.describe()
        errors = body["errors"]
        assert isinstance(errors, list) and errors, answer.describe()
        for error in errors:
            assert isinstance(error, dict) and set(error) == {"parameter", "error"}
            assert isinstance(error["parameter"], str) and isinstance(error["error"], str)
    else:
        assert set(body) == {"success", "status"}, answer.describe()
    return body


def show(request: Request) -> str:
    wire = request.wire()
    return repr(wire if len(wire) < 800 else wire[:800] + b"...")


def judge(request: Request, answer: Answer) -> bool:
    """Assert the answer is well formed in the path's dialect; True for a success."""
    assert answer.status < 500, answer.describe()
    head = request.method == "HEAD"
    if head:
        # No body to read: the status and the media type must still be the dialect's.
        assert answer.body == b""
        if answer.status >= 400:
            assert answer.content_type == "application/json", answer.describe()
        return False
    if request.path == INTERNAL_PREFIX or request.path.startswith(INTERNAL_PREFIX + "/"):
        if answer.status >= 400:
            internal_error(answer)
        return answer.status < 300
    if request.method == "GET" and request.path in OPERATIONAL:
        return False
    if is_navixy_path(request.path):
        if answer.status == 200:
            assert answer.content_type == "application/json", answer.describe()
            assert json.loads(answer.body) == {"success": True}, answer.describe()
            return True
        navixy_error(answer)
        return False
    if answer.status == 202:
        assert answer.body == b"", answer.describe()
        assert request.method in {"POST", "DELETE"}, answer.describe()
        return True
    if answer.status == 204:
        assert answer.body == b"" and request.method == "DELETE", answer.describe()
        return True
    if answer.status == 200:
        assert request.method == "GET", answer.describe()
        assert answer.content_type == "application/json", answer.describe()
        listing = json.loads(answer.body)
        assert isinstance(listing, list) and all(isinstance(e, dict) for e in listing)
        return True
    layer_error(answer)
    return False


# --- the database oracle --------------------------------------------------------------

# What an upsert may change on the row it keeps.
MUTABLE = {
    "session_id",
    "provider",
    "token",
    "apns_bundle_id",
    "gcm_sender_id",
    "ios_version",
    "webpush_p256dh",
    "webpush_auth",
    "category_filter",
    "registered_seq",
    "updated_at",
}


CATEGORY_NAMES = (
    "chat_message|history_rule|history_task|history_info|history_service_task|history_work_status"
)
STORED_SYNTAX = {
    "apns": re.compile(r"(?:[0-9a-f]{2}){16,100}"),
    "fcm": re.compile(r"[A-Za-z0-9_:-]{8,4096}"),
    "webpush": re.compile(r"https://[^\s@/?#]+[^\s]{0,2040}"),
}
STORED_FILTER = re.compile(rf"\*|-?(?:{CATEGORY_NAMES})(?:,(?:{CATEGORY_NAMES}))*")
BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def assert_storable(row: dict[str, Any], where: str) -> None:
    """A written row obeys the syntax rules, checked here independently of gateway.validation."""
    assert STORED_SYNTAX[row["provider"]].fullmatch(row["token"]), f"{where}: stored {row}"
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in row["token"]), where
    assert STORED_FILTER.fullmatch(row["category_filter"]), f"{where}: stored {row}"
    if row["device_id"] is not None:
        device = row["device_id"]
        assert 0 < len(device) <= 255, where
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in device), where
    if row["ios_version"] is not None:
        assert re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}", row["ios_version"]), where
    webpush = row["provider"] == "webpush"
    for key in ("webpush_p256dh", "webpush_auth"):
        assert (row[key] is not None) == webpush, where
        if webpush:
            assert BASE64URL.fullmatch(row[key]), where
    if row["provider"] != "apns":
        assert row["apns_bundle_id"] is None and row["ios_version"] is None, where
    if row["provider"] != "fcm":
        assert row["gcm_sender_id"] is None, where


def candidates(tokens: frozenset[str]) -> set[str]:
    return {t for token in tokens for t in (token, token.lower())}


def check_database(
    world: World,
    request: Request,
    intent: Intent,
    success: bool,
    before: Snapshot,
    after: Snapshot,
) -> None:
    where = f"{show(request)} {intent}"
    if not success or intent.action in {"list", "none"}:
        assert after == before, f"the database changed on {where}"
        return
    # A command acts for a session whose hash the request carries.
    carried = request.plaintext().lower()
    present = [h for h in world.live if h.encode() in carried]
    assert present, f"success without a live hash: {where}"
    users = {world.users[h] for h in present}
    session_ids = {world.session_ids[user] for user in users}
    removed = set(before.registrations) - set(after.registrations)
    added = set(after.registrations) - set(before.registrations)
    changed = {
        rid
        for rid in set(before.registrations) & set(after.registrations)
        if before.registrations[rid] != after.registrations[rid]
    }
    if intent.action in {"logout", "end_session"}:
        gone = set(before.sessions) - set(after.sessions)
        assert len(gone) == 1 and gone <= session_ids, f"{where}: sessions gone {gone}"
        assert set(after.sessions) <= set(before.sessions), where
        [ended] = gone
        assert not added and not changed, where
        assert removed == {
            rid for rid, row in before.registrations.items() if row["session_id"] == ended
        }, where
        return
    assert after.sessions == before.sessions, f"sessions changed on {where}"
    if intent.action == "delete":
        assert not added and not changed and len(removed) == 1, where
        [rid] = removed
        row = before.registrations[rid]
        assert row["device_id"] is None and row["session_id"] in session_ids, where
        return
    if intent.action == "unregister":
        assert not added and not changed and len(removed) <= 1, where
        for rid in removed:
            row = before.registrations[rid]
            assert row["user_id"] in users and row["device_id"] in intent.device_ids, where
        if len(users) == 1:
            left = {
                row["device_id"] for row in after.registrations.values() if row["user_id"] in users
            }
            assert not (left & intent.device_ids), f"{where}: the device is still registered"
        return
    assert intent.action in {"bind", "register"}, where
    written = added | changed
    assert len(written) == 1, f"{where}: rows written {written}"
    [rid] = written
    row = after.registrations[rid]
    assert row["session_id"] in session_ids, where
    assert row["user_id"] == before.sessions[row["session_id"]]["user_id"], where
    assert_storable(row, where)
    assert row["token"] in candidates(intent.tokens), f"{where}: stored token {row['token']!r}"
    if rid in changed:
        old = before.registrations[rid]
        assert {k for k in row if row[k] != old[k]} <= MUTABLE, where
    if intent.action == "bind":
        assert row["device_id"] is None, where
        # Every seeded session holds a binding, which the upsert keeps in place.
        assert rid in changed, f"{where}: a second binding for one session"
    else:
        assert row["device_id"] in intent.device_ids, where
    for gone_id in removed:  # a token moves: its other holders let it go
        old = before.registrations[gone_id]
        assert (old["provider"], old["token"]) == (row["provider"], row["token"]), where


def outcome(answer: Answer) -> str:
    """A label of the answer, for --hypothesis-show-statistics."""
    try:
        body = json.loads(answer.body) if answer.body else None
    except ValueError:
        return f"{answer.status} not JSON"
    if isinstance(body, dict) and isinstance(body.get("status"), dict):
        return f"{answer.status} navixy {body['status'].get('code')}"
    if isinstance(body, dict) and "id" in body:
        return f"{answer.status} layer {body['id']}"
    return f"{answer.status}"


def exchange(gateway: LiveGateway, world: World, request: Request, intent: Intent) -> Answer:
    """Send one request; assert the answer and the database change; return the answer."""
    before = gateway.pristine()
    answer = gateway.send(request)
    after = gateway.snapshot()
    if after != before:
        gateway.changed()
    try:
        success = judge(request, answer)
    except AssertionError as exc:
        raise AssertionError(f"{show(request)}\n  answered {exc}") from None
    check_database(world, request, intent, success, before, after)
    return answer


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
    # Control characters in a part's headers have a test of their own (below).
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
# Content types the gateway is expected to refuse (or read) without trouble. Unknown
# charsets have a test of their own (below), so only real codecs appear here.
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
        # dialect whatever the path (tested below): parameters that would not fit are left out.
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


@settings(FUZZ, max_examples=800)
@given(spec=navixy_specs())
def test_navixy_answers_hostile_requests_in_dialect_and_changes_only_what_valid_commands_say(
    gateway, spec
):
    world = gateway.world()
    request, intent = spec.build(world)
    event(f"{intent.action}: {outcome(exchange(gateway, world, request, intent))}")


@settings(FUZZ, max_examples=600)
@given(spec=layer_specs())
def test_layer_answers_hostile_requests_in_dialect_and_changes_only_what_valid_commands_say(
    gateway, spec
):
    world = gateway.world()
    request, intent = spec.build(world)
    event(f"{intent.action}: {outcome(exchange(gateway, world, request, intent))}")


@settings(FUZZ, max_examples=300)
@given(request=generic_requests())
def test_any_request_at_all_gets_a_well_formed_answer_and_changes_nothing(gateway, request):
    world = gateway.world()
    event(outcome(exchange(gateway, world, request, Intent("none"))))


# One parameter spoilt, the rest valid: where a check missing from a surface shows (the
# stored row is checked against the syntax rules by the oracle).
NAVIXY_SPOILABLE = ["hash", "application", "token", "parameters", "category_filter"]
LAYER_SPOILABLE = ["token", "type", "device_id", "apns_bundle_id", "gcm_sender_id", "ios_version"]
spoilers = st.one_of(hostile_text, json_values, st.sampled_from(push_tokens_of_every_kind()))


@pytest.mark.parametrize("name", NAVIXY_SPOILABLE)
@settings(FUZZ, max_examples=70)
@given(
    base=valid_navixy_params(),
    form=st.sampled_from(["json", "form", "multipart", "query"]),
    value=spoilers,
)
def test_navixy_bind_with_one_parameter_spoilt(gateway, base, form, name, value):
    params = (*(pair for pair in base if pair[0] != name), (name, value))
    spec = NavixySpec(
        BIND, "/v2", "", form, "GET" if form == "query" else "POST", params, (), None, None, "none"
    )
    world = gateway.world()
    request, intent = spec.build(world)
    event(outcome(exchange(gateway, world, request, intent)))


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


@pytest.mark.parametrize("name", LAYER_SPOILABLE)
@settings(FUZZ, max_examples=60)
@given(fields=valid_layer_fields(), value=spoilers)
def test_layer_register_with_one_field_spoilt(gateway, fields, name, value):
    fields = {**fields, name: value}
    spec = LayerSpec(
        "register",
        "POST",
        None,
        tuple(fields.items()),
        LAYER_ACCEPT,
        ('Layer session-token="{h}"', HashRef("alice")),
        None,
        "none",
    )
    world = gateway.world()
    request, intent = spec.build(world)
    event(outcome(exchange(gateway, world, request, intent)))


# --- hand-written adversarial cases ---------------------------------------------------
#
# Each is a request built from the world, and what must come back: ("navixy", code),
# ("layer", status, id), or ("ok",) for a success. The properties above are asserted
# on every one as well.


@dataclass(frozen=True)
class Case:
    build: Any  # (World) -> (Request, Intent)
    expect: tuple[Any, ...]


def _navixy_request(
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
    def build(world: World) -> tuple[Request, Intent]:
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
        request, intent = spec.build(world)
        if body is not None:
            request = dataclasses.replace(request, body=body)
        if chunked:
            request = dataclasses.replace(request, chunked=True)
        return request, intent

    return build


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


def _layer_request(
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
    def build(world: World) -> tuple[Request, Intent]:
        default = {
            "register": "POST",
            "unregister": "DELETE",
            "list": "GET",
            "end_session": "DELETE",
        }
        spec = LayerSpec(
            route, method or default[route], device, fields, accept, auth, None, "none"
        )
        request, intent = spec.build(world)
        if body is not None:
            request = dataclasses.replace(request, body=body)
        if chunked:
            request = dataclasses.replace(request, chunked=True)
        return request, intent

    return build


ALICE = HashRef("alice")
ANDROID = (("hash", ALICE), ("application", "navixy_android_viewer"), ("token", FCM))


def _android(**overrides: Any) -> tuple[tuple[str, Any], ...]:
    values = dict(ANDROID)
    values.update(overrides)
    return tuple(values.items())


def _layer_apns(**overrides: Any) -> tuple[tuple[str, Any], ...]:
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
            _navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], b'"' + raw + b'"')
        ),
        ("navixy", 5),
    )
    CASES[f"navixy-form-body-invalid-utf8-{name}"] = Case(
        _with_body(
            _navixy_request(BIND, "form", ANDROID),
            lambda world, raw=raw: urlencoded(_android(), world) + b"&token=" + raw,
        ),
        ("navixy", 5),
    )
    CASES[f"layer-json-device-invalid-utf8-{name}"] = Case(
        _layer_request(
            "register",
            body=b'{"token":"' + APNS.encode() + b'","type":"apns","device_id":"' + raw + b'"}',
        ),
        ("layer", 400, "invalid_request"),
    )
for escaped in RAW_URLENCODED[:4]:
    label = escaped.decode().replace("%", "")
    CASES[f"navixy-query-hash-escape-{label}"] = Case(
        _navixy_request(LOGOUT, "query", (("hash", Raw(RAW_URLENCODED.index(escaped))),)),
        ("navixy", 5),
    )
    CASES[f"navixy-query-token-escape-{label}"] = Case(
        _navixy_request(BIND, "query", _android(token=Raw(RAW_URLENCODED.index(escaped)))),
        ("navixy", 5),
    )
    CASES[f"navixy-form-category-escape-{label}"] = Case(
        _navixy_request(BIND, "form", _android(category_filter=Raw(RAW_URLENCODED.index(escaped)))),
        ("navixy", 5),
    )
    CASES[f"layer-delete-path-escape-{label}"] = Case(
        _layer_request("unregister", device=Raw(RAW_URLENCODED.index(escaped))), ("ok",)
    )
CASES["navixy-multipart-hash-invalid-utf8"] = Case(
    _navixy_request(
        BIND, "multipart", (("hash", Raw(0)), ("application", "navixy_android_viewer"))
    ),
    ("navixy", 5),
)

# NUL bytes.
CASES["navixy-json-raw-nul-in-string"] = Case(
    _with_body(_navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], b'"a\x00b"')),
    ("navixy", 5),
)
CASES["navixy-json-body-trailing-nul"] = Case(
    _with_body(_navixy_request(BIND, "json", ANDROID), lambda w: json_body(ANDROID, w) + b"\x00"),
    ("navixy", 5),
)
for form in FORMS3:
    CASES[f"navixy-{form}-nul-token"] = Case(
        _navixy_request(BIND, form, _android(token="abcdefgh\x00")), ("navixy", 7)
    )
    CASES[f"navixy-{form}-nul-hash"] = Case(
        _navixy_request(DELETE, form, (("hash", "\x00" * 32),)), ("navixy", 3)
    )
    CASES[f"navixy-{form}-nul-category"] = Case(
        _navixy_request(BIND, form, _android(category_filter="chat_message\x00")), ("navixy", 7)
    )
    CASES[f"navixy-{form}-nul-key-ignored"] = Case(
        _navixy_request(BIND, form, (*ANDROID, ("\x00", "x"))), ("ok",)
    )
CASES["layer-nul-device-id"] = Case(
    _layer_request("register", _layer_apns(device_id="a\x00b")), ("layer", 422, "invalid_property")
)
CASES["layer-nul-path-device"] = Case(
    _layer_request("unregister", device="a\x00b"), ("layer", 422, "invalid_property")
)
CASES["navixy-json-session-key-smuggled"] = Case(
    _navixy_request(BIND, "json", (*ANDROID, ("\x00session", {"token_sha256": "x"}))), ("ok",)
)

# Huge numbers, everywhere a JSON value goes.
for name, number in HUGE_NUMBERS.items():
    CASES[f"navixy-json-hash-{name}"] = Case(
        _with_body(_navixy_request(LOGOUT, "json", ()), lambda w, n=number: b'{"hash":' + n + b"}"),
        ("navixy", 5),
    )
    CASES[f"navixy-json-token-{name}"] = Case(
        _with_body(_navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], number)),
        ("navixy", 5),
    )
    CASES[f"layer-json-ios-version-{name}"] = Case(
        _layer_request(
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
            _navixy_request(
                BIND,
                form,
                (
                    ("hash", ALICE),
                    ("application", "w3c_pushapi"),
                    ("token", "https://push.example/x"),
                    ("parameters", '{"p256dh":' + number.decode() + ',"auth":"x"}'),
                ),
            ),
            ("navixy", 7),
        )
CASES["navixy-json-int-beyond-64-bits-as-token"] = Case(
    _with_body(
        _navixy_request(BIND, "json", ANDROID[:2]),
        _navixy_body(ANDROID[:2], b"18446744073709551616"),
    ),
    ("navixy", 7),
)

# Deep nesting: 10,000 levels.
CASES["navixy-json-body-deep"] = Case(
    _with_body(_navixy_request(BIND, "json", ()), lambda w: DEEP), ("navixy", 5)
)
CASES["navixy-json-token-deep"] = Case(
    _with_body(_navixy_request(BIND, "json", ANDROID[:2]), _navixy_body(ANDROID[:2], DEEP)),
    ("navixy", 5),
)
CASES["navixy-form-parameters-deep"] = Case(
    _navixy_request(
        BIND,
        "form",
        (
            ("hash", ALICE),
            ("application", "w3c_pushapi"),
            ("token", "https://push.example/x"),
            ("parameters", DEEP.decode()),
        ),
    ),
    ("navixy", 7),
)
CASES["navixy-multipart-parameters-deep"] = Case(
    _navixy_request(
        BIND,
        "multipart",
        (
            ("hash", ALICE),
            ("application", "w3c_pushapi"),
            ("token", "https://push.example/x"),
            ("parameters", DEEP.decode()),
        ),
    ),
    ("navixy", 7),
)
CASES["layer-json-body-deep"] = Case(
    _layer_request("register", body=DEEP), ("layer", 400, "invalid_request")
)
CASES["layer-json-field-deep"] = Case(
    _layer_request("register", body=b'{"type":"apns","device_id":"d","token":' + DEEP + b"}"),
    ("layer", 400, "invalid_request"),
)

# Duplicate parameters: an error in the query and the form forms, whichever the value.
for form in ("query", "form"):
    CASES[f"navixy-{form}-duplicate-hash"] = Case(
        _navixy_request(DELETE, form, (("hash", ALICE), ("hash", ALICE))), ("navixy", 7)
    )
    CASES[f"navixy-{form}-duplicate-token-differing"] = Case(
        _navixy_request(BIND, form, (*ANDROID, ("token", "other-token-123"))), ("navixy", 7)
    )
CASES["navixy-multipart-duplicate-token"] = Case(
    _navixy_request(BIND, "multipart", (*ANDROID, ("token", FCM))), ("navixy", 7)
)
CASES["navixy-duplicate-in-query-of-a-post"] = Case(
    _altered(
        _navixy_request(BIND, "json", ANDROID),
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
        _navixy_request(BIND, "json", ANDROID, content_type=media), ("navixy", 5)
    )
CASES["navixy-json-as-form"] = Case(
    _with_body(_navixy_request(BIND, "form", ANDROID), lambda w: json_body(ANDROID, w)),
    ("navixy", 3),
)
CASES["navixy-form-as-json"] = Case(
    _with_body(_navixy_request(BIND, "json", ANDROID), lambda w: urlencoded(ANDROID, w)),
    ("navixy", 5),
)
for form in ("json", "form", "multipart"):
    CASES[f"navixy-{form}-empty-body"] = Case(
        _navixy_request(DELETE, form, (), body=b""), ("navixy", 3)
    )
for text in [b"[]", b'"hash"', b"null", b"1", b"{", b" "]:
    CASES[f"navixy-json-body-{text.decode().strip() or 'space'}"] = Case(
        _with_body(_navixy_request(DELETE, "json", ()), lambda w, t=text: t), ("navixy", 5)
    )
CASES["layer-json-body-array"] = Case(
    _layer_request("register", body=b"[]"), ("layer", 400, "invalid_request")
)
CASES["layer-empty-body"] = Case(
    _layer_request("register", body=b""), ("layer", 400, "invalid_request")
)
CASES["layer-empty-object"] = Case(
    _layer_request("register", body=b"{}"), ("layer", 422, "missing_property")
)

# Bodies over the limit: Navixy code 9 with HTTP 412, Layer 413; exactly at it is read.
for prefix in ("/v2", ""):
    for form in ("json", "form", "multipart"):
        for chunked in (False, True):
            CASES[
                f"navixy{prefix.replace('/', '-')}-{form}-{'chunked-' if chunked else ''}over-limit"
            ] = Case(
                _with_body(
                    _navixy_request(BIND, form, ANDROID, prefix=prefix, chunked=chunked),
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
        _navixy_request(BIND, "json", ANDROID),
        lambda w: mutate(json_body(ANDROID, w), "oversize")[0][:-1],
    ),
    ("ok",),
)
CASES["navixy-gzip-bomb"] = Case(
    _navixy_request(
        BIND,
        "json",
        ANDROID,
        body=GZIP_BOMB,
        headers=((b"Content-Encoding", b"gzip"),),
    ),
    ("navixy", 9),
)
CASES["layer-over-limit"] = Case(
    _layer_request("register", body=b'{"pad":"' + b"x" * MAX_BODY + b'"}'),
    ("layer", 413, "invalid_request"),
)
CASES["layer-chunked-over-limit"] = Case(
    _layer_request("register", body=b'{"pad":"' + b"x" * MAX_BODY + b'"}', chunked=True),
    ("layer", 413, "invalid_request"),
)
CASES["layer-gzip-bomb"] = Case(
    _altered(
        _layer_request("register", _layer_apns()),
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
            _navixy_request(DELETE, form, (("hash", sql),)), ("navixy", 3)
        )
        CASES[f"navixy-{form}-sql{tag}-application"] = Case(
            _navixy_request(BIND, form, _android(application=sql)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-sql{tag}-token"] = Case(
            _navixy_request(BIND, form, _android(token=sql)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-sql{tag}-category"] = Case(
            _navixy_request(BIND, form, _android(category_filter=sql)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-sql{tag}-parameters"] = Case(
            _navixy_request(
                BIND,
                form,
                (
                    ("hash", ALICE),
                    ("application", "w3c_pushapi"),
                    ("token", "https://push.example/x"),
                    ("parameters", sql),
                ),
            ),
            ("navixy", 7),
        )
        CASES[f"navixy-{form}-sql{tag}-p256dh"] = Case(
            _navixy_request(
                BIND,
                form,
                (
                    ("hash", ALICE),
                    ("application", "w3c_pushapi"),
                    ("token", "https://push.example/x"),
                    ("parameters", {"p256dh": sql, "auth": AUTH[0]}),
                ),
            ),
            ("navixy", 7),
        )
        CASES[f"navixy-{form}-sql{tag}-as-key"] = Case(
            _navixy_request(BIND, form, (*ANDROID, (sql, sql))), ("ok",)
        )
    CASES[f"navixy-sql{tag}-authorization"] = Case(
        _navixy_request(LOGOUT, "query", (), auth=("NVX " + sql.replace(" ", "_") + "{h}", ALICE)),
        ("navixy", 3),
    )
    CASES[f"layer-sql{tag}-device-id-is-stored"] = Case(
        _layer_request("register", _layer_apns(device_id=sql)), ("ok",)
    )
    CASES[f"layer-sql{tag}-device-path-deletes"] = Case(
        _layer_request("unregister", device=sql), ("ok",)
    )
    for name in ("token", "type", "ios_version"):
        CASES[f"layer-sql{tag}-{name}"] = Case(
            _layer_request("register", _layer_apns(**{name: sql})),
            ("layer", 422, "invalid_property"),
        )
    CASES[f"layer-sql{tag}-apns-bundle-id-is-stored"] = Case(
        _layer_request("register", _layer_apns(apns_bundle_id=sql)), ("ok",)
    )
    CASES[f"layer-sql{tag}-gcm-sender"] = Case(
        _layer_request(
            "register",
            (("token", FCM), ("type", "gcm"), ("device_id", "d"), ("gcm_sender_id", sql)),
        ),
        ("ok",) if "\x00" not in sql else ("layer", 422, "invalid_property"),
    )
    CASES[f"layer-sql{tag}-authorization"] = Case(
        _layer_request("list", auth=(f'Layer session-token="{sql}"' + "{h}", ALICE)),
        ("layer", 401, "authentication_required"),
    )
    CASES[f"layer-sql{tag}-session-path"] = Case(
        _raw("DELETE", b"/sessions/" + quote(sql, safe="").encode(), ((b"Accept", LAYER_ACCEPT),)),
        ("layer", 401, "authentication_required"),
    )

# Absurdly long strings.
for form in ("json", "form", "multipart"):
    CASES[f"navixy-{form}-long-token"] = Case(
        _navixy_request(BIND, form, _android(token=LONG)), ("navixy", 7)
    )
    CASES[f"navixy-{form}-long-hash"] = Case(
        _navixy_request(DELETE, form, (("hash", LONG),)), ("navixy", 3)
    )
    CASES[f"navixy-{form}-long-category"] = Case(
        _navixy_request(BIND, form, _android(category_filter=LONG)), ("navixy", 7)
    )
    if form != "multipart":  # a part's header line over 8190 bytes: tested on its own, below
        CASES[f"navixy-{form}-long-key-ignored"] = Case(
            _navixy_request(BIND, form, (*ANDROID, ("k" * 50_000, "v"))), ("ok",)
        )
CASES["navixy-query-long-token"] = Case(
    _navixy_request(BIND, "query", _android(token="x" * 7_000)), ("navixy", 7)
)
CASES["navixy-long-authorization"] = Case(
    _navixy_request(LOGOUT, "query", (), headers=((b"Authorization", b"NVX " + b"a" * 7_000),)),
    ("navixy", 3),
)
for name in ("token", "device_id", "apns_bundle_id", "ios_version"):
    CASES[f"layer-long-{name}"] = Case(
        _layer_request("register", _layer_apns(**{name: LONG})), ("layer", 422, "invalid_property")
    )
CASES["layer-long-path-device"] = Case(
    _layer_request("unregister", device="d" * 5_000), ("layer", 422, "invalid_property")
)
CASES["layer-long-authorization"] = Case(
    _layer_request("list", auth=b'Layer session-token="' + b"a" * 7_000 + b'"'),
    ("layer", 401, "authentication_required"),
)
CASES["layer-long-accept"] = Case(
    _layer_request("list", accept=b"application/vnd.layer+json; version=" + b"1" * 7_000),
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
            _navixy_request(BIND, form, _android(token=FCM + sample)), ("navixy", 7)
        )
        CASES[f"navixy-{form}-unicode-category-{tag}"] = Case(
            _navixy_request(BIND, form, _android(category_filter="chat_message" + sample)),
            ("navixy", 7),
        )
    CASES[f"layer-unicode-device-{tag}"] = Case(
        _layer_request("register", _layer_apns(device_id=sample)), ("ok",)
    )
    CASES[f"layer-unicode-path-device-{tag}"] = Case(
        _layer_request("unregister", device=sample), ("ok",)
    )
    CASES[f"layer-unicode-ios-version-{tag}"] = Case(
        _layer_request("register", _layer_apns(ios_version=sample)),
        ("layer", 422, "invalid_property"),
    )
CASES["navixy-unicode-digits-apns"] = Case(
    _navixy_request(
        BIND, "json", _android(application="navixy_iphone_viewer", token="\u0661" * 64)
    ),
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
        lambda world, v=value: (
            Request(
                "GET",
                f"/v2/{LOGOUT}".encode(),
                ((b"Authorization", v.replace(b"{h}", world.hashes["alice"].encode())),),
            ),
            Intent("logout"),
        ),
        ("navixy", 3),
    )
CASES["navixy-authorization-valid-header-wins-nothing-over-bad-body-hash"] = Case(
    _navixy_request(LOGOUT, "json", (("hash", "nothex"),), auth=("NVX {h}", ALICE)), ("navixy", 3)
)
CASES["navixy-authorization-unknown-session"] = Case(
    _navixy_request(LOGOUT, "query", (), auth=("NVX {h}", HashRef("unknown"))), ("navixy", 4)
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
        lambda world, v=value: (
            Request(
                "GET",
                b"/push_tokens",
                (
                    (b"Accept", LAYER_ACCEPT),
                    (b"Authorization", v.replace(b"{h}", world.hashes["alice"].encode())),
                ),
            ),
            Intent("list"),
        ),
        ("layer", 401, "authentication_required"),
    )
CASES["layer-authorization-unknown-session"] = Case(
    _layer_request(
        "register", _layer_apns(), auth=('Layer session-token="{h}"', HashRef("unknown"))
    ),
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
        _layer_request("list", accept=value), ("layer", 406, "invalid_header")
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


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_adversarial_case(gateway, case):
    world = gateway.world()
    request, intent = case.build(world)
    answer = exchange(gateway, world, request, intent)
    expect = case.expect
    if expect[0] == "ok":
        assert answer.status in {200, 202, 204}, answer.describe()
    elif expect[0] == "navixy":
        if request.method != "HEAD":
            assert navixy_error(answer)["status"]["code"] == expect[1], answer.describe()
    else:
        assert answer.status == expect[1], answer.describe()
        if request.method != "HEAD":
            assert layer_error(answer)["id"] == expect[2], answer.describe()


def test_valid_commands_in_every_form_change_the_database_as_they_say(gateway):
    """The oracle's other half: each valid command, judged by the same checks as the fuzz."""
    for prefix in ("/v2", ""):
        for slash in ("", "/"):
            for form in ("json", "form", "multipart", "query"):
                for action, params in [
                    (
                        BIND,
                        _android(
                            token="tok-" + form + prefix.replace("/", "") + slash.replace("/", "s")
                        ),
                    ),
                    (DELETE, (("hash", ALICE),)),
                    (LOGOUT, (("hash", HashRef("bob", "upper")),)),
                ]:
                    world = gateway.world()
                    request, intent = _navixy_request(
                        action, form, params, prefix=prefix, slash=slash
                    )(world)
                    before = gateway.pristine()
                    answer = exchange(gateway, world, request, intent)
                    assert answer.status == 200, answer.describe()
                    assert gateway.snapshot() != before
    for route, fields, device in [
        ("register", _layer_apns(device_id="seed-device"), None),
        ("register", (("token", FCM), ("type", "gcm"), ("device_id", "new")), None),
        ("unregister", (), "dir/device"),
        ("unregister", (), "日本語 device"),
        ("end_session", (), ALICE),
    ]:
        world = gateway.world()
        request, intent = _layer_request(route, fields, device=device)(world)
        answer = exchange(gateway, world, request, intent)
        assert answer.status in {202, 204}, answer.describe()


# --- bugs found, fixed, and pinned -------------------------------------------------------


def _send_checked(gateway: LiveGateway, request: Request, intent: Intent = Intent()) -> Answer:
    world = gateway.world()
    return exchange(gateway, world, request, intent)


@pytest.mark.parametrize("charset", ["nonsense", "base64"])
def test_unknown_form_charset_is_a_navixy_format_error(gateway, charset):
    request = Request(
        "POST",
        f"/v2/{BIND}".encode(),
        ((b"Content-Type", b"application/x-www-form-urlencoded; charset=" + charset.encode()),),
        b"hash=1",
    )
    answer = _send_checked(gateway, request, Intent("bind"))
    assert navixy_error(answer)["status"]["code"] in {3, 5}


@pytest.mark.parametrize(
    "part",
    [
        b'Content-Disposition: form-data; name="_charset_"\r\n\r\nnonsense',
        b'Content-Disposition: form-data; name="hash"\r\n'
        b"Content-Type: text/plain; charset=nonsense\r\n\r\nx",
        b'Content-Disposition: form-data; name="hash"\r\nContent-Transfer-Encoding: bogus\r\n\r\nx',
        b'Content-Disposition: form-data; name="\x00session"\r\n\r\nx',
        b'Content-Disposition: form-data; name="' + b"k" * 9_000 + b'"\r\n\r\nx',
    ],
    ids=[
        "charset-field",
        "part-charset",
        "part-transfer-encoding",
        "nul-in-part-header",
        "part-header-over-8190",
    ],
)
def test_undecodable_multipart_field_is_a_navixy_format_error(gateway, part):
    body = (
        b"--zz\r\n"
        + part
        + b'\r\n--zz\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--zz--\r\n'
    )
    request = Request(
        "POST",
        f"/v2/{BIND}".encode(),
        ((b"Content-Type", b"multipart/form-data; boundary=zz"),),
        body,
    )
    answer = _send_checked(gateway, request, Intent("bind"))
    assert navixy_error(answer)["status"]["code"] in {3, 5}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("dialect", ["navixy", "layer"])
def test_corrupt_content_encoding_is_a_client_error(gateway, encoding, dialect):
    headers: tuple[tuple[bytes, bytes], ...] = (
        (b"Content-Type", b"application/json"),
        (b"Content-Encoding", encoding.encode()),
    )
    if dialect == "navixy":
        request = Request("POST", f"/v2/{BIND}".encode(), headers, b"not compressed")
        answer = _send_checked(gateway, request, Intent("bind"))
        assert navixy_error(answer)["status"]["code"] == 5
    else:
        world = gateway.world()
        auth = f'Layer session-token="{world.hashes["alice"]}"'.encode()
        request = Request(
            "POST",
            b"/push_tokens",
            (*headers, (b"Accept", LAYER_ACCEPT), (b"Authorization", auth)),
            b"not compressed",
        )
        answer = _send_checked(gateway, request, Intent("register"))
        assert layer_error(answer)["id"] == "invalid_request"


# Requests aiohttp's HTTP layer refuses before any handler or middleware runs. It used to
# answer 400/417 itself, in text/plain, echoing the offending bytes; gateway.app replaces
# the two functions that wrote those answers. A request whose line could not be read has
# no path, so it gets Layer's error, the dialect of the root.
LOGOUT_LINE = b"GET /v2/user/logout HTTP/1.1\r\nHost: x\r\n"
POST_JSON = b"POST /v2/user/logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
PROTOCOL_ERRORS = {
    "unknown-method": b"BREW /v2/user/logout HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw-invalid-utf8-in-query": b"GET /v2/user/logout?hash=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw-invalid-utf8-in-path": b"DELETE /push_tokens/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "control-char-in-path": b"GET /v2/user/logout\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul-in-header": LOGOUT_LINE + b"Authorization: NVX \x00\r\n\r\n",
    "del-in-header": LOGOUT_LINE + b"X-A: a\x7fb\r\n\r\n",
    "space-in-header-name": LOGOUT_LINE + b"Content-Type : text/plain\r\n\r\n",
    "request-line-over-8190": b"GET /v2/user/logout?hash=" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "header-over-8190": LOGOUT_LINE + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "too-many-headers": LOGOUT_LINE + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
    "bad-chunk-size": POST_JSON + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "duplicate-content-length": POST_JSON + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "negative-content-length": POST_JSON + b"Content-Length: -1\r\n\r\n",
    "brotli-content-encoding": POST_JSON + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    "unknown-expect": POST_JSON + b"Expect: bogus\r\nContent-Length: 2\r\n\r\n{}",
    "tls-handshake": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32,
}


@pytest.mark.parametrize("raw", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
def test_requests_the_http_parser_refuses_get_a_json_error(gateway, raw):
    before = gateway.pristine()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = Answer(response.status, response.headers, response.read())
        response.close()
    assert gateway.snapshot() == before
    assert 400 <= answer.status < 500, answer.describe()
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    if "success" in body:
        navixy_error(answer)
    else:
        layer_error(answer)


@pytest.mark.parametrize(
    "name", [b"a\x01b", b"k" * 50_000], ids=["control-character", "line-over-8190"]
)
def test_multipart_part_header_the_reader_refuses_is_a_navixy_format_error(gateway, name):
    request = Request(
        "POST",
        f"/v2/{BIND}".encode(),
        ((b"Content-Type", MEDIA_TYPES["multipart"]),),
        multipart_body([(name, b"v")]),
    )
    before = gateway.pristine()
    answer = gateway.send(request)
    assert gateway.snapshot() == before
    assert navixy_error(answer)["status"]["code"] == 5


@pytest.mark.parametrize("form", ["query", "form"])
def test_invalid_utf8_escape_inside_a_value_is_refused_not_replaced(gateway, form):
    world = gateway.world()
    keys = json.dumps({"p256dh": P256DH[0], "auth": AUTH[0]})
    pairs = (
        ("hash", world.hashes["alice"]),
        ("application", "w3c_pushapi"),
        ("token", b"https%3A%2F%2Fpush.example%2Fa%FF"),  # https://push.example/a + byte 0xFF
        ("parameters", keys),
    )
    encoded = b"&".join(
        k.encode() + b"=" + (v if isinstance(v, bytes) else quote(v, safe="").encode())
        for k, v in pairs
    )
    if form == "query":
        request = Request("GET", f"/v2/{BIND}?".encode() + encoded)
    else:
        request = Request(
            "POST", f"/v2/{BIND}".encode(), ((b"Content-Type", MEDIA_TYPES["form"]),), encoded
        )
    before = gateway.pristine()
    answer = gateway.send(request)
    after = gateway.snapshot()
    if after != before:
        gateway.changed()
    assert after == before, f"stored: {[r['token'] for r in after.registrations.values()]}"
    assert navixy_error(answer)["status"]["code"] in {5, 7}


def test_duplicate_json_key_takes_the_last_value_as_json_parsers_do(gateway):
    # A policy, pinned: RFC 8259 leaves repeated names to the parser, and the
    # usual answer (orjson's, JSON.parse's) is the last one. A repeated query
    # or form parameter is refused instead, as there repetition is how lists
    # are sent and no last-one rule is common ground.
    world = gateway.world()
    body = (
        b'{"hash":"%s","application":"navixy_android_viewer",'
        b'"token":"first-token-1","token":"second-token-2"}' % world.hashes["alice"].encode()
    )
    request = Request(
        "POST", f"/v2/{BIND}".encode(), ((b"Content-Type", b"application/json"),), body
    )
    gateway.pristine()
    answer = gateway.send(request)
    gateway.changed()
    after = gateway.snapshot()
    assert answer.status == 200
    stored = {r["token"] for r in after.registrations.values()}
    assert "second-token-2" in stored
    assert "first-token-1" not in stored
