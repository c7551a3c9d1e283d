"""Cheap requests that must never starve the writes: scrapes, stalled fan-out readers, slow and
idle clients.

The first tests run the app in-process and pin each mechanism; the `stress`
ones run the gateway as `python -m gateway serve` on a private PostgreSQL
seeded with 200,000 registrations, run the abuse, and measure Layer and
Navixy write latency before and during it (printed as "abuse figures" at the
end of the run, the way the fault tests print theirs).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import exposition

from gateway.app import create_app
from gateway.commands import SessionRef
from gateway.config import ConfigError, Settings
from gateway.keys import EXECUTOR, INTERNAL_STORE
from gateway.observability import metrics as observability
from gateway.store import apply_schema
from tests.conftest import ClientFactory, layer_headers
from tests.faults_support import (
    BIND,
    Figures,
    PrivatePostgres,
    client_session,
    describe_durations,
    registrations_locked,
    running_gateway,
    wait_until,
)

ADMIN_KEY = "abuse-test-admin-key-0f3a9c2e7b"
METRICS_KEY = "abuse-test-metrics-key-5d1e8b"
TARGETS = "/internal/v1/targets"


async def seed(
    db: asyncpg.Connection, users: int, per_user: int, prefix: str = "bulk"
) -> list[str]:
    """users x per_user live registrations, written straight into the tables; the user ids."""
    await db.execute(
        """
        INSERT INTO sessions (token_sha256, user_id, expires_at)
        SELECT sha256(($1 || '-' || i)::bytea), $1 || '-' || i, now() + interval '1 hour'
        FROM generate_series(1, $2) AS i
        """,
        prefix,
        users,
    )
    await db.execute(
        """
        INSERT INTO registrations (user_id, session_id, device_id, provider, token)
        SELECT s.user_id, s.id, 'device-' || d, 'fcm', 'bulk:' || s.user_id || ':' || d
        FROM sessions AS s CROSS JOIN generate_series(1, $2) AS d
        WHERE s.user_id LIKE $1 || '-%'
        """,
        prefix,
        per_user,
    )
    await db.execute("ANALYZE registrations")
    return [f"{prefix}-{i}" for i in range(1, users + 1)]


async def new_session(db: asyncpg.Connection, user: str) -> str:
    token = os.urandom(16).hex()
    await db.execute(
        "INSERT INTO sessions (token_sha256, user_id, expires_at)"
        " VALUES ($1, $2, now() + interval '1 day')",
        SessionRef.from_token(token).token_sha256,
        user,
    )
    return token


async def transactions_left_open(db: asyncpg.Connection) -> int:
    """Backends of this database idle inside a transaction, this connection's own aside."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
    )
    return count


# ------------------------------------------------------------------ abusive peers


async def raw_connection(port: int, receive_buffer: int | None = None) -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter
]:
    """A plain TCP connection; a small ``receive_buffer`` makes a stalled reader stall sooner."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


@dataclass
class StalledReader:
    """Asks for a large fan-out, reads its first bytes, then never reads again."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    first_bytes: bytes = b""

    @classmethod
    async def start(cls, port: int, users: list[str], key: str = ADMIN_KEY) -> StalledReader:
        reader, writer = await raw_connection(port, receive_buffer=4096)
        body = orjson.dumps({"users": users, "category": "chat_message"})
        writer.write(
            b"POST " + TARGETS.encode() + b" HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        stalled = cls(reader, writer)
        stalled.first_bytes = await reader.read(1024)
        return stalled

    async def is_cut_off(self) -> bool:
        """Whether the gateway has ended the stream: reads what it sent, to its end."""
        try:
            while await asyncio.wait_for(self.reader.read(1 << 20), 5):
                pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def close(self) -> None:
        self.writer.transport.abort()


async def dribble(
    writer: asyncio.StreamWriter,
    data: bytes,
    pace: float,
    on_byte: Callable[[], object] = lambda: None,
) -> None:
    """Send ``data`` a byte every ``pace`` seconds, until done or the peer hangs up."""
    with suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            on_byte()
            await asyncio.sleep(pace)


class SlowLoris:
    """Sends ``request`` a byte every ``pace`` seconds, then waits; notes when the gateway hangs up.

    ``closed_after`` is the time from the connection opening to its end, None
    while it lasts; ``answer`` what the gateway sent before it closed.
    """

    def __init__(self, port: int, request: bytes, pace: float, at_once: bytes = b"") -> None:
        self.port = port
        self.request = request
        self.pace = pace
        # Sent in one piece before the dribble: a head, for a slow body.
        self.at_once = at_once
        self.closed_after: float | None = None
        self.sent = 0
        self.answer = b""

    async def run(self) -> None:
        reader, writer = await raw_connection(self.port)
        started = time.monotonic()
        writer.write(self.at_once)
        dribble = asyncio.create_task(self._dribble(writer))
        try:
            while chunk := await reader.read(65536):
                self.answer += chunk
        except ConnectionError:
            pass
        finally:
            self.closed_after = time.monotonic() - started
            dribble.cancel()
            with suppress(asyncio.CancelledError):
                await dribble
            writer.transport.abort()

    async def _dribble(self, writer: asyncio.StreamWriter) -> None:
        def count() -> None:
            self.sent += 1

        await dribble(writer, self.request, self.pace, count)



# ------------------------------------------------------------------ 1. /metrics


@pytest.fixture
async def gateway(
    aiohttp_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> TestClient:  # type: ignore[type-arg]
    return await aiohttp_client(
        create_app(replace(settings, admin_token=ADMIN_KEY, metrics_refresh_seconds=0.05))
    )


def gauge(text: str, provider: str) -> float | None:
    prefix = f'gateway_registrations{{provider="{provider}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


async def test_a_scrape_answers_from_the_last_count_while_the_table_is_locked(
    gateway, db, database_url
):
    await seed(db, users=10, per_user=3)

    async def counted() -> bool:
        return gauge(await (await gateway.get("/metrics")).text(), "fcm") == 30

    await wait_until(counted, within=10, what="the gauge to count the seeded rows")
    async with registrations_locked(database_url):
        # A count would now wait for the lock: a scrape must not be one.
        response = await asyncio.wait_for(gateway.get("/metrics"), 2)
        text = await response.text()
    assert response.status == 200
    assert gauge(text, "fcm") == 30


async def test_scrapes_do_not_count_the_table(gateway, db, monkeypatch):
    store = gateway.app[INTERNAL_STORE]
    counts: list[float] = []
    real = store.count_registrations_by_provider

    async def counting() -> dict[str, int]:
        counts.append(time.monotonic())
        found: dict[str, int] = await real()
        return found

    monkeypatch.setattr(store, "count_registrations_by_provider", counting)
    monkeypatch.setattr(gateway.app[EXECUTOR].store, "count_registrations_by_provider", counting)
    await wait_until(lambda: len(counts) >= 1, within=10, what="a background count")
    before = len(counts)
    for _ in range(50):
        assert (await gateway.get("/metrics")).status == 200
    # Fifty scrapes; the background may have counted a few times meanwhile,
    # never once a scrape.
    assert len(counts) - before < 50


async def test_scrapes_in_a_loop_render_the_text_once_a_second(client, monkeypatch):
    renders: list[float] = []
    real = exposition.generate_latest

    def counting(registry: Any) -> bytes:
        renders.append(time.monotonic())
        rendered: bytes = real(registry)
        return rendered

    monkeypatch.setattr("gateway.observability.metrics.generate_latest", counting)
    started = time.monotonic()
    texts = {await (await client.get("/metrics")).read() for _ in range(50)}
    elapsed = time.monotonic() - started
    assert len(renders) <= 1 + elapsed / observability.RENDER_INTERVAL
    assert len(texts) == len(renders)


async def test_metrics_key_is_required_when_set(aiohttp_client, settings, db):
    client = await aiohttp_client(create_app(replace(settings, metrics_token=METRICS_KEY)))
    for headers in (
        {},
        {"Authorization": "Bearer wrong-key-of-enough-length"},
        {"Authorization": f"Basic {METRICS_KEY}"},
        {"Authorization": f"Bearer {METRICS_KEY}x"},
    ):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"gateway_" not in await response.read()
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert response.status == 200
    assert "gateway_http_requests_total" in await response.text()


def test_metrics_key_must_be_long_visible_ascii():
    with pytest.raises(ConfigError, match="GATEWAY_METRICS_TOKEN"):
        Settings.from_env({"GATEWAY_METRICS_TOKEN": "short"})
    with pytest.raises(ConfigError, match="GATEWAY_METRICS_TOKEN"):
        Settings.from_env({"GATEWAY_METRICS_TOKEN": "has a space in it, sixteen+"})
    assert Settings.from_env({"GATEWAY_METRICS_TOKEN": METRICS_KEY}).metrics_token == METRICS_KEY
    assert Settings.from_env({}).metrics_token is None


# ------------------------------------------------------------------ 2. fan-out readers


async def test_stalled_fan_out_readers_leave_the_public_writes_their_connections(
    aiohttp_client, settings, db
):
    users = await seed(db, users=2000, per_user=20)
    client = await aiohttp_client(
        create_app(
            replace(
                settings,
                admin_token=ADMIN_KEY,
                pool_max_size=2,
                internal_pool_max_size=2,
                internal_write_timeout=5.0,
            )
        )
    )
    port = client.server.port
    assert port is not None
    token = await new_session(db, "writer")
    stalled = [await StalledReader.start(port, users) for _ in range(2)]
    try:
        assert all(s.first_bytes.startswith(b"HTTP/1.1 200") for s in stalled)
        # Both internal connections are held by the stalled streams; the two
        # public ones are not.
        assert client.app[INTERNAL_STORE].pool_usage()[1] == 0
        for number in range(5):
            response = await client.post(
                "/push_tokens",
                json={"token": f"fcm-writer-{number}", "type": "gcm", "device_id": f"d{number}"},
                headers=layer_headers(token),
            )
            assert response.status == 202, await response.text()
        # Cut off after the write timeout, the streams' transactions closed
        # and their connections back in the internal pool.
        await wait_until(
            lambda: client.app[INTERNAL_STORE].pool_usage()[1] == 2,
            within=30, what="the internal connections to come back",
        )
        assert await transactions_left_open(db) == 0
        for reader in stalled:
            assert await reader.is_cut_off()
    finally:
        for reader in stalled:
            reader.close()


async def test_a_fan_out_read_slowly_is_cut_off_at_the_stream_timeout(
    aiohttp_client, settings, db
):
    users = await seed(db, users=2000, per_user=20)
    client = await aiohttp_client(
        create_app(
            replace(
                settings,
                admin_token=ADMIN_KEY,
                internal_write_timeout=10.0,
                internal_stream_timeout=1.5,
            )
        )
    )
    pool = client.app[INTERNAL_STORE]
    started = time.monotonic()
    reader = await StalledReader.start(port_of(client), users)
    size, idle, _ = pool.pool_usage()
    assert idle < size, "the stream holds an internal connection"

    async def read_slowly() -> None:
        # Steadily, ~80 KB/s: no write waits anywhere near the write timeout,
        # and the whole answer (~8 MB) would take well over a minute.
        with suppress(ConnectionError):
            while True:
                if not await reader.reader.read(8192):
                    return
                await asyncio.sleep(0.1)

    reading = asyncio.create_task(read_slowly())
    try:
        await wait_until(
            lambda: pool.pool_usage()[1] == pool.pool_usage()[0],
            within=30, what="the stream to give its connection back",
        )
        elapsed = time.monotonic() - started
        assert not reading.done(), "the answer was read to its end"
        assert await transactions_left_open(db) == 0
    finally:
        reading.cancel()
        reader.close()
    # The cut comes at the first write after the deadline.
    assert 1.5 <= elapsed < 10


def test_internal_pool_and_write_timeout_settings():
    settings = Settings.from_env(
        {"GATEWAY_INTERNAL_POOL_MAX_SIZE": "3", "GATEWAY_INTERNAL_WRITE_TIMEOUT": "2.5"}
    )
    assert (settings.internal_pool_max_size, settings.internal_write_timeout) == (3, 2.5)
    assert Settings.from_env({}).internal_stream_timeout == 300
    assert Settings.from_env(
        {"GATEWAY_INTERNAL_STREAM_TIMEOUT": "60"}
    ).internal_stream_timeout == 60
    with pytest.raises(ConfigError, match="GATEWAY_INTERNAL_WRITE_TIMEOUT"):
        Settings.from_env({"GATEWAY_INTERNAL_WRITE_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="GATEWAY_INTERNAL_POOL_MAX_SIZE"):
        Settings.from_env({"GATEWAY_INTERNAL_POOL_MAX_SIZE": "0"})


# ------------------------------------------------------------------ 3. slow and idle clients

# A request head long enough to take a while at a byte per PACE seconds.
SLOW_HEAD = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
PACE = 0.02


@pytest.fixture
async def strict(
    aiohttp_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> TestClient:  # type: ignore[type-arg]
    """The gateway with short limits: heads 0.5 s, bodies 0.5 s, idle connections 1 s."""
    return await aiohttp_client(
        create_app(replace(settings, head_timeout=0.5, body_timeout=0.5, keepalive_timeout=1.0))
    )


def port_of(client: TestClient) -> int:  # type: ignore[type-arg]
    port = client.server.port
    assert port is not None
    return port


async def test_a_head_sent_a_byte_at_a_time_is_cut_off_at_the_head_timeout(strict):
    loris = SlowLoris(port_of(strict), SLOW_HEAD, PACE)
    # Without a head timeout this would last until aiohttp's idle limit, an hour.
    await asyncio.wait_for(loris.run(), 10)
    assert loris.closed_after is not None
    assert 0.5 <= loris.closed_after < 5
    assert loris.sent < len(SLOW_HEAD)
    assert loris.answer == b""


async def test_a_body_that_trickles_is_cut_off_at_the_body_timeout(strict, db):
    token = await new_session(db, "slow")
    body = orjson.dumps({"token": "fcm-slow-body-0001", "type": "gcm", "device_id": "slow"})
    head = (
        b"POST /push_tokens HTTP/1.1\r\nHost: gateway\r\n"
        b"Accept: application/vnd.layer+json; version=1.0\r\n"
        b'Authorization: Layer session-token="' + token.encode() + b'"\r\n'
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    reader, writer = await raw_connection(port_of(strict))
    writer.write(head)
    await writer.drain()
    started = time.monotonic()
    loris = asyncio.create_task(dribble(writer, body, PACE))
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        loris.cancel()
        writer.transport.abort()
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    # Cut off before it could be written.
    assert not answer.startswith(b"HTTP/1.1 202")
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(strict):
    reader, writer = await raw_connection(port_of(strict))
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await writer.drain()
        answered = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 10)
        idle = time.monotonic() - answered
    finally:
        writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 200")
    assert 1.0 <= idle < 5


async def test_requests_that_arrive_in_good_time_keep_their_connection(strict):
    reader, writer = await raw_connection(port_of(strict))
    try:
        for _ in range(6):
            # The head in two pieces, well inside the head timeout; the idle
            # gaps well inside the keep-alive timeout.
            writer.write(b"GET /health/live HTTP/1.1\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"Host: gateway\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(0.3)
    finally:
        writer.transport.abort()


def test_client_timeouts_are_settings():
    settings = Settings.from_env(
        {
            "GATEWAY_HEAD_TIMEOUT": "3",
            "GATEWAY_BODY_TIMEOUT": "7.5",
            "GATEWAY_KEEPALIVE_TIMEOUT": "20",
        }
    )
    assert (settings.head_timeout, settings.body_timeout, settings.keepalive_timeout) == (
        3, 7.5, 20
    )
    defaults = Settings.from_env({})
    assert (defaults.head_timeout, defaults.body_timeout, defaults.keepalive_timeout) == (
        10, 30, 30
    )
    for name in ("GATEWAY_HEAD_TIMEOUT", "GATEWAY_BODY_TIMEOUT", "GATEWAY_KEEPALIVE_TIMEOUT"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "0"})


# ------------------------------------------------------------------ under load, as a process

FIGURES = Figures("abuse figures")

# Registrations in the stress database: at this size the old per-scrape count
# took tens of milliseconds of a pooled connection.
STRESS_USERS = 8000
STRESS_PER_USER = 25
WRITERS = 16
BASELINE_SECONDS = 3.0
ABUSE_SECONDS = 8.0


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Figures:
    FIGURES.attach(request.config, "abuse-figures")
    return FIGURES


@dataclass
class StressDatabase:
    server: PrivatePostgres
    users: list[str]

    @property
    def dsn(self) -> str:
        return self.server.dsn


@pytest.fixture(scope="module")
def stress_db() -> Iterator[StressDatabase]:
    server = PrivatePostgres()

    async def prepare() -> list[str]:
        await apply_schema(server.dsn)
        connection = await asyncpg.connect(server.dsn)
        try:
            return await seed(connection, STRESS_USERS, STRESS_PER_USER)
        finally:
            await connection.close()

    try:
        yield StressDatabase(server, asyncio.run(prepare()))
    finally:
        server.destroy()


@dataclass
class WriteLoad:
    """WRITERS clients, each with its own session, alternating Layer register and Navixy bind."""

    url: str
    dsn: str
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"layer": [], "navixy": []})
    statuses: dict[int | str, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            tokens = [await new_session(connection, f"writer-{n}") for n in range(WRITERS)]
        finally:
            await connection.close()
        async with client_session(timeout=30) as http:
            await asyncio.gather(*(self._writer(http, n, t) for n, t in enumerate(tokens)))

    def stop(self) -> None:
        self._stop.set()

    def window(self) -> WriteLoad:
        """Forget what was measured so far: the figures from now on."""
        self.latencies = {"layer": [], "navixy": []}
        self.statuses = {}
        return self

    async def _writer(self, http: aiohttp.ClientSession, number: int, token: str) -> None:
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            dialect = "layer" if sequence % 2 else "navixy"
            started = time.monotonic()
            try:
                if dialect == "layer":
                    request = http.post(
                        f"{self.url}/push_tokens",
                        json={
                            "token": f"fcm-w{number}-{sequence}",
                            "type": "gcm",
                            "device_id": f"device-{sequence % 5}",
                        },
                        headers=layer_headers(token),
                    )
                else:
                    request = http.post(
                        f"{self.url}{BIND}",
                        json={
                            "hash": token,
                            "application": "navixy_android_viewer",
                            "token": f"fcm-n{number}-{sequence}",
                        },
                    )
                async with request as response:
                    await response.read()
                    status: int | str = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            self.latencies[dialect].append(time.monotonic() - started)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def non_2xx(self) -> dict[int | str, int]:
        return {s: n for s, n in self.statuses.items() if not (isinstance(s, int) and s < 300)}

    def answered_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if isinstance(s, int) and s < 300)

    def describe(self) -> dict[str, str]:
        return {
            "layer": describe_durations(self.latencies["layer"]),
            "navixy": describe_durations(self.latencies["navixy"]),
            "2xx": str(self.answered_2xx()),
            "other": str(self.non_2xx() or "none"),
        }


@asynccontextmanager
async def write_load(url: str, dsn: str) -> AsyncIterator[WriteLoad]:
    load = WriteLoad(url, dsn)
    task = asyncio.create_task(load.run())
    try:
        yield load
    finally:
        load.stop()
        await task


async def measure(load: WriteLoad, seconds: float) -> dict[str, str]:
    load.window()
    await asyncio.sleep(seconds)
    return load.describe()


def stress_environment(**extra: str) -> dict[str, str]:
    return {"GATEWAY_ADMIN_TOKEN": ADMIN_KEY, **extra}


@pytest.mark.stress
async def test_writes_stay_2xx_while_32_scrapers_hammer_metrics(
    stress_db: StressDatabase, tmp_path, figures: Figures
):
    scrapes: list[float] = []
    scans_before = await table_scans(stress_db.dsn)
    async with running_gateway(
        stress_db.dsn, tmp_path, workers=2, environment=stress_environment()
    ) as gateway, write_load(gateway.url, stress_db.dsn) as load:
        baseline = await measure(load, BASELINE_SECONDS)
        stop = asyncio.Event()

        async def scraper(http: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                started = time.monotonic()
                async with http.get(f"{gateway.url}/metrics") as response:
                    await response.read()
                    assert response.status == 200
                scrapes.append(time.monotonic() - started)

        async with client_session(timeout=60) as http:
            scrapers = [asyncio.create_task(scraper(http)) for _ in range(32)]
            try:
                abused = await measure(load, ABUSE_SECONDS)
            finally:
                stop.set()
                await asyncio.gather(*scrapers)
        assert load.non_2xx() == {}, abused
        assert load.answered_2xx() > 0
    # Read once the gateway has exited, so that its backends' statistics are
    # flushed. A count is a pass over the table; the writes use its indexes.
    scans = await table_scans(stress_db.dsn) - scans_before
    assert scans < len(scrapes) / 100, (scans, len(scrapes))
    figures.add(
        "32 concurrent /metrics scrapers",
        registrations=STRESS_USERS * STRESS_PER_USER,
        writes_before=baseline,
        writes_during=abused,
        scrapes=describe_durations(scrapes),
        passes_over_registrations=scans,
    )


async def table_scans(dsn: str) -> int:
    """How many sequential scans of registrations the database has run."""
    connection = await asyncpg.connect(dsn)
    try:
        # Statistics reach the shared counters within a second of a backend's
        # transaction; wait for them to settle.
        previous = -1
        while True:
            await connection.execute("SELECT pg_stat_clear_snapshot()")
            scans: int = await connection.fetchval(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'registrations'"
            )
            if scans == previous:
                return scans
            previous = scans
            await asyncio.sleep(1.5)
    finally:
        await connection.close()


@pytest.mark.stress
async def test_writes_stay_2xx_while_8_fan_out_readers_stall(
    stress_db: StressDatabase, tmp_path, figures: Figures
):
    write_timeout = 3.0
    # One worker with the default public pool of 8: eight stalled streams on
    # that pool would leave the writes none.
    async with running_gateway(
        stress_db.dsn,
        tmp_path,
        workers=1,
        environment=stress_environment(GATEWAY_INTERNAL_WRITE_TIMEOUT=str(write_timeout)),
    ) as gateway, write_load(gateway.url, stress_db.dsn) as load:
        baseline = await measure(load, BASELINE_SECONDS)
        port = int(gateway.url.rsplit(":", 1)[1])
        monitor = await asyncpg.connect(stress_db.dsn)
        started = time.monotonic()
        stalled = await asyncio.gather(
            *(StalledReader.start(port, stress_db.users) for _ in range(8))
        )
        try:
            streaming = sum(s.first_bytes.startswith(b"HTTP/1.1 200") for s in stalled)

            async def until_closed() -> float:
                # From the readers' start: their streams stall once the
                # sockets' buffers are full, then the write timeout runs.
                await wait_until(
                    lambda: transactions_none_open(monitor),
                    within=write_timeout + 30, interval=0.1,
                    what="the stalled streams' transactions to close",
                )
                return time.monotonic() - started

            closing = asyncio.create_task(until_closed())
            abused = await measure(load, ABUSE_SECONDS)
            assert load.non_2xx() == {}, abused
            assert load.answered_2xx() > 0
            closed_after = await closing
            streams = [s for s in stalled if s.first_bytes.startswith(b"HTTP/1.1 200")]
            cut = sum(await asyncio.gather(*(s.is_cut_off() for s in streams)))
        finally:
            await monitor.close()
            for reader in stalled:
                reader.close()
    # A worker's internal pool (4) may be full when the kernel hands it a 5th
    # stream: that one is refused, the public writes untouched.
    refused = [s.first_bytes.split(b"\r\n", 1)[0] for s in stalled if s not in streams]
    assert all(line == b"HTTP/1.1 503 Service Unavailable" for line in refused), refused
    assert streaming >= 4
    assert cut == streaming
    figures.add(
        "8 stalled /internal/v1/targets readers",
        audience=f"{len(stress_db.users)} users, {len(stress_db.users) * STRESS_PER_USER} rows",
        streams_started=streaming,
        writes_before=baseline,
        writes_during=abused,
        every_transaction_closed_after=f"{closed_after:.1f} s (write timeout {write_timeout:g} s)",
        readers_cut_off=cut,
        refused_503_internal_pool_full=len(refused),
    )


async def transactions_none_open(connection: asyncpg.Connection) -> bool:
    return await transactions_left_open(connection) == 0


@pytest.mark.stress
async def test_writes_stay_2xx_while_slow_loris_sockets_trickle(
    stress_db: StressDatabase, tmp_path, figures: Figures
):
    head_timeout, body_timeout, keepalive = 2.0, 2.0, 3.0
    token = os.urandom(16).hex()
    body = orjson.dumps({"token": "fcm-loris", "type": "gcm", "device_id": "loris"})
    body_head = (
        b"POST /push_tokens HTTP/1.1\r\nHost: gateway\r\n"
        b"Accept: application/vnd.layer+json; version=1.0\r\n"
        b'Authorization: Layer session-token="' + token.encode() + b'"\r\n'
        b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    async with running_gateway(
        stress_db.dsn,
        tmp_path,
        workers=2,
        environment=stress_environment(
            GATEWAY_HEAD_TIMEOUT=str(head_timeout),
            GATEWAY_BODY_TIMEOUT=str(body_timeout),
            GATEWAY_KEEPALIVE_TIMEOUT=str(keepalive),
        ),
    ) as gateway, write_load(gateway.url, stress_db.dsn) as load:
        baseline = await measure(load, BASELINE_SECONDS)
        port = int(gateway.url.rsplit(":", 1)[1])
        # A byte every half second: heads, bodies, and connections that say nothing.
        lorises = (
            [SlowLoris(port, SLOW_HEAD, 0.5) for _ in range(400)]
            + [SlowLoris(port, body * 100, 0.5, at_once=body_head) for _ in range(200)]
            + [SlowLoris(port, b"", 0.5) for _ in range(200)]
        )
        tasks = [asyncio.create_task(loris.run()) for loris in lorises]
        try:
            abused = await measure(load, ABUSE_SECONDS)
            assert load.non_2xx() == {}, abused
            assert load.answered_2xx() > 0
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            for task in tasks:
                task.cancel()
    closed = [loris.closed_after for loris in lorises if loris.closed_after is not None]
    assert len(closed) == len(lorises)
    heads = [loris.closed_after or 0 for loris in lorises[:400]]
    bodies = [loris.closed_after or 0 for loris in lorises[400:600]]
    idle = [loris.closed_after or 0 for loris in lorises[600:]]
    # A slow head may not outlive its limit by much, nor an idle connection.
    assert max(heads) < head_timeout + 5
    assert max(idle) < keepalive + 5
    figures.add(
        "800 slow-loris sockets (400 heads, 200 bodies, 200 silent; a byte each 0.5 s)",
        limits=f"head {head_timeout:g} s, body {body_timeout:g} s, idle {keepalive:g} s",
        writes_before=baseline,
        writes_during=abused,
        heads_closed_after=describe_durations(heads),
        bodies_closed_after=describe_durations(bodies),
        silent_closed_after=describe_durations(idle),
    )
