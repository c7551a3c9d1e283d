"""gateway/delivery/net.py: the address rule, pins, the extra CA, HTTP/2 through the guard."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import certifi
import h2.config
import h2.connection
import h2.events
import httpcore
import httpx
import pytest
from aiohttp import web

from gateway.config import ConfigError, Settings
from gateway.delivery import net
from gateway.delivery.providers import Verdict
from tests.fakes.tls import TestCA

REFUSED = [
    "127.0.0.1",
    "127.9.9.9",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # the cloud metadata service
    "100.64.0.1",
    "0.0.0.0",  # noqa: S104  (an address to refuse, not one to bind)
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b:1:808:808::",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2002:7f00:1::",
    "2002:a9fe:a9fe::",
    "::127.0.0.1",
]
PUBLIC = [
    "64:ff9b::808:808",
    "2002:808:808::1",
    "8.8.8.8",
    "142.250.74.106",
    "2606:4700::1111",
    "2a00:1450:4001::200a",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", REFUSED)
def test_address_rule_refuses_non_global(address: str) -> None:
    assert not net.is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_address_rule_admits_global_unicast(address: str) -> None:
    assert net.is_public_address(ipaddress.ip_address(address))


def test_push_resolve_parses_curl_style_entries() -> None:
    settings = Settings.from_env(
        {"GATEWAY_PUSH_RESOLVE": "FCM.googleapis.com:443:127.0.0.1, [::1],push.example:8443:[::1]"}
    )
    pins = [(pin.host, pin.port, pin.addresses) for pin in settings.push_resolve]
    assert pins == [
        ("fcm.googleapis.com", 443, ("127.0.0.1", "::1")),
        ("push.example", 8443, ("::1",)),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("fcm.googleapis.com:443", "not host:port:address"),
        ("fcm.googleapis.com:443:localhost", "not an IP address"),
        ("fcm.googleapis.com:70000:127.0.0.1", "out of range"),
    ],
)
def test_push_resolve_refuses_malformed_entries(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"GATEWAY_PUSH_RESOLVE": raw})


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


async def _serve_https(
    context: ssl.SSLContext, connections: list[int] | None = None
) -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.host}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def https_port(ca: TestCA) -> AsyncIterator[int]:
    async for port in _serve_https(ca.server_context("push.example.com")):
        yield port


@pytest.fixture
async def counting_port() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP listener that counts the connections it accepts."""
    accepted: list[int] = []

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, accepted


def _settings(resolve: str = "", ca_file: Path | None = None) -> Settings:
    env = {"GATEWAY_PUSH_RESOLVE": resolve}
    if ca_file is not None:
        env["GATEWAY_PUSH_CA_FILE"] = str(ca_file)
    return Settings.from_env(env)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"])
async def test_loopback_is_refused_without_a_pin_and_never_connected(
    counting_port: tuple[int, list[int]], host: str
) -> None:
    port, accepted = counting_port
    async with net.build_client(_settings(), purpose="test") as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://{host}:{port}/")
    assert net.is_refused(caught.value)
    outcome = net.transport_outcome(caught.value)
    assert outcome.verdict is Verdict.FAILED
    assert outcome.alarm
    assert "GATEWAY_PUSH_RESOLVE" in (outcome.reason or "")
    assert accepted == []


async def test_a_pin_for_another_port_does_not_open_the_host(
    counting_port: tuple[int, list[int]],
) -> None:
    port, accepted = counting_port
    settings = _settings(f"push.example.com:{port + 1}:127.0.0.1")
    async with net.build_client(settings, purpose="test") as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://127.0.0.1:{port}/")
    assert net.is_refused(caught.value)
    assert accepted == []


async def test_pinned_host_reaches_loopback_over_tls_with_the_extra_ca(
    ca: TestCA, https_port: int
) -> None:
    settings = _settings(f"push.example.com:{https_port}:127.0.0.1", ca.ca_file)
    async with net.build_client(settings, purpose="test") as client:
        response = await client.get(f"https://push.example.com:{https_port}/")
    assert response.status_code == 200
    assert response.text == f"hello push.example.com:{https_port}"


async def test_tls_still_verifies_the_host_name_of_a_pinned_host(
    ca: TestCA, https_port: int
) -> None:
    # The certificate is for push.example.com; the pin sends another name there.
    settings = _settings(f"other.example.com:{https_port}:127.0.0.1", ca.ca_file)
    async with net.build_client(settings, purpose="test") as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"https://other.example.com:{https_port}/")
    assert not net.is_refused(caught.value)
    assert "certificate" in str(caught.value).lower()


async def test_without_the_ca_file_the_test_certificate_is_not_trusted(https_port: int) -> None:
    settings = _settings(f"push.example.com:{https_port}:127.0.0.1")
    async with net.build_client(settings, purpose="test") as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"https://push.example.com:{https_port}/")
    outcome = net.transport_outcome(caught.value)
    assert outcome.verdict is Verdict.RETRY
    assert outcome.alarm


def test_extra_ca_is_added_to_the_system_and_certifi_roots(ca: TestCA) -> None:
    context = net.ssl_context(str(ca.ca_file))
    subjects = {str(cert["subject"]) for cert in context.get_ca_certs()}
    certifi_only = net.ssl_context(None).get_ca_certs()
    assert len(context.get_ca_certs()) == len(certifi_only) + 1
    assert len(certifi_only) > 100
    assert any("ISRG Root X1" in subject for subject in subjects)  # a public root stays
    test_ca = ssl.PEM_cert_to_DER_cert(ca.ca_file.read_text())
    assert test_ca in context.get_ca_certs(binary_form=True)
    assert test_ca not in net.ssl_context(None).get_ca_certs(binary_form=True)
    assert Path(certifi.where()).is_file()


class _RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands for the network: records where it is asked to connect, then
    connects to the local test server instead of that public address."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.hosts: list[str] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return await self._real.connect_tcp("127.0.0.1", self.port, timeout=timeout)


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    lookups: list[str] = []
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return lookups


async def test_connects_to_the_checked_address_after_one_lookup(
    monkeypatch: pytest.MonkeyPatch, ca: TestCA, https_port: int
) -> None:
    lookups = _fake_dns(monkeypatch, {"push.example.com": ["93.184.216.34"]})
    recorder = _RecordingBackend(https_port)
    backend = net.GuardedBackend({}, inner=recorder)
    pool = httpcore.AsyncConnectionPool(
        ssl_context=net.ssl_context(str(ca.ca_file)), network_backend=backend
    )
    async with pool:
        response = await pool.request("GET", f"https://push.example.com:{https_port}/")
    assert response.status == 200
    # httpcore got an address, not a name it could look up again (DNS rebinding),
    # and TLS was verified against the name all the same.
    assert recorder.hosts == ["93.184.216.34"]
    assert lookups == ["push.example.com"]


@pytest.mark.parametrize("answers", [["10.1.2.3"], ["93.184.216.34", "127.0.0.1"], ["::1"]])
async def test_a_name_with_any_private_answer_is_refused(
    monkeypatch: pytest.MonkeyPatch, answers: list[str]
) -> None:
    _fake_dns(monkeypatch, {"rebind.example.com": answers})
    backend = net.GuardedBackend({})
    with pytest.raises(net.AddressRefused):
        await backend.connect_tcp("rebind.example.com", 443)


async def test_unresolvable_name_is_a_transient_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    async with net.build_client(_settings(), purpose="test") as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get("https://push.example.com/")
    assert net.transport_outcome(caught.value).verdict is Verdict.RETRY


class _H2Server(asyncio.Protocol):
    """The smallest HTTP/2 server: answers every stream 200 with its :path."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers).get(b":path", b"")
                self.h2.send_headers(
                    event.stream_id, [(":status", "200"), ("content-length", str(len(path)))]
                )
                self.h2.send_data(event.stream_id, path, end_stream=True)
        self.transport.write(self.h2.data_to_send())


@pytest.fixture
async def h2_port(ca: TestCA) -> AsyncIterator[int]:
    context = ca.server_context("api.push.example.com", alpn=("h2",))
    factory: Callable[[], asyncio.Protocol] = _H2Server
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_http2_goes_through_the_guard_and_multiplexes(ca: TestCA, h2_port: int) -> None:
    settings = _settings(f"api.push.example.com:{h2_port}:127.0.0.1", ca.ca_file)
    async with net.build_client(settings, purpose="test", http2=True) as client:
        responses = await asyncio.gather(
            *(client.get(f"https://api.push.example.com:{h2_port}/{n}") for n in range(5))
        )
    assert [r.http_version for r in responses] == ["HTTP/2"] * 5
    assert [r.text for r in responses] == [f"/{n}" for n in range(5)]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("Tue, 01 Dec 2026 20:01:30 GMT", 90.0),
        ("Tue, 01 Dec 2026 19:00:00 GMT", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    headers = httpx.Headers({} if value is None else {"Retry-After": value})
    now = datetime(2026, 12, 1, 20, 0, 0, tzinfo=UTC)
    assert net.retry_after(headers, now=now) == seconds


async def test_pins_are_logged_when_a_client_is_built(caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings("fcm.googleapis.com:443:10.9.8.7,oauth2.googleapis.com:443:10.9.8.6")
    with caplog.at_level("INFO", logger="gateway.delivery.net"):
        client = net.build_client(settings, purpose="fcm")
    await client.aclose()
    pinned = [
        (r.__dict__["purpose"], r.__dict__["host"], r.__dict__["port"], r.__dict__["addresses"])
        for r in caplog.records
        if r.getMessage() == "push host pinned"
    ]
    assert pinned == [
        ("fcm", "fcm.googleapis.com", 443, ["10.9.8.7"]),
        ("fcm", "oauth2.googleapis.com", 443, ["10.9.8.6"]),
    ]


async def test_a_pin_falls_back_to_its_next_address(ca: TestCA, https_port: int) -> None:
    # Nothing listens on 127.0.0.2 (the server is bound to 127.0.0.1 only).
    settings = _settings(f"push.example.com:{https_port}:127.0.0.2,127.0.0.1", ca.ca_file)
    async with net.build_client(settings, purpose="test") as client:
        response = await client.get(f"https://push.example.com:{https_port}/")
    assert response.status_code == 200


async def test_a_service_that_never_answers_times_out_as_a_retry() -> None:
    silent: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # keep it open, say nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent_port = server.sockets[0].getsockname()[1]
    settings = _settings(f"push.example.com:{silent_port}:127.0.0.1")
    async with server, net.build_client(settings, purpose="test", timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.get(f"http://push.example.com:{silent_port}/")
        for writer in silent:
            writer.close()
    outcome = net.transport_outcome(caught.value)
    assert (outcome.verdict, outcome.alarm) == (Verdict.RETRY, False)
