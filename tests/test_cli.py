"""The command line, run as a real subprocess against the test database."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass

from tests.conftest import ROOT, layer_headers
from tests.helpers import BIND, NAVIXY_FCM, apns_token, navixy, navixy_error, navixy_ok


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def gateway(database_url: str, *arguments: str) -> Result:
    """Run `python -m gateway ARGUMENTS` with DATABASE_URL pointing at the test database."""
    env = {**os.environ, "DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *arguments,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


async def test_cli_migrate_is_idempotent_on_an_existing_database(database_url, db):
    for _ in range(2):
        result = await gateway(database_url, "migrate")
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
    assert await db.fetchval("SELECT to_regclass('registrations') IS NOT NULL")


async def test_cli_session_create_prints_only_a_32_hex_token(database_url, db):
    result = await gateway(database_url, "session", "create", "alice", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", result.stdout)
    row = await db.fetchrow(
        "SELECT user_id, expires_at - created_at AS ttl FROM sessions"
    )
    assert row["user_id"] == "alice"
    assert 55 <= row["ttl"].total_seconds() <= 65


async def test_cli_session_token_works_as_layer_token_and_navixy_hash(client, database_url, db):
    result = await gateway(database_url, "session", "create", "alice", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()

    response = await client.post(
        "/push_tokens",
        json={"token": apns_token(1), "type": "apns", "device_id": "phone"},
        headers=layer_headers(token),
    )
    assert response.status == 202, await response.text()
    params = {"hash": token, "application": "navixy_android_viewer", "token": NAVIXY_FCM}
    await navixy_ok(await navixy(client, BIND, params))
    assert await db.fetchval("SELECT count(*) FROM registrations WHERE user_id = 'alice'") == 2


async def test_cli_session_revoke_ends_it_and_its_registrations_then_fails_again(
    client, database_url, db
):
    result = await gateway(database_url, "session", "create", "alice", "--ttl", "60")
    token = result.stdout.strip()
    params = {"hash": token, "application": "navixy_android_viewer", "token": NAVIXY_FCM}
    await navixy_ok(await navixy(client, BIND, params))

    result = await gateway(database_url, "session", "revoke", token)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert await db.fetchval("SELECT count(*) FROM registrations") == 0
    await navixy_error(await navixy(client, BIND, params), 4)
    response = await client.get("/push_tokens", headers=layer_headers(token))
    assert response.status == 401

    result = await gateway(database_url, "session", "revoke", token)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "no such live session" in result.stderr


async def test_cli_session_revoke_of_an_unknown_token_exits_non_zero(database_url, db):
    result = await gateway(database_url, "session", "revoke", "0" * 32)
    assert result.returncode != 0
    assert result.stdout == ""


async def test_cli_session_create_refuses_a_non_positive_ttl(database_url, db):
    result = await gateway(database_url, "session", "create", "alice", "--ttl", "0")
    assert result.returncode != 0
    assert result.stdout == ""
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_cli_session_create_refuses_a_user_id_with_control_characters(database_url, db):
    result = await gateway(database_url, "session", "create", "ali\x1bce")
    assert result.returncode != 0
    assert result.stdout == ""
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
