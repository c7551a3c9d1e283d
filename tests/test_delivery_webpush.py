"""The Web Push provider against a fake push service that checks VAPID and decrypts payloads."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.app import create_app
from gateway.commands import Provider
from gateway.config import ConfigError, Settings
from gateway.delivery import webpush
from gateway.delivery.providers import Outcome, PushProvider, Verdict
from tests.conftest import ClientFactory
from tests.fakes import webpush as fake_webpush
from tests.fakes.pushes import make_push
from tests.fakes.tls import TestCA
from tests.fakes.webpush import FakeWebPush, Subscription
from tests.test_cli import Result, gateway

SUBJECT = "mailto:push-ops@example.com"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
def vapid_key(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "vapid.pem"
    return path, webpush.generate_vapid_key(path)


@pytest.fixture
async def fake(ca: TestCA, vapid_key: tuple[Path, str]) -> AsyncIterator[FakeWebPush]:
    server = FakeWebPush(ca, vapid_key[1])
    await server.start()
    yield server
    await server.close()


def env(fake: FakeWebPush, vapid_key: tuple[Path, str]) -> dict[str, str]:
    return {
        "GATEWAY_VAPID_PRIVATE_KEY": str(vapid_key[0]),
        "GATEWAY_VAPID_SUBJECT": SUBJECT,
        "GATEWAY_PUSH_RESOLVE": fake.resolve,
        "GATEWAY_PUSH_CA_FILE": str(fake.ca.ca_file),
    }


@pytest.fixture
async def provider(
    fake: FakeWebPush, vapid_key: tuple[Path, str]
) -> AsyncIterator[webpush.WebPushProvider]:
    built = webpush.WebPushProvider.from_settings(Settings.from_env(env(fake, vapid_key)))
    assert built is not None
    yield built
    await built.close()


async def send(provider: PushProvider, subscription: Subscription, **fields: Any) -> Outcome:
    push = make_push(
        Provider.WEBPUSH,
        subscription.endpoint,
        webpush_p256dh=subscription.p256dh,
        webpush_auth=subscription.auth,
        **fields,
    )
    return await provider.send(push)


async def test_the_service_decrypts_the_portable_message(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    subscription = fake.subscribe()
    outcome = await send(provider, subscription)
    assert (outcome.verdict, outcome.status) == (Verdict.DELIVERED, 201)
    [received] = fake.received
    assert orjson.loads(received.plaintext) == {
        "title": "Bob",
        "body": "Are we still on for 7?",
        "data": {"conversation": "c-42"},
        "category": "chat_message",
        "id": "5f0c7a43-0d9e-4a53-9a57-3c1d2e9e4b11",
    }
    assert received.headers["Content-Encoding"] == "aes128gcm"
    assert int(received.headers["TTL"]) in {3599, 3600}
    assert received.headers["Urgency"] == "high"
    assert "Topic" not in received.headers


async def test_a_webpush_override_is_the_plaintext_exactly(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    override = {"notification": {"title": "Hi", "tag": "x"}, "n": [1, 2.5, None], "é": "ü"}
    await send(provider, fake.subscribe(), override=override)
    assert fake.received[0].plaintext == orjson.dumps(override)
    assert orjson.loads(fake.received[0].plaintext) == override


@pytest.mark.parametrize("host", fake_webpush.HOSTS)
async def test_vapid_audience_is_the_endpoint_origin(
    provider: webpush.WebPushProvider, fake: FakeWebPush, host: str
) -> None:
    subscription = fake.subscribe(host)
    assert (await send(provider, subscription)).verdict is Verdict.DELIVERED
    claims = fake.received[0].claims
    assert claims["aud"] == f"https://{host}:{fake.port}"
    assert claims["sub"] == SUBJECT
    assert time.time() + 6 * 3600 <= claims["exp"] <= time.time() + 24 * 3600
    assert fake.received[0].headers["Authorization"].endswith(f"k={provider.signer.public_key}")


async def test_padded_subscription_keys_work(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    subscription = fake.subscribe(padded=True)
    assert subscription.auth.endswith("==")
    assert (await send(provider, subscription)).verdict is Verdict.DELIVERED


async def test_topic_ttl_and_urgency_headers(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    subscription = fake.subscribe()
    expires = datetime.now(UTC) + timedelta(seconds=90)
    await send(
        provider, subscription, collapse_key="chat-c-42", priority="normal", expires_at=expires
    )
    headers = fake.received[0].headers
    assert headers["Topic"] == "chat-c-42"
    assert headers["Urgency"] == "normal"
    assert int(headers["TTL"]) in {89, 90}


async def test_a_collapse_key_that_is_no_topic_is_hashed_to_one(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    subscription = fake.subscribe()
    key = "conversation:c-42/everyone-in-the-room"  # 38 characters, ':' and '/'
    await send(provider, subscription, collapse_key=key)
    await send(provider, subscription, collapse_key=key)
    topics = [r.headers["Topic"] for r in fake.received]
    assert topics[0] == topics[1] == webpush.topic(key)
    assert len(topics[0]) == 32
    assert webpush.topic("x" * 32) == "x" * 32
    assert webpush.topic("x" * 33) != "x" * 32
    assert webpush.topic("a b") not in {None, "a b"}
    assert webpush.topic(None) is None


@pytest.mark.parametrize(
    ("status", "verdict", "alarm"),
    [
        (200, Verdict.DELIVERED, False),
        (201, Verdict.DELIVERED, False),
        (202, Verdict.DELIVERED, False),
        (404, Verdict.PRUNE, False),
        (410, Verdict.PRUNE, False),
        (413, Verdict.FAILED, True),
        (400, Verdict.FAILED, True),
        (401, Verdict.FAILED, True),
        (403, Verdict.FAILED, True),
        (429, Verdict.RETRY, False),
        (500, Verdict.RETRY, False),
        (502, Verdict.RETRY, False),
        (503, Verdict.RETRY, False),
    ],
)
async def test_answers_are_classified_as_delivery_md_says(
    provider: webpush.WebPushProvider,
    fake: FakeWebPush,
    status: int,
    verdict: Verdict,
    alarm: bool,
) -> None:
    subscription = fake.subscribe()
    fake.script[subscription.endpoint] = [status]
    outcome = await send(provider, subscription)
    assert (outcome.verdict, outcome.status, outcome.alarm) == (verdict, status, alarm)
    assert outcome.quota is (status == 429)
    assert len(fake.received) == 1  # it was decrypted all the same


async def test_retry_after_is_honoured(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    subscription = fake.subscribe()
    fake.script[subscription.endpoint] = [fake_webpush.Answer(429, {"Retry-After": "42"})]
    outcome = await send(provider, subscription)
    assert (outcome.verdict, outcome.retry_after) == (Verdict.RETRY, 42)
    assert (await send(provider, subscription)).verdict is Verdict.DELIVERED


async def test_a_service_that_does_not_know_our_key_fails_with_an_alarm(
    ca: TestCA, tmp_path: Path, vapid_key: tuple[Path, str]
) -> None:
    other = webpush.generate_vapid_key(tmp_path / "other.pem")
    server = FakeWebPush(ca, other)
    await server.start()
    provider = webpush.WebPushProvider.from_settings(Settings.from_env(env(server, vapid_key)))
    assert provider is not None
    try:
        subscription = server.subscribe()
        outcome = await send(provider, subscription)
    finally:
        await provider.close()
        await server.close()
    assert (outcome.verdict, outcome.status, outcome.alarm) == (Verdict.FAILED, 401, True)
    assert server.refused == [(subscription.endpoint, "VAPID: k is not the application server key")]


async def test_the_largest_plaintext_fits_one_record_and_one_more_byte_does_not(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    subscription = fake.subscribe()
    # {"p":"xxx..."} is 8 bytes of JSON around the string
    largest = {"p": "x" * (webpush.PLAINTEXT_LIMIT - 8)}
    push = make_push(Provider.WEBPUSH, subscription.endpoint, override=largest)
    assert webpush.plaintext_size(push) == webpush.PLAINTEXT_LIMIT == 3993
    assert (await send(provider, subscription, override=largest)).verdict is Verdict.DELIVERED
    assert len(fake.received[0].plaintext) == 3993

    too_large = {"p": "x" * (webpush.PLAINTEXT_LIMIT - 7)}
    outcome = await send(provider, subscription, override=too_large)
    assert (outcome.verdict, outcome.alarm) == (Verdict.FAILED, True)
    assert "3994 bytes" in (outcome.reason or "")
    assert len(fake.received) == 1


async def test_vapid_token_is_reused_per_origin(
    provider: webpush.WebPushProvider, fake: FakeWebPush
) -> None:
    for host in (fake_webpush.MOZILLA, fake_webpush.MOZILLA, fake_webpush.APPLE):
        await send(provider, fake.subscribe(host))
    tokens = [r.headers["Authorization"] for r in fake.received]
    assert tokens[0] == tokens[1] != tokens[2]


@pytest.mark.parametrize(
    ("endpoint", "p256dh", "auth", "reason"),
    [
        ("http://updates.push.services.mozilla.com/wpush/v2/x", None, None, "not an https URL"),
        ("https://updates.push.services.mozilla.com/wpush/v2/x", "AAAA", None, "keys are not"),
        ("https://updates.push.services.mozilla.com/wpush/v2/x", None, "AAAA", "16 bytes"),
    ],
)
async def test_a_push_that_cannot_be_built_fails_without_a_request(
    provider: webpush.WebPushProvider,
    fake: FakeWebPush,
    endpoint: str,
    p256dh: str | None,
    auth: str | None,
    reason: str,
) -> None:
    good = fake.subscribe()
    push = make_push(
        Provider.WEBPUSH,
        endpoint,
        webpush_p256dh=p256dh or good.p256dh,
        webpush_auth=auth or good.auth,
    )
    outcome = await provider.send(push)
    assert (outcome.verdict, outcome.alarm) == (Verdict.FAILED, True)
    assert reason in (outcome.reason or "")
    assert fake.received == [] and fake.refused == []


def test_not_configured_without_a_vapid_key() -> None:
    assert webpush.WebPushProvider.from_settings(Settings.from_env({})) is None


def test_vapid_key_needs_a_subject(vapid_key: tuple[Path, str]) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_VAPID_SUBJECT is required"):
        Settings.from_env({"GATEWAY_VAPID_PRIVATE_KEY": str(vapid_key[0])})
    with pytest.raises(ConfigError, match="mailto: or https:"):
        Settings.from_env(
            {"GATEWAY_VAPID_PRIVATE_KEY": str(vapid_key[0]), "GATEWAY_VAPID_SUBJECT": "ops"}
        )


def test_a_key_that_is_not_p256_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "p384.pem"
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="P-256"):
        webpush.load_vapid_key(path)
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="GATEWAY_VAPID_PRIVATE_KEY"):
        webpush.load_vapid_key(path)


# --- gateway vapid keygen and GET /webpush/vapid-public-key ---------------------------------


@pytest.fixture
def keygen(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Path], Awaitable[Result]]:
    """`python -m gateway vapid keygen PATH`, with GATEWAY_VAPID_PRIVATE_KEY already naming PATH."""

    async def run(path: Path) -> Result:
        monkeypatch.setenv("GATEWAY_VAPID_PRIVATE_KEY", str(path))
        monkeypatch.setenv("GATEWAY_VAPID_SUBJECT", SUBJECT)
        return await gateway(database_url, "vapid", "keygen", str(path))

    return run


async def test_vapid_keygen_key_is_what_a_browser_subscribes_with(
    tmp_path: Path, ca: TestCA, keygen: Callable[[Path], Awaitable[Result]]
) -> None:
    path = tmp_path / "keys" / "vapid.pem"
    path.parent.mkdir()
    result = await keygen(path)
    assert result.returncode == 0, result.stderr
    public_key = result.stdout.strip()
    assert result.stdout == public_key + "\n"
    # applicationServerKey: base64url without padding of the 65-byte uncompressed point
    assert len(public_key) == 87 and "=" not in public_key
    point = webpush.b64url_decode(public_key)
    assert len(point) == 65 and point[0] == 4
    browser_view = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == browser_view.public_numbers()

    # A push service that knows only that public key (as a browser told it) accepts our pushes.
    server = FakeWebPush(ca, public_key)
    await server.start()
    provider = webpush.WebPushProvider.from_settings(Settings.from_env(env(server, (path, ""))))
    assert provider is not None
    try:
        assert (await send(provider, server.subscribe())).verdict is Verdict.DELIVERED
    finally:
        await provider.close()
        await server.close()


async def test_vapid_keygen_never_overwrites_a_key(
    tmp_path: Path, keygen: Callable[[Path], Awaitable[Result]]
) -> None:
    path = tmp_path / "vapid.pem"
    path.write_text("the key every subscription was made with")
    result = await keygen(path)
    assert (result.returncode, result.stdout) == (1, "")
    assert "exists" in result.stderr
    assert path.read_text() == "the key every subscription was made with"


async def test_public_route_serves_the_vapid_public_key(
    aiohttp_client: ClientFactory, database_url: str, vapid_key: tuple[Path, str]
) -> None:
    settings = Settings(
        database_url=database_url, vapid_private_key=vapid_key[0], vapid_subject=SUBJECT
    )
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/webpush/vapid-public-key")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"public_key": vapid_key[1]}


async def test_public_route_says_when_web_push_is_not_configured(
    aiohttp_client: ClientFactory, database_url: str
) -> None:
    client = await aiohttp_client(create_app(Settings(database_url=database_url)))
    response = await client.get("/webpush/vapid-public-key")
    assert response.status == 404
    body = await response.json()
    assert body["error"] == "webpush_not_configured"
    assert "GATEWAY_VAPID_PRIVATE_KEY" in body["message"]
