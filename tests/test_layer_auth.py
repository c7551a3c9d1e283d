"""Layer's authentication handshake: nonces, identity tokens and the sessions they open."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import asyncpg
import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import create_app
from gateway.commands import SessionRef
from gateway.config import DEFAULT_SESSION_TTL, Settings
from gateway.layer_auth import generate_key_pair, key_id, load_identity_keys
from tests.conftest import layer_headers
from tests.helpers import LAYER_APNS, LAYER_DEVICE, b64url, layer_error, registrations

APP_ID = "layer:///apps/staging/9c1f27b4-auth-tests"
PROVIDER_ID = "layer:///providers/9c1f27b4-auth-tests"
ACCEPT = {"Accept": "application/vnd.layer+json; version=3.0"}


@dataclass(frozen=True)
class Keys:
    private_key: rsa.RSAPrivateKey
    kid: str
    jwks_path: Path

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    pem, jwks = generate_key_pair(tmp_path_factory.mktemp("identity-keys"))
    private_key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    return Keys(private_key, key_id(private_key.public_key()), jwks)


@pytest.fixture
def auth_settings(settings: Settings, keys: Keys) -> Settings:
    return replace(
        settings,
        layer_app_id=APP_ID,
        layer_provider_id=PROVIDER_ID,
        layer_identity_keys=load_identity_keys(keys.jwks_path),
    )


@pytest.fixture
async def auth_db(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await db.execute("TRUNCATE layer_nonces")
    yield db


@pytest.fixture
async def auth_client(aiohttp_client, auth_settings, auth_db) -> TestClient:  # type: ignore[type-arg]
    client: TestClient = await aiohttp_client(create_app(auth_settings))  # type: ignore[type-arg]
    return client


def claims(nonce: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": PROVIDER_ID, "prn": "alice", "iat": now, "exp": now + 600, "nce": nonce}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(keys: Keys, payload: dict[str, Any], **header: Any) -> str:
    headers = {"typ": "JWS", "cty": "layer-eit;v=1", "kid": keys.kid} | header
    return jwt.encode(payload, keys.private_key, algorithm="RS256", headers=headers)


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(payload))}"
    return f"{signing_input}.{b64url(signature)}"


async def nonce_of(client: TestClient) -> str:  # type: ignore[type-arg]
    response = await client.post("/nonces", headers=ACCEPT)
    assert response.status == 201, await response.text()
    body = await response.json()
    assert set(body) == {"nonce"}
    nonce: str = body["nonce"]
    return nonce


async def log_in(client: TestClient, token: str, app_id: str = APP_ID):  # type: ignore[type-arg]
    return await client.post(
        "/sessions", json={"identity_token": token, "app_id": app_id}, headers=ACCEPT
    )


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def live_nonce(db: asyncpg.Connection, nonce: str) -> bool:
    found: bool = await db.fetchval(
        "SELECT EXISTS (SELECT FROM layer_nonces WHERE nonce_sha256 = $1 AND expires_at > now())",
        digest(nonce),
    )
    return found


async def assert_refused(response: Any, db: asyncpg.Connection, names: str, token: str) -> None:
    """401 in Layer's shape, naming the check, without the token, with a fresh live nonce."""
    text = await response.text()
    body = await layer_error(response, 401, 4, "authentication_required")
    assert names in body["message"], body["message"]
    assert token not in text
    for part in token.split("."):
        if len(part) > 8:
            assert part not in text
    assert set(body["data"]) == {"nonce"}
    assert await live_nonce(db, body["data"]["nonce"])
    assert response.headers["WWW-Authenticate"] == "Layer"
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


# --- the happy path ------------------------------------------------------------------------


async def test_a_nonce_is_random_and_stored_only_as_its_digest_for_ten_minutes(
    auth_client, auth_db
):
    first, second = await nonce_of(auth_client), await nonce_of(auth_client)
    assert first != second
    assert len(first) >= 32
    rows = await auth_db.fetch(
        "SELECT nonce_sha256, expires_at - now() AS left FROM layer_nonces ORDER BY expires_at"
    )
    assert [bytes(row["nonce_sha256"]) for row in rows] == [digest(first), digest(second)]
    for row in rows:
        assert 590 <= row["left"].total_seconds() <= 600
    dump = str(await auth_db.fetch("SELECT * FROM layer_nonces"))
    assert first not in dump


async def test_an_identity_token_for_a_nonce_opens_a_session_like_the_cli_makes(
    auth_client, auth_db, keys
):
    nonce = await nonce_of(auth_client)
    response = await log_in(auth_client, sign(keys, claims(nonce, prn="alice")))
    assert response.status == 201, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"session_token"}
    token = body["session_token"]
    row = await auth_db.fetchrow(
        "SELECT user_id, expires_at - created_at AS lifetime FROM sessions WHERE token_sha256 = $1",
        SessionRef.from_token(token).token_sha256,
    )
    assert row["user_id"] == "alice"
    assert round(row["lifetime"].total_seconds()) == DEFAULT_SESSION_TTL
    assert not await live_nonce(auth_db, nonce)
    # The session works as any other.
    register = await auth_client.post(
        "/push_tokens",
        json={"token": LAYER_APNS, "type": "apns", "device_id": LAYER_DEVICE},
        headers=layer_headers(token),
    )
    assert register.status == 202
    assert [r["user_id"] for r in await registrations(auth_db)] == ["alice"]


async def test_typ_jwt_is_accepted_as_well_as_jws(auth_client, keys):
    nonce = await nonce_of(auth_client)
    response = await log_in(auth_client, sign(keys, claims(nonce), typ="JWT"))
    assert response.status == 201


async def test_an_iat_within_the_clock_skew_is_accepted(auth_client, keys):
    nonce = await nonce_of(auth_client)
    response = await log_in(auth_client, sign(keys, claims(nonce, iat=int(time.time()) + 30)))
    assert response.status == 201


# --- every refusal -------------------------------------------------------------------------


async def test_alg_none_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = unsigned({"typ": "JWS", "alg": "none", "cty": "layer-eit;v=1", "kid": keys.kid},
                     claims(nonce))
    await assert_refused(await log_in(auth_client, token), auth_db, "alg must be RS256", token)
    # Nothing consumed: the nonce still works for a good token.
    assert await live_nonce(auth_db, nonce)


async def test_hs256_keyed_with_the_public_key_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    header = {"typ": "JWS", "alg": "HS256", "cty": "layer-eit;v=1", "kid": keys.kid}
    payload = claims(nonce)
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(payload))}"
    mac = hmac.new(keys.public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = unsigned(header, payload, mac)
    await assert_refused(await log_in(auth_client, token), auth_db, "alg must be RS256", token)


async def test_an_unknown_kid_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce), kid="some-other-key")
    await assert_refused(await log_in(auth_client, token), auth_db, "kid", token)


async def test_a_missing_kid_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = jwt.encode(claims(nonce), keys.private_key, algorithm="RS256",
                       headers={"typ": "JWS", "cty": "layer-eit;v=1"})
    await assert_refused(await log_in(auth_client, token), auth_db, "kid", token)


async def test_a_bad_signature_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    # Signed by another key under the configured kid.
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(nonce), impostor, algorithm="RS256",
                       headers={"typ": "JWS", "cty": "layer-eit;v=1", "kid": keys.kid})
    await assert_refused(await log_in(auth_client, token), auth_db, "signature", token)


async def test_a_tampered_payload_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    header, _, signature = sign(keys, claims(nonce, prn="alice")).split(".")
    forged = f"{header}.{b64url(orjson.dumps(claims(nonce, prn='mallory')))}.{signature}"
    await assert_refused(await log_in(auth_client, forged), auth_db, "signature", forged)


async def test_a_wrong_cty_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce), cty="JWT")
    await assert_refused(await log_in(auth_client, token), auth_db, "cty", token)


async def test_a_wrong_typ_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce), typ="at+jwt")
    await assert_refused(await log_in(auth_client, token), auth_db, "typ", token)


async def test_a_wrong_iss_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce, iss="layer:///providers/someone-else"))
    await assert_refused(await log_in(auth_client, token), auth_db, "iss", token)


async def test_a_wrong_app_id_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce))
    response = await log_in(auth_client, token, app_id="layer:///apps/staging/another-app")
    await assert_refused(response, auth_db, "app_id", token)


async def test_an_expired_token_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    now = int(time.time())
    token = sign(keys, claims(nonce, iat=now - 900, exp=now - 120))
    await assert_refused(await log_in(auth_client, token), auth_db, "expired", token)


async def test_an_iat_beyond_the_clock_skew_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce, iat=int(time.time()) + 120))
    await assert_refused(await log_in(auth_client, token), auth_db, "iat", token)


@pytest.mark.parametrize("claim", ["prn", "iss", "iat", "exp", "nce"])
async def test_a_missing_claim_is_refused_naming_it(auth_client, auth_db, keys, claim):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce, **{claim: None}))
    await assert_refused(await log_in(auth_client, token), auth_db, f"no {claim} claim", token)


@pytest.mark.parametrize("prn", ["", "a\x00b", "x" * 256, 42])
async def test_a_prn_that_is_no_valid_user_id_is_refused(auth_client, auth_db, keys, prn):
    nonce = await nonce_of(auth_client)
    token = sign(keys, claims(nonce, prn=prn))
    await assert_refused(await log_in(auth_client, token), auth_db, "prn", token)


async def test_an_unknown_nonce_is_refused(auth_client, auth_db, keys):
    token = sign(keys, claims("a-nonce-this-gateway-never-issued"))
    await assert_refused(await log_in(auth_client, token), auth_db, "nonce", token)


async def test_an_expired_nonce_is_refused(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    await auth_db.execute(
        "UPDATE layer_nonces SET expires_at = now() - interval '1 second'"
        " WHERE nonce_sha256 = $1",
        digest(nonce),
    )
    token = sign(keys, claims(nonce))
    await assert_refused(await log_in(auth_client, token), auth_db, "nonce", token)


async def test_a_nonce_works_once(auth_client, auth_db, keys):
    nonce = await nonce_of(auth_client)
    assert (await log_in(auth_client, sign(keys, claims(nonce)))).status == 201
    again = sign(keys, claims(nonce, prn="bob"))
    response = await log_in(auth_client, again)
    text = await response.text()
    body = await layer_error(response, 401, 4, "authentication_required")
    assert "already used" in body["message"]
    assert again not in text
    assert await auth_db.fetchval("SELECT array_agg(user_id) FROM sessions") == ["alice"]


async def test_garbage_instead_of_a_token_is_refused(auth_client, auth_db):
    token = "not-a-jws-at-all"
    await assert_refused(await log_in(auth_client, token), auth_db, "well-formed", token)


@pytest.mark.parametrize(
    ("body", "property_"),
    [({"app_id": APP_ID}, "identity_token"), ({"identity_token": "a.b.c"}, "app_id")],
)
async def test_a_missing_field_of_post_sessions_is_422_naming_it(
    auth_client, auth_db, body, property_
):
    response = await auth_client.post("/sessions", json=body, headers=ACCEPT)
    await layer_error(response, 422, 104, "missing_property", {"property": property_})


# --- one nonce, one session, however many presentations ----------------------------------


async def test_two_concurrent_presentations_of_one_token_open_one_session(
    auth_client, auth_db, keys
):
    for _ in range(5):
        nonce = await nonce_of(auth_client)
        token = sign(keys, claims(nonce))
        answers = await asyncio.gather(*(log_in(auth_client, token) for _ in range(2)))
        assert sorted(answer.status for answer in answers) == [201, 401]
    assert await auth_db.fetchval("SELECT count(*) FROM sessions") == 5


async def test_two_app_instances_presenting_one_token_open_one_session(
    aiohttp_client, auth_settings, auth_db, keys
):
    # Two gateways, each with its own pool, as two workers or two hosts are.
    first = await aiohttp_client(create_app(auth_settings))
    second = await aiohttp_client(create_app(auth_settings))
    for _ in range(5):
        nonce = await nonce_of(first)
        token = sign(keys, claims(nonce))
        answers = await asyncio.gather(log_in(first, token), log_in(second, token))
        assert sorted(answer.status for answer in answers) == [201, 401]
    assert await auth_db.fetchval("SELECT count(*) FROM sessions") == 5


# --- every 401 carries a fresh nonce -------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["register", "unregister", "list", "end-session"])
@pytest.mark.parametrize("credential", ["missing", "unknown"])
async def test_every_layer_401_carries_a_fresh_usable_nonce(
    auth_client, auth_db, keys, endpoint, credential
):
    token = "0123456789abcdef0123456789abcdef" if credential == "unknown" else None
    headers = layer_headers(token) | ACCEPT
    if endpoint == "register":
        response = await auth_client.post(
            "/push_tokens",
            json={"token": LAYER_APNS, "type": "apns", "device_id": LAYER_DEVICE},
            headers=headers,
        )
    elif endpoint == "unregister":
        response = await auth_client.delete("/push_tokens/dev-1", headers=headers)
    elif endpoint == "list":
        response = await auth_client.get("/push_tokens", headers=headers)
    else:
        response = await auth_client.delete(
            f"/sessions/{token or 'not-a-token'}", headers=headers
        )
    body = await layer_error(response, 401, 4, "authentication_required")
    nonce = body["data"]["nonce"]
    assert await live_nonce(auth_db, nonce)
    # The SDKs answer the challenge with it (LayerError.getNonce()).
    assert (await log_in(auth_client, sign(keys, claims(nonce)))).status == 201


class DatabaseProxy:
    """A TCP relay to PostgreSQL that can be cut, as a database outage looks to the gateway."""

    def __init__(self, dsn: str) -> None:
        # The embedded server listens on a Unix socket only (?host=/dir), the
        # machine's one on TCP: relay to whichever the test database is on.
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [None])[0]
        port = parts.port or 5432
        self._socket = f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else None
        self._target = (parts.hostname or "127.0.0.1", port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def proxied(self, dsn: str, port: int) -> str:
        """``dsn`` pointed at the relay's TCP port."""
        parts = urlsplit(dsn)
        query = urlencode({k: v for k, v in parse_qsl(parts.query) if k != "host"})
        return parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}", query=query).geturl()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._socket is not None:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(self._socket)
        else:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()


async def test_a_401_while_the_database_is_down_is_503_not_a_401_without_a_nonce(
    aiohttp_client, auth_settings, auth_db
):
    proxy = DatabaseProxy(auth_settings.database_url)
    port = await proxy.start()
    proxied = proxy.proxied(auth_settings.database_url, port)
    client = await aiohttp_client(create_app(replace(auth_settings, database_url=proxied)))
    assert (await client.get("/push_tokens", headers=ACCEPT)).status == 401
    await proxy.cut()
    response = await client.get("/push_tokens", headers=ACCEPT)
    body = await layer_error(response, 503, 1, "service_unavailable")
    assert "nonce" not in body["data"]
    assert response.headers["Retry-After"] == "1"
    assert (await client.post("/nonces", headers=ACCEPT)).status == 503


# --- not configured ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nonces", "/sessions"])
async def test_the_handshake_without_configuration_says_it_is_not_configured(
    client, auth_db, path
):
    response = await client.post(
        path, json={"identity_token": "a.b.c", "app_id": APP_ID}, headers=ACCEPT
    )
    body = await layer_error(response, 501, 4, "authentication_not_configured")
    assert "not configured" in body["message"]
    assert await auth_db.fetchval("SELECT count(*) FROM layer_nonces") == 0


async def test_without_configuration_401s_carry_no_nonce_and_push_tokens_work(
    client, auth_db, new_session
):
    response = await client.get("/push_tokens", headers=ACCEPT)
    await layer_error(response, 401, 4, "authentication_required", {})
    token = await new_session("alice")
    register = await client.post(
        "/push_tokens",
        json={"token": LAYER_APNS, "type": "apns", "device_id": LAYER_DEVICE},
        headers=layer_headers(token) | ACCEPT,
    )
    assert register.status == 202


# --- the key file ----------------------------------------------------------------------------


def _env(keys_path: Path) -> dict[str, str]:
    return {
        "GATEWAY_LAYER_APP_ID": APP_ID,
        "GATEWAY_LAYER_PROVIDER_ID": PROVIDER_ID,
        "GATEWAY_LAYER_IDENTITY_KEYS": str(keys_path),
    }


def test_the_three_settings_configure_the_handshake(keys):
    settings = Settings.from_env(_env(keys.jwks_path))
    assert settings.layer_auth_configured
    assert settings.layer_app_id == APP_ID
    assert settings.layer_provider_id == PROVIDER_ID
    assert [json.loads(text)["kid"] for text in settings.layer_identity_keys] == [keys.kid]


def _private_jwk(keys: Keys) -> dict[str, Any]:
    return dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.private_key)), kid="k")


BAD_KEY_FILES: dict[str, Callable[[Keys], bytes | None]] = {
    "missing": lambda keys: None,
    "not-json": lambda keys: b"-----BEGIN PUBLIC KEY-----",
    "no-keys": lambda keys: b'{"keys": []}',
    "no-kid": lambda keys: orjson.dumps(
        {"keys": [{k: v for k, v in json.loads(keys.jwks_path.read_text())["keys"][0].items()
                   if k != "kid"}]}
    ),
    "private": lambda keys: orjson.dumps({"keys": [_private_jwk(keys)]}),
    "not-rsa": lambda keys: b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k"}]}',
    "bad-modulus": lambda keys: b'{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "k"}]}',
}


@pytest.mark.parametrize("case", sorted(BAD_KEY_FILES))
def test_a_key_file_that_does_not_parse_stops_the_gateway_naming_the_variable(
    tmp_path, keys, monkeypatch, capsys, case
):
    from gateway.cli import main

    path = tmp_path / "identity-keys.json"
    content = BAD_KEY_FILES[case](keys)
    if content is not None:
        path.write_bytes(content)
    for name, value in _env(path).items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "1"]) == 2
    assert "GATEWAY_LAYER_IDENTITY_KEYS" in capsys.readouterr().err


def test_a_partial_configuration_stops_the_gateway_naming_what_is_missing(keys):
    from gateway.config import ConfigError

    env = _env(keys.jwks_path)
    del env["GATEWAY_LAYER_PROVIDER_ID"]
    with pytest.raises(ConfigError, match="GATEWAY_LAYER_PROVIDER_ID"):
        Settings.from_env(env)


# --- the command line ----------------------------------------------------------------------


def test_keygen_and_identity_token_make_a_token_the_gateway_accepts(tmp_path, capsys):
    from gateway.cli import main
    from gateway.layer_auth import IdentityVerifier

    assert main(["layer", "keygen", str(tmp_path)]) == 0
    pem = tmp_path / "identity-key.pem"
    assert pem.stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert main(["layer", "identity-token", "alice", "NONCE-1", "--key", str(pem),
                 "--issuer", PROVIDER_ID]) == 0
    token = capsys.readouterr().out.strip()
    verifier = IdentityVerifier(
        load_identity_keys(tmp_path / "identity-keys.json"), PROVIDER_ID, APP_ID
    )
    identity = verifier.verify(token, APP_ID)
    assert (identity.user_id, identity.nonce) == ("alice", "NONCE-1")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["cty"] == "layer-eit;v=1"
    # keygen never overwrites a key.
    assert main(["layer", "keygen", str(tmp_path)]) == 1


def test_identity_token_without_an_issuer_says_which_to_give(tmp_path, capsys, monkeypatch):
    from gateway.cli import main

    monkeypatch.delenv("GATEWAY_LAYER_PROVIDER_ID", raising=False)
    assert main(["layer", "keygen", str(tmp_path)]) == 0
    key = str(tmp_path / "identity-key.pem")
    assert main(["layer", "identity-token", "alice", "N", "--key", key]) == 2
    assert "--issuer" in capsys.readouterr().err



def test_keygen_works_before_the_key_file_it_writes_exists(tmp_path, capsys, monkeypatch):
    from gateway.cli import main

    for name, value in _env(tmp_path / "identity-keys.json").items():
        monkeypatch.setenv(name, value)
    assert main(["layer", "keygen", str(tmp_path)]) == 0
    assert main(["layer", "identity-token", "alice", "N", "--key",
                 str(tmp_path / "identity-key.pem")]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == PROVIDER_ID
    assert Settings.from_env().layer_auth_configured
