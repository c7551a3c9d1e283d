"""`gateway notify` and `gateway deliver` as real subprocesses against the test database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson

from tests.conftest import ROOT
from tests.delivery_support import until
from tests.fakes import apns as fake_apns
from tests.fakes.apns import FakeApns
from tests.fakes.tls import TestCA
from tests.helpers import apns_token
from tests.test_cli import gateway


async def register(db, user: str, token: str) -> None:
    session = await db.fetchval(
        "INSERT INTO sessions (token_sha256, user_id, expires_at)"
        " VALUES (sha256($1::bytea), $2, now() + interval '1 hour') RETURNING id",
        user.encode(),
        user,
    )
    await db.execute(
        "INSERT INTO registrations (user_id, session_id, device_id, provider, token)"
        " VALUES ($1, $2, 'd', 'apns', $3)",
        user,
        session,
        token,
    )


async def test_notify_send_then_show_and_failed(database_url, db):
    await db.execute("TRUNCATE notifications CASCADE")
    await register(db, "alice", apns_token(1))
    await register(db, "bob", apns_token(2))
    sent = await gateway(
        database_url,
        *("notify", "send", "--users", "alice,bob", "--exclude-users", "bob"),
        *("--category", "chat_message", "--title", "Hi", "--data", "k=v", "--ttl", "600"),
    )
    assert sent.returncode == 0, sent.stderr
    answer = orjson.loads(sent.stdout)
    assert answer["targets"] == 1
    message = await db.fetchval("SELECT message FROM notifications WHERE id = $1", answer["id"])
    assert orjson.loads(message) == {"title": "Hi", "body": None, "data": {"k": "v"}}
    await db.execute("UPDATE deliveries SET state = 'failed', last_error = 'BadTopic'")
    shown = await gateway(database_url, "notify", "show", answer["id"])
    assert shown.returncode == 0, shown.stderr
    progress = orjson.loads(shown.stdout)
    assert progress["state"] == "done"
    assert progress["counts"]["failed"] == 1
    failed = await gateway(database_url, "notify", "failed", answer["id"])
    assert [orjson.loads(line)["error"] for line in failed.stdout.splitlines()] == ["BadTopic"]


async def test_notify_refuses_a_bad_notification_naming_the_parameter(database_url, db):
    result = await gateway(
        database_url, "notify", "send", "--users", "alice", "--category", "nope", "--title", "x"
    )
    assert result.returncode == 2
    assert "gateway: category: must be one of" in result.stderr
    missing = await gateway(database_url, "notify", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    assert "no notification" in missing.stderr


async def test_deliver_without_any_provider_configured_stops_with_a_message(database_url, db):
    result = await gateway(database_url, "deliver")
    assert result.returncode == 2
    assert "no push provider is configured" in result.stderr


async def test_deliver_runs_workers_alone_and_stops_on_sigterm(database_url, db, tmp_path: Path):
    await db.execute("TRUNCATE notifications CASCADE")
    fake = FakeApns(TestCA(tmp_path), tmp_path)
    await fake.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "gateway", "deliver"),
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url, **fake.env()},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await register(db, "alice", apns_token(1))
        fake.script[apns_token(1)].append(fake_apns.SERVICE_UNAVAILABLE)
        sent = await gateway(
            database_url,
            "notify",
            "send",
            "--users",
            "alice",
            "--category",
            "chat_message",
            "--body",
            "hello",
        )
        assert sent.returncode == 0, sent.stderr

        async def retried() -> bool:
            return len(fake.answers) == 1

        # The first answer is a 503; the retry is ten seconds out by default.
        await until(retried, what="the first attempt")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, stderr.decode()
        assert await db.fetchval("SELECT state FROM deliveries") == "pending"
        assert await db.fetchval("SELECT last_status FROM deliveries") == 503
    finally:
        await fake.close()


async def test_deliver_with_a_key_that_is_not_a_p8_stops_naming_the_setting(
    database_url, db, tmp_path: Path
):
    key = tmp_path / "AuthKey.p8"
    key.write_text("not a key")
    env = {
        "GATEWAY_APNS_KEY_FILE": str(key),
        "GATEWAY_APNS_KEY_ID": fake_apns.KEY_ID,
        "GATEWAY_APNS_TEAM_ID": fake_apns.TEAM_ID,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "deliver"),
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "GATEWAY_APNS_KEY_FILE" in stderr.decode()
