"""The Layer API versions its clients speak: 1.0 (the page), 2.0 (websdk 3.x), 3.0 (web-xdk 4.x)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import ConfigError, Settings
from tests.conftest import layer_headers
from tests.helpers import LAYER_APNS, layer_error, registrations

ROUTES = ["register", "unregister", "list", "end-session", "nonces", "sessions"]


async def _call(
    client: TestClient, endpoint: str, token: str, accept: str | None  # type: ignore[type-arg]
) -> ClientResponse:
    headers = layer_headers(token, accept=accept)
    if endpoint == "register":
        body = {"token": LAYER_APNS, "type": "apns", "device_id": "dev-1"}
        return await client.post("/push_tokens", json=body, headers=headers)
    if endpoint == "unregister":
        return await client.delete("/push_tokens/dev-1", headers=headers)
    if endpoint == "list":
        return await client.get("/push_tokens", headers=headers)
    if endpoint == "end-session":
        return await client.delete(f"/sessions/{token}", headers=headers)
    if endpoint == "nonces":
        return await client.post("/nonces", headers=headers)
    return await client.post("/sessions", json={}, headers=headers)


# What each route answers once past the Accept check (the handshake is not
# configured here: 501 says so).
PAST_THE_DOOR = {
    "register": 202, "unregister": 202, "list": 200, "end-session": 204, "nonces": 501,
    "sessions": 422,
}


@pytest.mark.parametrize("version", ["1.0", "2.0", "3.0"])
@pytest.mark.parametrize("endpoint", ROUTES)
async def test_every_layer_route_serves_versions_1_2_and_3(
    client, new_session, db, version, endpoint
):
    token = await new_session("alice")
    accept = f"application/vnd.layer+json; version={version}"
    response = await _call(client, endpoint, token, accept)
    assert response.status == PAST_THE_DOOR[endpoint], await response.text()


async def test_the_same_registration_whatever_the_version(client, new_session, db):
    token = await new_session("alice")
    stored = []
    for version in ("1.0", "2.0", "3.0"):
        accept = f"application/vnd.layer+json; version={version}"
        assert (await _call(client, "register", token, accept)).status == 202
        stored.append(await registrations(db))
    assert stored[0] == stored[1] == stored[2]
    assert len(stored[0]) == 1


@pytest.mark.parametrize(
    "accept",
    [
        "application/vnd.layer+json; version=4.0",
        "application/vnd.layer+json; version=2",
        "application/vnd.layer+json; version=3.0.1",
        "application/json; version=2.0",
        "application/vnd.layer+json",
        None,
    ],
)
@pytest.mark.parametrize("endpoint", ROUTES)
async def test_another_version_or_media_type_is_406_on_every_route(
    client, new_session, db, accept, endpoint
):
    token = await new_session("alice")
    response = await _call(client, endpoint, token, accept)
    body = await layer_error(response, 406, 107, "invalid_header", {"header": "Accept"})
    for version in ("1.0", "2.0", "3.0"):
        assert f"version={version}" in body["message"]
    assert await registrations(db) == []
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_the_served_versions_are_configurable(aiohttp_client, settings, db):
    client = await aiohttp_client(create_app(replace(settings, layer_versions=frozenset({"2.0"}))))
    two = await client.get("/push_tokens", headers=layer_headers(
        accept="application/vnd.layer+json; version=2.0"))
    assert two.status == 401
    one = await client.get("/push_tokens", headers=layer_headers())
    body = await layer_error(one, 406, 107, "invalid_header", {"header": "Accept"})
    assert "version=2.0" in body["message"]
    assert "version=1.0" not in body["message"]


def test_gateway_layer_versions_is_read_from_the_environment():
    assert Settings.from_env({}).layer_versions == frozenset({"1.0", "2.0", "3.0"})
    settings = Settings.from_env({"GATEWAY_LAYER_VERSIONS": "2.0, 3.0"})
    assert settings.layer_versions == frozenset({"2.0", "3.0"})


@pytest.mark.parametrize("raw", ["two", "2", "2.0,,3.0", "2.0;x"])
def test_a_bad_gateway_layer_versions_names_the_variable(raw):
    with pytest.raises(ConfigError, match="GATEWAY_LAYER_VERSIONS"):
        Settings.from_env({"GATEWAY_LAYER_VERSIONS": raw})
