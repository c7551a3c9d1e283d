"""The APNs provider token: ES256 with the .p8 key, kept 40-50 minutes, renewed once per refusal."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from gateway.config import ConfigError
from gateway.delivery.apns import TOKEN_RENEW_MAX, TOKEN_RENEW_MIN, TokenSigner
from tests.fakes import apns as fake_apns


@pytest.fixture
def signer_and_key(tmp_path: Path):
    path, public_key = fake_apns.write_key(tmp_path)
    return TokenSigner.from_file(str(path), fake_apns.KEY_ID, fake_apns.TEAM_ID), public_key


def test_the_token_is_es256_with_the_key_id_and_the_team_as_issuer(signer_and_key):
    signer, public_key = signer_and_key
    token = signer.current()
    assert jwt.get_unverified_header(token) == {
        "alg": "ES256",
        "kid": fake_apns.KEY_ID,
        "typ": "JWT",
    }
    claims = jwt.decode(token, public_key, algorithms=["ES256"])
    assert claims["iss"] == fake_apns.TEAM_ID
    assert abs(claims["iat"] - time.time()) < 5


def test_the_token_is_kept_until_40_to_50_minutes_have_passed(signer_and_key, monkeypatch):
    signer, _ = signer_and_key
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    first = signer.current()
    monkeypatch.setattr(time, "time", lambda: now + TOKEN_RENEW_MIN - 1)
    assert signer.current() == first
    monkeypatch.setattr(time, "time", lambda: now + TOKEN_RENEW_MAX + 1)
    assert signer.current() != first


def test_many_sends_refused_with_one_token_renew_it_once(signer_and_key):
    signer, _ = signer_and_key
    refused = signer.current()
    renewed = signer.renew(refused)
    assert renewed != refused
    # The other sends in flight with the refused token get the renewed one.
    assert signer.renew(refused) == renewed
    assert signer.current() == renewed


def test_a_key_file_that_is_not_a_p256_pem_names_the_setting(tmp_path: Path):
    path = tmp_path / "AuthKey.p8"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="GATEWAY_APNS_KEY_FILE"):
        TokenSigner.from_file(str(path), fake_apns.KEY_ID, fake_apns.TEAM_ID)
