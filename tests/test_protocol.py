"""gateway.protocol: the aiohttp override refuses to start on an aiohttp it was not written for."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web_server

from gateway import protocol


def test_the_installed_aiohttp_has_the_signatures_the_override_was_written_against():
    protocol.check_aiohttp()
    assert web_server.RequestHandler is protocol.GatewayRequestHandler  # type: ignore[attr-defined]


def test_a_changed_aiohttp_signature_stops_the_start_naming_it():
    def handle_error(self: Any, request: Any, status: int = 500, extra: Any = None) -> None:
        raise NotImplementedError

    signatures = dict(protocol.EXPECTED_SIGNATURES)
    expected = signatures["RequestHandler.handle_error"][1]
    signatures["RequestHandler.handle_error"] = (handle_error, expected)
    with pytest.raises(RuntimeError, match=r"RequestHandler\.handle_error\("):
        protocol.check_aiohttp(signatures)
