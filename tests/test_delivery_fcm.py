"""The FCM HTTP v1 provider against a fake FCM and OAuth endpoint, through PushProvider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.commands import Provider
from gateway.config import ConfigError, Settings
from gateway.delivery import fcm
from gateway.delivery.providers import Outcome, PushProvider, Verdict
from tests.fakes import fcm as fake_fcm
from tests.fakes.fcm import FakeFcm
from tests.fakes.pushes import make_push
from tests.fakes.tls import TestCA

TOKEN = "dGVzdC10b2tlbi0x:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
async def fake(ca: TestCA, tmp_path: Path) -> AsyncIterator[FakeFcm]:
    server = FakeFcm(ca, tmp_path)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def provider(fake: FakeFcm) -> AsyncIterator[fcm.FcmProvider]:
    built = fcm.FcmProvider.from_settings(Settings.from_env(fake.env()))
    assert built is not None
    yield built
    await built.close()


async def send(provider: PushProvider, token: str = TOKEN, **fields: object) -> Outcome:
    return await provider.send(make_push(Provider.FCM, token, **fields))


async def test_delivered_message_has_the_android_block_and_string_data(
    provider: fcm.FcmProvider, fake: FakeFcm
) -> None:
    outcome = await send(provider, collapse_key="chat-c-42", priority="normal")
    assert outcome.verdict is Verdict.DELIVERED
    assert outcome.status == 200
    [received] = fake.received
    assert received.headers["Authorization"] == "Bearer ya29.fake-1"
    message = received.message
    assert message["token"] == TOKEN
    assert message["notification"] == {"title": "Bob", "body": "Are we still on for 7?"}
    assert message["data"] == {"conversation": "c-42"}
    android = message["android"]
    assert android["priority"] == "NORMAL"
    assert android["collapse_key"] == "chat-c-42"
    assert android["ttl"] in {"3599s", "3600s"}


async def test_high_priority_and_no_collapse_key(provider: fcm.FcmProvider, fake: FakeFcm) -> None:
    await send(provider, title=None, body=None, data={})
    message = fake.received[0].message
    assert message["android"]["priority"] == "HIGH"
    assert "collapse_key" not in message["android"]
    assert "notification" not in message and "data" not in message


async def test_fcm_override_blocks_win(provider: fcm.FcmProvider, fake: FakeFcm) -> None:
    override = {
        "android": {"priority": "NORMAL", "notification": {"channel_id": "chat"}},
        "data": {"kind": "chat", "count": 3, "nested": {"a": 1}},
    }
    assert (await send(provider, override=override)).verdict is Verdict.DELIVERED
    message = fake.received[0].message
    assert message["android"]["priority"] == "NORMAL"
    assert message["android"]["notification"] == {"channel_id": "chat"}
    assert message["android"]["ttl"].endswith("s")
    assert message["data"] == {"kind": "chat", "count": "3", "nested": '{"a":1}'}


@pytest.mark.parametrize(
    ("answer", "verdict", "alarm"),
    [
        (fake_fcm.UNREGISTERED, Verdict.PRUNE, False),
        (fake_fcm.SENDER_ID_MISMATCH, Verdict.PRUNE, False),
        (fake_fcm.INVALID_TOKEN, Verdict.PRUNE, False),
        (fake_fcm.INVALID_PAYLOAD, Verdict.FAILED, True),
        (fake_fcm.PERMISSION_DENIED, Verdict.FAILED, True),
        (
            fake_fcm.Answer(404, "NOT_FOUND", None, "Requested entity was not found."),
            Verdict.FAILED,
            True,
        ),
        (fake_fcm.UNAVAILABLE, Verdict.RETRY, False),
        (fake_fcm.INTERNAL, Verdict.RETRY, False),
        (fake_fcm.Answer(502), Verdict.RETRY, False),
    ],
    ids=lambda value: getattr(value, "error_code", None) or str(getattr(value, "status", value)),
)
async def test_answers_are_classified_as_delivery_md_says(
    provider: fcm.FcmProvider, fake: FakeFcm, answer: fake_fcm.Answer, verdict: Verdict, alarm: bool
) -> None:
    fake.script[TOKEN] = [answer]
    outcome = await send(provider)
    assert (outcome.verdict, outcome.status, outcome.alarm) == (verdict, answer.status, alarm)
    assert not outcome.quota
    if answer.error_code:
        assert answer.error_code in (outcome.reason or "")


async def test_quota_exceeded_is_retried_after_the_asked_delay(
    provider: fcm.FcmProvider, fake: FakeFcm
) -> None:
    fake.script[TOKEN] = [fake_fcm.quota(37)]
    outcome = await send(provider)
    assert (outcome.verdict, outcome.status) == (Verdict.RETRY, 429)
    assert outcome.quota
    assert outcome.retry_after == 37


async def test_unavailable_honours_retry_after_then_delivers(
    provider: fcm.FcmProvider, fake: FakeFcm
) -> None:
    fake.script[TOKEN] = [fake_fcm.unavailable(5)]
    first = await send(provider)
    assert (first.verdict, first.retry_after, first.quota) == (Verdict.RETRY, 5, False)
    assert (await send(provider)).verdict is Verdict.DELIVERED


async def test_access_token_is_fetched_once_and_cached(
    provider: fcm.FcmProvider, fake: FakeFcm
) -> None:
    outcomes = await asyncio.gather(*(send(provider, f"{TOKEN}{n}") for n in range(20)))
    assert {o.verdict for o in outcomes} == {Verdict.DELIVERED}
    outcomes = [await send(provider) for _ in range(3)]
    assert len(fake.grants) == 1
    grant = fake.grants[0]
    assert grant["aud"] == fake.token_uri
    assert grant["iss"] == fake.client_email
    assert grant["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert {r.headers["Authorization"] for r in fake.received} == {"Bearer ya29.fake-1"}


async def test_token_is_renewed_shortly_before_it_expires(ca: TestCA, tmp_path: Path) -> None:
    # Google's token lives for less than the renewal margin: every send fetches anew.
    server = FakeFcm(ca, tmp_path, token_lifetime=int(fcm.TOKEN_MARGIN))
    await server.start()
    provider = fcm.FcmProvider.from_settings(Settings.from_env(server.env()))
    assert provider is not None
    try:
        for _ in range(3):
            assert (await send(provider)).verdict is Verdict.DELIVERED
    finally:
        await provider.close()
        await server.close()
    assert len(server.grants) == 3


async def test_a_401_refreshes_the_token_once_and_delivers(
    provider: fcm.FcmProvider, fake: FakeFcm
) -> None:
    fake.script[TOKEN] = [fake_fcm.UNAUTHENTICATED]
    outcome = await send(provider)
    assert outcome.verdict is Verdict.DELIVERED
    assert len(fake.grants) == 2
    assert [r.headers["Authorization"] for r in fake.received] == [
        "Bearer ya29.fake-1",
        "Bearer ya29.fake-2",
    ]


async def test_a_second_401_fails_with_an_alarm(provider: fcm.FcmProvider, fake: FakeFcm) -> None:
    fake.script[TOKEN] = [fake_fcm.UNAUTHENTICATED, fake_fcm.UNAUTHENTICATED]
    outcome = await send(provider)
    assert (outcome.verdict, outcome.status, outcome.alarm) == (Verdict.FAILED, 401, True)
    assert len(fake.grants) == 2
    assert len(fake.received) == 2


async def test_a_refused_grant_fails_with_an_alarm_and_is_not_retried_at_once(
    fake: FakeFcm, tmp_path: Path
) -> None:
    account = json.loads(fake.credentials.read_text())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account["private_key"] = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    stolen = tmp_path / "other.json"
    stolen.write_text(json.dumps(account))
    provider = fcm.FcmProvider.from_settings(
        Settings.from_env(fake.env(GATEWAY_FCM_CREDENTIALS=str(stolen)))
    )
    assert provider is not None
    try:
        outcomes = [await send(provider) for _ in range(3)]
    finally:
        await provider.close()
    for outcome in outcomes:
        assert (outcome.verdict, outcome.alarm) == (Verdict.FAILED, True)
        assert "OAuth" in (outcome.reason or "")
    assert fake.received == []
    # Google is asked once; the next sends fail at once for fcm.REFUSAL_HOLD seconds.
    assert fake.refused_grants == ["Signature verification failed"]


async def test_an_unavailable_token_endpoint_is_a_retry(
    provider: fcm.FcmProvider, fake: FakeFcm
) -> None:
    fake.token_script = [503]
    outcome = await send(provider)
    assert (outcome.verdict, outcome.status, outcome.alarm) == (Verdict.RETRY, 503, False)
    assert fake.received == []
    assert (await send(provider)).verdict is Verdict.DELIVERED


def test_data_size_counts_utf8_bytes_of_keys_and_values() -> None:
    push = make_push(Provider.FCM, TOKEN, data={"k": "é" * 10, "key2": "v"})
    assert fcm.data_size(push) == 1 + 20 + 4 + 1
    override = make_push(Provider.FCM, TOKEN, override={"data": {"n": 12}})
    assert fcm.data_size(override) == 1 + 2
    assert fcm.FCM_DATA_LIMIT == 4096


def test_not_configured_without_credentials() -> None:
    assert fcm.FcmProvider.from_settings(Settings.from_env({})) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a readable JSON"),
        ('{"type": "authorized_user"}', "not a service-account JSON"),
        ('{"type": "service_account", "project_id": "p"}', "lacks client_email, private_key"),
        (
            '{"type": "service_account", "project_id": "p", "client_email": "e",'
            ' "private_key": "x", "token_uri": "http://oauth2.googleapis.com/token"}',
            "token_uri must be an https",
        ),
        (
            '{"type": "service_account", "project_id": "p", "client_email": "e",'
            ' "private_key": "x", "token_uri": "https://oauth2.googleapis.com/token"}',
            "not a PEM private key",
        ),
    ],
)
def test_bad_credentials_are_a_config_error_naming_the_setting(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "sa.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        fcm.FcmProvider.from_settings(Settings.from_env({"GATEWAY_FCM_CREDENTIALS": str(path)}))
    assert "GATEWAY_FCM_CREDENTIALS" in str(caught.value)
