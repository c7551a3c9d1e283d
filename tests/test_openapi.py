"""The OpenAPI document: served, complete, free of internals, and true of the running gateway."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jwt
import orjson
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric import rsa
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.config import Settings
from gateway.docs import ASSETS_PATH, PAGE_PATH
from gateway.keys import EXECUTOR
from gateway.layer_auth import key_id
from gateway.observability import REQUEST_ID_HEADER
from gateway.openapi import build_document
from tests.conftest import LAYER_ACCEPT
from tests.helpers import documented_operations
from tests.live import LiveServer

ADMIN_TOKEN = "openapi-test-admin-key"


def _identity_keys() -> tuple[str, ...]:
    """One provider key, so that the Layer handshake is served and explored too."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)) | {"kid": key_id(key)}
    return (orjson.dumps(jwk).decode(),)


LIVE_SETTINGS = Settings(
    admin_token=ADMIN_TOKEN,
    layer_app_id="layer:///apps/staging/openapi",
    layer_provider_id="layer:///providers/openapi",
    layer_identity_keys=_identity_keys(),
)

# Whether the document and the code agree: no 500s, and every status, header,
# media type and body the document promises.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# Bounded and repeatable: the same cases on every run.
SCHEMATHESIS_CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 25, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
    }
)


async def test_the_document_is_served_as_openapi_3_1_json(client):
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.headers[REQUEST_ID_HEADER]
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()


def _strings(node: Any) -> Iterator[str]:
    """Every key and string value in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


async def test_the_document_never_shows_the_session_slot_the_surfaces_fill_in(client):
    document = await (await client.get("/openapi.json")).json()
    assert not [text for text in _strings(document) if "\x00" in text]
    assert not [text for text in _strings(document) if text == "session"]


async def test_every_route_of_the_app_is_documented(client):
    document = await (await client.get("/openapi.json")).json()
    routes = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None
        # Catch-alls only answer errors; the Navixy aliases (no /v2, a trailing
        # slash) are named in each action's description; /docs is the page
        # that reads the document, not part of the API.
        and route.method != "*"
        and not route.resource.canonical.startswith("/user/")
        and not route.resource.canonical.endswith("/")
        and route.resource.canonical not in (PAGE_PATH, ASSETS_PATH)
    }
    assert routes == documented_operations(document)


# --- the gateway as its document describes it --------------------------------------------


class LiveGateway(LiveServer):
    """The gateway serving on 127.0.0.1 from a thread of its own, for a synchronous client."""

    def new_session(self) -> str:
        token: str = self.run(self.app[EXECUTOR].store.create_session("alice", 3600), timeout=10)
        return token


@pytest.fixture(scope="module")
def live_gateway(database_url: str) -> Iterator[LiveGateway]:
    with LiveGateway(create_app(replace(LIVE_SETTINGS, database_url=database_url))) as live:
        yield live


def _sign_in(case: Any, gateway: LiveGateway) -> None:
    """Give the case a live session (and the Layer media type), so it gets past the door.

    A fresh session each time: logout and DELETE /sessions end the one they are given.
    """
    path = case.operation.path
    headers = dict(case.headers or {})
    if path.startswith("/internal/"):
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        if case.path_parameters and "token" in case.path_parameters:
            case.path_parameters["token"] = gateway.new_session()
    elif path.startswith(("/push_tokens", "/sessions/")):
        token = gateway.new_session()
        headers["Accept"] = LAYER_ACCEPT
        headers["Authorization"] = f'Layer session-token="{token}"'
        if case.path_parameters and "session_token" in case.path_parameters:
            case.path_parameters["session_token"] = token
    elif path.startswith("/v2/"):
        token = gateway.new_session()
        if isinstance(case.body, dict):
            case.body["hash"] = token
        elif case.query is not None and "hash" in case.query:
            case.query["hash"] = token
        else:
            headers["Authorization"] = f"NVX {token}"
    case.headers = headers


# What the live gateway below serves at /openapi.json, as the test below checks.
# Loaded at import, as schemathesis needs its operations when pytest collects
# (its lazy fixture loader does not work with pytest 9).
DOCUMENT = build_document(LIVE_SETTINGS.categories, LIVE_SETTINGS.session_ttl)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SCHEMATHESIS_CONFIG)


def test_the_live_gateway_serves_the_document_under_test(live_gateway):
    served = requests.get(f"{live_gateway.base_url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert orjson.loads(served.content) == orjson.loads(orjson.dumps(DOCUMENT))


@schema.parametrize()
def test_the_gateway_answers_as_its_document_says(case, live_gateway):
    _sign_in(case, live_gateway)
    case.call_and_validate(base_url=live_gateway.base_url, checks=CHECKS)
