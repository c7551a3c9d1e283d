"""The live gateway the hostile tests talk to, and the wire: raw requests, answers, the
seeded world and database snapshots.

The gateway runs as a real server on a thread with its own event loop (hypothesis's
``@given`` drives synchronous tests), and requests go out as raw bytes over a socket, so
that invalid UTF-8, NUL bytes, odd methods and broken framing reach the server unaltered.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import secrets
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import asyncpg
import pytest

from gateway.app import create_app
from gateway.commands import SessionRef
from gateway.config import Settings
from tests.faults_support import Figures
from tests.live import LiveServer

# aiohttp warns (BadContentDispositionHeader) on a multipart field name it cannot parse,
# then drops the name, which the gateway answers with code 5. The gateway runs in this
# process, so under filterwarnings=error the warning would become a 500 that production
# never shows.
UNPARSEABLE_FIELD_NAMES_ARE_NOT_ERRORS = pytest.mark.filterwarnings(
    "ignore::aiohttp.multipart.BadContentDispositionHeader"
)

MAX_BODY = 64 * 1024
LAYER_ACCEPT = b"application/vnd.layer+json; version=1.0"
BIND = "user/session/push_token/bind"
DELETE = "user/session/push_token/delete"
LOGOUT = "user/logout"
NAVIXY_ACTIONS = {BIND: "bind", DELETE: "delete", LOGOUT: "logout"}
# The two pages' example tokens.
APNS = "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949"
FCM = "f4be7b9d04da2ce1af111b"

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


class LiveGateway(LiveServer):
    """The app on a real socket, its loop on a thread of its own, and a connection to its DB."""

    def __init__(self, database_url: str) -> None:
        # No rate limit: the fuzzers send hundreds of requests on one session.
        app = create_app(Settings(database_url=database_url, rate_limit=0))
        super().__init__(app, name="hostile-gw", access_log=None)
        self.database_url = database_url
        self._world: World | None = None
        self._pristine: Snapshot | None = None
        # Answers by status class ("2xx", ...), for the README's figures.
        self.answers: Counter[str] = Counter()

    async def setup(self) -> None:
        await super().setup()
        self.connection: asyncpg.Connection = await asyncpg.connect(self.database_url)

    async def cleanup(self) -> None:
        await self.connection.execute("DELETE FROM sessions")
        await self.connection.close()
        await super().cleanup()

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
