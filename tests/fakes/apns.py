"""A fake APNs: HTTP/2 over TLS on 127.0.0.1, checking what Apple checks.

It speaks HTTP/2 with the ``h2`` library over asyncio's TLS (ALPN h2 only),
announces a stream limit, verifies every request's ES256 provider token
against the test key (kid, iss, iat within the hour), its apns-topic against
the registration's bundle id, its headers and payload size, and answers each
device token from a script: 200 by default, or the scripted answers in turn
(an ``Answer``, a bare status, or ``GOAWAY``, which ends the connection
without processing the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes.tls import TestCA

HOST = "api.push.apple.test"
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
TOPIC = "com.example.app"


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str | None = None
    # 410: when the token died, in milliseconds since the epoch.
    timestamp_ms: int | None = None
    retry_after: int | None = None


GOAWAY = "GOAWAY"
UNREGISTERED = Answer(410, "Unregistered")
BAD_DEVICE_TOKEN = Answer(400, "BadDeviceToken")
TOO_MANY_REQUESTS = Answer(429, "TooManyRequests")
SERVICE_UNAVAILABLE = Answer(503, "ServiceUnavailable")
EXPIRED_PROVIDER_TOKEN = Answer(403, "ExpiredProviderToken")

Scripted = Answer | int | str


@dataclass(frozen=True)
class Received:
    """A push the fake accepted (answered 200)."""

    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


def write_key(directory: Path) -> tuple[Path, ec.EllipticCurvePublicKey]:
    """A new .p8 key (PKCS#8 PEM, as Apple's download) and its public half."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / f"AuthKey_{KEY_ID}.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key.public_key()


class FakeApns:
    def __init__(self, ca: TestCA, directory: Path, *, max_streams: int = 100) -> None:
        self.key_file, self._public_key = write_key(directory)
        self._context = ca.server_context(HOST, alpn=("h2",))
        self._ca = ca
        self.max_streams = max_streams
        self.script: dict[str, list[Scripted]] = defaultdict(list)
        # The bundle id each token was registered with; others must use TOPIC.
        self.topics: dict[str, str] = {}
        self.received: list[Received] = []
        # Every request, answered or not: (token, status or GOAWAY).
        self.answers: list[tuple[str, int | str]] = []
        # Provider tokens issued before this moment are answered ExpiredProviderToken.
        self.tokens_expire_before = 0.0
        self.provider_tokens: set[str] = set()
        self.connections = 0
        self.paused: asyncio.Event = asyncio.Event()
        self.paused.set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), "127.0.0.1", 0, ssl=self._context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """The settings that point the gateway here."""
        return {
            "GATEWAY_APNS_KEY_FILE": str(self.key_file),
            "GATEWAY_APNS_KEY_ID": KEY_ID,
            "GATEWAY_APNS_TEAM_ID": TEAM_ID,
            "GATEWAY_APNS_TOPIC": TOPIC,
            "GATEWAY_APNS_URL": self.url,
            "GATEWAY_PUSH_RESOLVE": self.resolve,
            "GATEWAY_PUSH_CA_FILE": str(self._ca.ca_file),
        }

    @property
    def resolve(self) -> str:
        return f"{HOST}:{self.port}:127.0.0.1"

    def delivered_to(self, token: str) -> int:
        return sum(1 for r in self.received if r.token == token)

    # ------------------------------------------------------------ checking

    def answer(self, headers: dict[str, str], body: bytes) -> tuple[int | str, dict[str, Any]]:
        """The status (or GOAWAY) and JSON body for one request."""
        path = headers.get(":path", "")
        token = path.removeprefix("/3/device/")
        if headers.get(":method") != "POST" or not path.startswith("/3/device/"):
            return 405, {"reason": "MethodNotAllowed"}
        refused = self._check_auth(headers.get("authorization", ""))
        if refused is not None:
            return 403, {"reason": refused}
        if not token or any(c not in "0123456789abcdef" for c in token):
            return 400, {"reason": "BadDeviceToken"}
        topic = headers.get("apns-topic")
        if topic is None:
            return 400, {"reason": "MissingTopic"}
        if topic != self.topics.get(token, TOPIC):
            return 400, {"reason": "DeviceTokenNotForTopic"}
        if headers.get("apns-push-type") not in {"alert", "background", "voip", "liveactivity"}:
            return 400, {"reason": "InvalidPushType"}
        if headers.get("apns-priority") not in {"5", "10", None}:
            return 400, {"reason": "BadPriority"}
        if not headers.get("apns-expiration", "0").isdigit():
            return 400, {"reason": "BadExpirationDate"}
        try:
            uuid.UUID(headers.get("apns-id", ""))
        except ValueError:
            return 400, {"reason": "BadMessageId"}
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return 400, {"reason": "BadCollapseId"}
        if len(body) > 4096:
            return 413, {"reason": "PayloadTooLarge"}
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, {"reason": "PayloadEmpty"}
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return 400, {"reason": "PayloadEmpty"}
        if self.script[token]:
            scripted = self.script[token].pop(0)
            if scripted == GOAWAY:
                return GOAWAY, {}
            if isinstance(scripted, int):
                scripted = Answer(scripted)
            assert isinstance(scripted, Answer)
            if scripted.status != 200:
                answer: dict[str, Any] = {"reason": scripted.reason or str(scripted.status)}
                if scripted.timestamp_ms is not None:
                    answer["timestamp"] = scripted.timestamp_ms
                if scripted.retry_after is not None:
                    answer["retry-after"] = scripted.retry_after
                return scripted.status, answer
        self.received.append(Received(token, headers, payload))
        return 200, {}

    def _check_auth(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme != "bearer" or not token:
            return "MissingProviderToken"
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, self._public_key, algorithms=["ES256"], options={"require": ["iat", "iss"]}
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if header.get("kid") != KEY_ID or claims.get("iss") != TEAM_ID:
            return "InvalidProviderToken"
        iat = claims["iat"]
        if not isinstance(iat, int) or iat < time.time() - 3600 or iat < self.tokens_expire_before:
            return "ExpiredProviderToken"
        self.provider_tokens.add(token)
        return None


class _Connection(asyncio.Protocol):
    """One client connection: h2's state machine fed from the TLS transport."""

    def __init__(self, fake: FakeApns) -> None:
        self._fake = fake
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self._streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        if ssl_object.selected_alpn_protocol() != "h2":
            transport.close()
            return
        self._fake.connections += 1
        self._h2.initiate_connection()
        self._h2.update_settings(
            {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._fake.max_streams}
        )
        transport.write(self._h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                self._streams[event.stream_id][1].extend(event.data)
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                asyncio.get_running_loop().create_task(self._respond(event.stream_id))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close()
        self._flush()

    async def _respond(self, stream_id: int) -> None:
        # A paused fake holds its answers: pushes stay in flight.
        await self._fake.paused.wait()
        if self._closing:
            return
        headers, body = self._streams.pop(stream_id)
        status, answer = self._fake.answer(headers, bytes(body))
        token = headers.get(":path", "").removeprefix("/3/device/")
        self._fake.answers.append((token, status))
        if status == GOAWAY:
            # This stream and every later one are not processed: the client
            # must send them again on a new connection.
            self._h2.close_connection(last_stream_id=max(stream_id - 2, 0))
            self._flush()
            self._close()
            return
        assert isinstance(status, int)
        response_headers = [(":status", str(status)), ("apns-id", headers.get("apns-id", ""))]
        if "retry-after" in answer:
            response_headers.append(("retry-after", str(answer.pop("retry-after"))))
        try:
            if status == 200:
                self._h2.send_headers(stream_id, response_headers, end_stream=True)
            else:
                content = orjson.dumps(answer)
                response_headers.append(("content-type", "application/json"))
                self._h2.send_headers(stream_id, response_headers)
                self._h2.send_data(stream_id, content, end_stream=True)
        except h2.exceptions.StreamClosedError:
            # The client gave up on the stream (its timeout) while we held it.
            return
        self._flush()

    def _flush(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._h2.data_to_send())

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
