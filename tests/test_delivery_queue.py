"""The queue's own guarantees, on the store: leases, stale workers, backoff, retention."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.commands import FindTargets, SendNotification
from gateway.delivery.providers import Outcome, Verdict
from gateway.delivery.worker import MAX_BACKOFF, backoff
from gateway.store import RecordedOutcome, Store, create_pool
from tests.helpers import apns_token


@pytest.fixture
async def store(database_url: str, db: asyncpg.Connection) -> AsyncIterator[Store]:
    await db.execute("TRUNCATE notifications CASCADE")
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield Store(pool)
    await pool.close()


async def queued(store: Store, db: asyncpg.Connection, users: int = 1) -> uuid.UUID:
    """A notification with one APNs delivery per user, registered straight in the tables."""
    for number in range(users):
        session = await store.create_session(f"user{number}", 3600)
        session_id = await db.fetchval(
            "SELECT id FROM sessions WHERE user_id = $1 ORDER BY id DESC LIMIT 1", f"user{number}"
        )
        assert session
        await db.execute(
            "INSERT INTO registrations (user_id, session_id, device_id, provider, token)"
            " VALUES ($1, $2, 'device', 'apns', $3)",
            f"user{number}",
            session_id,
            apns_token(number),
        )
    answer = await store.enqueue_notification(
        SendNotification(
            audience=FindTargets(tuple(f"user{n}" for n in range(users)), "chat_message"),
            exclude_users=(),
            message={"title": "t", "body": None, "data": {}},
            overrides={},
            ttl_seconds=3600,
            priority="high",
            collapse_key=None,
        )
    )
    assert answer.targets == users
    return answer.id


def outcome(delivery_id: int, lease: uuid.UUID, verdict: str, delay: float = 0) -> RecordedOutcome:
    return RecordedOutcome(delivery_id, lease, verdict, 200, None, delay)


async def lease_ends(db: asyncpg.Connection) -> None:
    """The lease's time passes: the claimed rows are due again."""
    await db.execute("UPDATE deliveries SET next_attempt_at = now() WHERE state = 'pending'")


async def test_a_claimed_row_is_not_claimed_again_until_its_lease_ends(store, db):
    await queued(store, db)
    first = await store.claim_deliveries("apns", 10, "worker-a", uuid.uuid4(), 60)
    assert len(first) == 1
    assert await store.claim_deliveries("apns", 10, "worker-b", uuid.uuid4(), 60) == []
    await lease_ends(db)
    again = await store.claim_deliveries("apns", 10, "worker-b", uuid.uuid4(), 60)
    assert [r["id"] for r in again] == [first[0]["id"]]
    assert again[0]["attempts"] == 2


async def test_a_stale_worker_cannot_overwrite_a_newer_attempt(store, db):
    await queued(store, db)
    lease_a, lease_b = uuid.uuid4(), uuid.uuid4()
    (row,) = await store.claim_deliveries("apns", 10, "worker-a", lease_a, 60)
    await lease_ends(db)
    await store.claim_deliveries("apns", 10, "worker-b", lease_b, 60)
    # A, late, reports a failure while B's attempt is in flight: ignored.
    assert await store.record_outcomes([outcome(row["id"], lease_a, "failed")]) == set()
    assert await db.fetchval("SELECT lease_owner FROM deliveries") == "worker-b"
    assert await store.record_outcomes([outcome(row["id"], lease_b, "delivered")]) == {row["id"]}
    # ...and after B has recorded, A still changes nothing.
    assert await store.record_outcomes([outcome(row["id"], lease_a, "failed")]) == set()
    assert await db.fetchval("SELECT state FROM deliveries") == "delivered"


async def test_a_retry_is_due_after_its_backoff(store, db):
    await queued(store, db)
    lease = uuid.uuid4()
    (row,) = await store.claim_deliveries("apns", 10, "w", lease, 60)
    await store.record_outcomes([outcome(row["id"], lease, "retry", delay=600)])
    assert await store.claim_deliveries("apns", 10, "w", uuid.uuid4(), 60) == []
    wait = await db.fetchval("SELECT next_attempt_at - now() FROM deliveries")
    assert 590 < wait.total_seconds() <= 600
    state = await db.fetchval("SELECT state FROM deliveries")
    assert state == "pending"


async def test_a_retry_past_the_ttl_is_expired(store, db):
    await queued(store, db)
    lease = uuid.uuid4()
    (row,) = await store.claim_deliveries("apns", 10, "w", lease, 60)
    await store.record_outcomes([outcome(row["id"], lease, "retry", delay=3601)])
    assert await db.fetchval("SELECT state FROM deliveries") == "expired"


async def test_claims_share_the_rows_without_overlap(store, db):
    await queued(store, db, users=30)
    claims = [await store.claim_deliveries("apns", 7, f"w{n}", uuid.uuid4(), 60) for n in range(5)]
    ids = [r["id"] for claim in claims for r in claim]
    assert len(ids) == len(set(ids)) == 30


def test_backoff_doubles_from_the_base_with_jitter_and_honours_retry_after():
    plain = Outcome(Verdict.RETRY)
    for attempts, base in [(1, 10), (2, 20), (3, 40), (5, 160)]:
        assert 0.8 * base <= backoff(attempts, plain, 10, 60) <= 1.2 * base
    quota = Outcome(Verdict.RETRY, quota=True)
    assert 48 <= backoff(1, quota, 10, 60) <= 72
    assert 96 <= backoff(2, quota, 10, 60) <= 144
    assert backoff(1, Outcome(Verdict.RETRY, retry_after=300), 10, 60) == 300
    assert backoff(40, plain, 10, 60) == MAX_BACKOFF
    assert backoff(3, plain, 0, 0) == 0


async def test_delivered_rows_past_the_retention_are_purged_and_still_counted(store, db):
    from gateway.commands import ShowNotification

    notification = await queued(store, db, users=3)
    lease = uuid.uuid4()
    rows = await store.claim_deliveries("apns", 10, "w", lease, 60)
    await store.record_outcomes([outcome(r["id"], lease, "delivered") for r in rows])
    assert await store.purge_delivered(3600, 100) == 0
    await db.execute("UPDATE deliveries SET finished_at = now() - interval '2 hours'")
    assert await store.purge_delivered(3600, 2) == 2
    assert await store.purge_delivered(3600, 2) == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
    progress = await store.show_notification(ShowNotification(notification))
    assert sum(n for _, state, n in progress.counts if state == "delivered") == 3
