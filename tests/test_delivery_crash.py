"""Crash safety: a `gateway deliver` process SIGKILLed, then PostgreSQL crashed, mid-notification.

After the kill a second process takes over once the dead one's leases end;
after the database's crash the same worker carries on. Either way every
delivery must end delivered and each token reach the fake APNs at least
once; a token may reach it twice only if its push was in flight at the
fault (for the kill: claimed by the dead worker and not yet recorded).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from gateway.commands import FindTargets, SendNotification
from gateway.store import Store, apply_schema, create_pool
from tests.conftest import ROOT
from tests.delivery_support import until
from tests.fakes.apns import FakeApns
from tests.fakes.tls import TestCA
from tests.faults_support import Figures, PrivatePostgres

pytestmark = pytest.mark.stress

TARGETS = 5000
# Killed once this many pushes have reached the fake: well inside the run.
KILL_AFTER = 1500
LEASE_SECONDS = 3
CONCURRENCY = 64

FIGURES = Figures("delivery crash figures")


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Figures:
    FIGURES.attach(request.config, "delivery-crash-figures")
    return FIGURES


async def populate(db: asyncpg.Connection) -> None:
    """5,000 users with one APNs token each, straight into the tables."""
    await db.execute("TRUNCATE notifications CASCADE")
    await db.execute(
        "INSERT INTO sessions (token_sha256, user_id, expires_at)"
        " SELECT sha256(('crash-' || g)::bytea), 'crash-' || g, now() + interval '1 hour'"
        " FROM generate_series(1, $1) AS g",
        TARGETS,
    )
    await db.execute(
        "INSERT INTO registrations (user_id, session_id, device_id, provider, token)"
        " SELECT user_id, id, 'phone', 'apns', lpad(to_hex(id), 64, '0') FROM sessions"
        " WHERE user_id LIKE 'crash-%'"
    )


async def start_worker(
    database_url: str, fake: FakeApns, lease: int = LEASE_SECONDS
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        **fake.env(),
        "GATEWAY_DELIVERY_LEASE": str(lease),
        "GATEWAY_DELIVERY_POLL": "0.5",
        "GATEWAY_DELIVERY_CONCURRENCY": str(CONCURRENCY),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "deliver"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def enqueue(pool: asyncpg.Pool) -> None:
    users = tuple(f"crash-{n}" for n in range(1, TARGETS + 1))
    queued = await Store(pool).enqueue_notification(
        SendNotification(
            audience=FindTargets(users, "chat_message"),
            exclude_users=(),
            message={"title": "crash", "body": "test", "data": {}},
            overrides={},
            ttl_seconds=3600,
            priority="high",
            collapse_key=None,
        )
    )
    assert queued.targets == TARGETS


async def test_a_killed_worker_loses_nothing_and_repeats_only_its_pushes_in_flight(
    database_url, db, tmp_path: Path, figures: Figures
):
    await populate(db)
    fake = FakeApns(TestCA(tmp_path), tmp_path)
    await fake.start()
    pool = await create_pool(database_url, min_size=1, max_size=1)
    first = second = None
    try:
        first = await start_worker(database_url, fake)
        await enqueue(pool)

        async def midway() -> bool:
            return len(fake.received) >= KILL_AFTER

        await until(midway, seconds=120, what=f"{KILL_AFTER} pushes")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        killed_at = time.monotonic()
        received_at_kill = len(fake.received)
        in_flight = {
            row["token"]
            for row in await db.fetch(
                "SELECT token FROM deliveries WHERE state = 'pending' AND lease_owner IS NOT NULL"
            )
        }
        recorded_at_kill = await db.fetchval(
            "SELECT count(*) FROM deliveries WHERE state <> 'pending'"
        )
        assert 0 < recorded_at_kill < TARGETS

        second = await start_worker(database_url, fake)

        async def all_settled() -> bool:
            pending = await db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'pending'")
            return bool(pending == 0)

        await until(all_settled, seconds=180, what="every delivery to settle")
        recovered = time.monotonic() - killed_at
        states = dict(await db.fetch("SELECT state, count(*) FROM deliveries GROUP BY state"))
        assert states == {"delivered": TARGETS}
        received = Counter(r.token for r in fake.received)
        tokens = {row["token"] for row in await db.fetch("SELECT token FROM deliveries")}
        assert set(received) == tokens, "a delivery never reached the fake"
        repeated = {token for token, n in received.items() if n > 1}
        assert repeated <= in_flight, "a push was repeated that was not in flight at the kill"
        assert max(received.values()) <= 2
        figures.add(
            "SIGKILL of `gateway deliver` mid-notification",
            targets=TARGETS,
            received_at_kill=received_at_kill,
            recorded_at_kill=recorded_at_kill,
            in_flight_at_kill=len(in_flight),
            sent_twice=len(repeated),
            lost=len(tokens - set(received)),
            all_delivered_after_s=f"{recovered:.1f} (lease {LEASE_SECONDS} s)",
        )
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), timeout=60)
        await pool.close()
        await fake.close()


async def test_a_database_crash_mid_notification_loses_no_delivery(
    tmp_path: Path, figures: Figures
):
    server = await asyncio.to_thread(PrivatePostgres)
    fake = FakeApns(TestCA(tmp_path), tmp_path)
    await fake.start()
    worker = None
    try:
        await apply_schema(server.dsn)
        connection = await asyncpg.connect(server.dsn)
        await populate(connection)
        await connection.close()
        # A short lease: a claim that committed while its answer was lost in
        # the crash is due again soon.
        worker = await start_worker(server.dsn, fake, lease=5)
        pool = await create_pool(server.dsn, min_size=1, max_size=1)
        try:
            await enqueue(pool)
        finally:
            await pool.close()

        async def midway() -> bool:
            return len(fake.received) >= KILL_AFTER

        await until(midway, seconds=120, what=f"{KILL_AFTER} pushes")
        await asyncio.to_thread(server.restart, "immediate")
        crashed_at = time.monotonic()
        received_at_crash = len(fake.received)

        async def all_settled() -> bool:
            try:
                connection = await asyncpg.connect(server.dsn)
            except (OSError, asyncpg.PostgresError):
                return False
            try:
                pending = await connection.fetchval(
                    "SELECT count(*) FROM deliveries WHERE state = 'pending'"
                )
            finally:
                await connection.close()
            return bool(pending == 0)

        await until(all_settled, seconds=180, what="every delivery to settle")
        recovered = time.monotonic() - crashed_at
        connection = await asyncpg.connect(server.dsn)
        try:
            states = {
                row["state"]: row["count"]
                for row in await connection.fetch(
                    "SELECT state, count(*) FROM deliveries GROUP BY state"
                )
            }
            tokens = {
                row["token"] for row in await connection.fetch("SELECT token FROM deliveries")
            }
        finally:
            await connection.close()
        assert states == {"delivered": TARGETS}
        received = Counter(r.token for r in fake.received)
        assert set(received) == tokens, "a delivery never reached the fake"
        repeated = [token for token, n in received.items() if n > 1]
        # Only sends in flight when the database went away can be repeated.
        assert len(repeated) <= CONCURRENCY
        assert worker.returncode is None, "the worker died with the database"
        figures.add(
            "PostgreSQL crashed (pg_ctl restart -m immediate) mid-notification",
            targets=TARGETS,
            received_at_crash=received_at_crash,
            sent_twice=len(repeated),
            lost=len(tokens - set(received)),
            all_delivered_after_s=f"{recovered:.1f} (lease 5 s)",
        )
    finally:
        if worker is not None and worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), timeout=60)
        await fake.close()
        await asyncio.to_thread(server.destroy)
