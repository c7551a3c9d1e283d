"""The real Layer SDKs, unmodified, log in, register, unregister and log out against the gateway.

tests/sdk/harness.js drives layer-websdk 3.4.18 and @layerhq/web-xdk 4.0.6 in
Node (xhr2 and ws as shims, as React Native apps give them) against a gateway
process started as the README says; the test looks at the database between
its steps.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.commands import SessionRef
from tests.conftest import ROOT
from tests.faults_support import free_port
from tests.helpers import registrations

HARNESS = ROOT / "tests" / "sdk"
APP_ID = "layer:///apps/staging/3f0d6e02-sdk-harness"
PROVIDER_ID = "layer:///providers/3f0d6e02-sdk-harness"
USER = "sdk-user"
IOS = {
    "token": "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949",
    "deviceId": "a7775566-bfbf-11e5-bf72-359a01002888",
    "iosVersion": "9.0",
    "bundleId": "com.layer.bundleid",
}
ANDROID = {
    "token": "fcm-token:APA91bHun4MxP5egoKMwt2KZFBaFUH",
    "deviceId": "android-3b2e1c",
    "senderId": "565052870572",
}
# What each SDK sends in Accept (their constants), and the routes of the
# handshake and push tokens; its user's identity is served too (IDENTITY);
# whatever else an SDK asks for (a websocket, a ping) is not needed for push tokens.
SDKS = {
    "websdk": "application/vnd.layer+json; version=2.0",
    "xdk": "application/vnd.layer+json; version=3.0",
}
SERVED = ("POST /nonces", "POST /sessions", "POST /push_tokens", "DELETE /push_tokens/",
          "DELETE /sessions/")
# web-xdk 4.0.6 asks at /<its url>/identities/<user> over plain http (its own bug).
IDENTITY = re.compile(rf"GET (/http://[^/]+)?/identities/{USER}")
STEP_TIMEOUT = 60


def _node_missing() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed: the Layer SDK harness (tests/sdk) needs them"
    return None


pytestmark = pytest.mark.skipif(_node_missing() is not None, reason=_node_missing() or "")


def install_harness() -> None:
    """npm ci, once per package-lock.json: what `make test` does before pytest."""
    stamp = HARNESS / "node_modules" / ".package-lock.json"
    lock = HARNESS / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=HARNESS, check=True  # noqa: S607
    )


@dataclass
class Gateway:
    url: str
    key_pem: str
    kid: str


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited: {log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - our own http URL
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the gateway was not ready in 30 s: {log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway as the README starts it, keys made by `gateway layer keygen`."""
    install_harness()
    keys = tmp_path_factory.mktemp("layer-keys")
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway", "layer", "keygen", str(keys)], cwd=ROOT, check=True,
        capture_output=True,
    )
    jwks = json.loads((keys / "identity-keys.json").read_text())
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env.update(
        DATABASE_URL=database_url,
        GATEWAY_PORT=str(port),
        GATEWAY_LAYER_APP_ID=APP_ID,
        GATEWAY_LAYER_PROVIDER_ID=PROVIDER_ID,
        GATEWAY_LAYER_IDENTITY_KEYS=str(keys / "identity-keys.json"),
    )
    log = keys / "gateway.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{url}/health/ready", process, log)
        yield Gateway(url, (keys / "identity-key.pem").read_text(), jwks["keys"][0]["kid"])
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def clean_db(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await db.execute("TRUNCATE layer_nonces")
    yield db


class Harness:
    """The Node process, one JSON line per step; a line on stdin lets it go on."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def step(self, expected: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), STEP_TIMEOUT)
            if not line:
                raise AssertionError(f"the harness ended before {expected!r}")
            if not line.startswith(b"{"):
                continue
            message: dict[str, Any] = json.loads(line)
            # A challenge is followed by the step it leads to.
            if message["step"] != "challenge" or expected == "challenge":
                break
        assert message["step"] == expected, message
        return message

    async def proceed(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"next\n")
        await self.process.stdin.drain()


async def _sessions(db: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(row) for row in await db.fetch("SELECT id, token_sha256, user_id FROM sessions")]


@pytest.mark.parametrize("sdk", sorted(SDKS))
async def test_the_real_sdk_logs_in_registers_unregisters_logs_in_again_and_logs_out(
    sdk, gateway, clean_db, capsys
):
    db = clean_db
    config = {
        "url": gateway.url,
        "websocketUrl": gateway.url.replace("http://", "ws://") + "/websocket",
        "appId": APP_ID,
        "providerId": PROVIDER_ID,
        "keyPem": gateway.key_pem,
        "kid": gateway.kid,
        "userId": USER,
        "ios": IOS,
        "android": ANDROID,
    }
    process = await asyncio.create_subprocess_exec(
        "node", str(HARNESS / "harness.js"), sdk, json.dumps(config), cwd=HARNESS,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        # The SDKs log their own failures (the 404s, no IndexedDB) on stderr.
        stderr=asyncio.subprocess.DEVNULL,
    )
    harness = Harness(process)
    try:
        challenge = await harness.step("challenge")
        assert challenge["nonce"]

        logged_in = await harness.step("session")
        assert logged_in["user"] == USER
        [session] = await _sessions(db)
        assert session["user_id"] == USER
        digest = SessionRef.from_token(logged_in["session_token"]).token_sha256
        assert session["token_sha256"] == digest
        # The challenge's nonce is used up.
        assert await db.fetchval("SELECT count(*) FROM layer_nonces WHERE expires_at > now()") == 0
        await harness.proceed()

        await harness.step("ios")
        assert await registrations(db) == [
            {
                "user_id": USER, "session_id": session["id"], "device_id": IOS["deviceId"],
                "provider": "apns", "token": IOS["token"], "apns_bundle_id": IOS["bundleId"],
                "gcm_sender_id": None, "ios_version": IOS["iosVersion"], "webpush_p256dh": None,
                "webpush_auth": None, "category_filter": "*",
            }
        ]
        await harness.proceed()

        await harness.step("android")
        stored = await registrations(db)
        assert [(r["provider"], r["device_id"], r["session_id"]) for r in stored] == [
            ("apns", IOS["deviceId"], session["id"]),
            ("fcm", ANDROID["deviceId"], session["id"]),
        ]
        assert stored[1]["token"] == ANDROID["token"]
        assert stored[1]["gcm_sender_id"] == ANDROID["senderId"]
        await harness.proceed()

        await harness.step("unregistered")
        assert [(r["provider"], r["device_id"]) for r in await registrations(db)] == [
            ("fcm", ANDROID["deviceId"])
        ]
        # The session ends behind the SDK's back (revoked, as `gateway session
        # revoke` does); its registration goes with it.
        await db.execute("DELETE FROM sessions")
        await harness.proceed()

        reauthenticated = await harness.step("reauthenticated")
        assert '"code":4' in reauthenticated["refused"] or "401" in reauthenticated["refused"]
        assert reauthenticated["challenges"] == 2
        # It loaded its user again (GET /identities/<user>) and is ready for the app.
        assert reauthenticated["ready_again"] is True, json.dumps(reauthenticated)
        [renewed] = await _sessions(db)
        assert renewed["user_id"] == USER
        assert renewed["token_sha256"] == SessionRef.from_token(
            reauthenticated["session_token"]
        ).token_sha256
        assert [(r["provider"], r["session_id"]) for r in await registrations(db)] == [
            ("fcm", renewed["id"])
        ]
        await harness.proceed()

        await harness.step("logged_out")
        assert await _sessions(db) == []
        assert await registrations(db) == []
        await harness.proceed()

        done = await harness.step("done")
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()

    requests = [
        (f"{r['method']} {urlsplit(r['url']).path}", r["status"], r) for r in done["requests"]
    ]
    served = [(name, status) for name, status, _ in requests if name.startswith(SERVED)]
    assert served == [
        ("POST /nonces", 201),
        ("POST /sessions", 201),
        ("POST /push_tokens", 202),
        ("POST /push_tokens", 202),
        (f"DELETE /push_tokens/{IOS['deviceId']}", 202),
        ("POST /push_tokens", 401),
        ("POST /sessions", 201),
        ("POST /push_tokens", 202),
        (f"DELETE /sessions/{reauthenticated['session_token']}", 204),
    ]
    for name, _, record in requests:
        if record["method"] != "WEBSOCKET":
            assert record["headers"]["accept"] == SDKS[sdk], name
    # The SDK loads its user's identity after a login; each time it is served.
    identities = [status for name, status, _ in requests if IDENTITY.fullmatch(name)]
    assert identities and set(identities) == {200}, identities
    unserved = sorted(
        {
            (name, status)
            for name, status, _ in requests
            if not name.startswith(SERVED) and not IDENTITY.fullmatch(name)
        }
    )
    assert unserved, "the SDK asked for nothing beyond the push-token calls"
    assert {status for _, status in unserved} == {404}, unserved
    # With its identity served, the SDK keeps its user object: nothing throws
    # in its own callbacks (a 404 there made it destroy the user, and the
    # re-login threw "Object is destroyed").
    assert done["sdk_errors"] == []
    with capsys.disabled():
        print(f"\n{sdk}: answered 404 (not served, not needed): "
              + ", ".join(name for name, _ in unserved))
