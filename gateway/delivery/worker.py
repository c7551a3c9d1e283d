"""Delivery workers: claim due deliveries under a lease, send outside any transaction, record.

Any number of workers, in any number of processes on any number of hosts,
share the queue in PostgreSQL: a claim is one statement with FOR UPDATE SKIP
LOCKED that leases the rows; the sends happen after it has committed; each
outcome is written only under the lease it was claimed with. A worker that
dies leaves its rows leased until the lease ends, then they are due again:
every delivery is attempted until it has an outcome, and sent twice only when
a worker died between sending and recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.commands import DeadToken, DeliveryState, Provider, PruneTokens
from gateway.config import Settings
from gateway.delivery.providers import Outcome, Push, PushProvider, Verdict
from gateway.errors import DatabaseError, GatewayError
from gateway.store import DELIVERY_CHANNEL, RecordedOutcome, Store, create_pool
from gateway.validation import replace_control_characters

log = logging.getLogger(__name__)

# Rows one claim takes at most; fewer when the provider has fewer free slots.
CLAIM_BATCH = 256
# A retry never waits longer than this, unless the service asked (Retry-After).
MAX_BACKOFF = 3600.0
# Notifications a worker keeps decoded; a claim batch rarely spans more than a few.
NOTIFICATION_CACHE = 1024
# How often delivered rows past their retention are purged, and how many per statement.
PURGE_INTERVAL = 60.0
PURGE_BATCH = 10_000
# A database failure makes the worker wait this long before it tries again.
DATABASE_PAUSE = 1.0
# Outcomes recorded in one statement at most.
RECORD_BATCH = 1000
# A stopping worker gives up recording after this many failures in a row.
STOPPING_RECORD_TRIES = 3


# What RECORD_OUTCOMES writes for each verdict; "retry" it turns into pending or expired.
STATE_OF = {
    Verdict.DELIVERED: DeliveryState.DELIVERED.value,
    Verdict.FAILED: DeliveryState.FAILED.value,
    Verdict.PRUNE: DeliveryState.PRUNED.value,
    Verdict.RETRY: "retry",
}


# A reason is a push service's text: bounded, and without the control
# characters (a NUL above all) a text column refuses.
MAX_REASON = 500


def _printable(reason: str | None) -> str | None:
    return None if reason is None else replace_control_characters(reason[:MAX_REASON])


def backoff(attempts: int, outcome: Outcome, base: float, quota_base: float) -> float:
    """Seconds before the next attempt: sygnal's base x 2^n, jittered, at least Retry-After.

    ``attempts`` counts the attempt that just failed, so the first retry waits ``base``.
    """
    exponent = min(max(attempts - 1, 0), 30)
    delay = (quota_base if outcome.quota else base) * float(2**exponent)
    # Jitter spreads a burst of failures (a provider's outage) over time, so
    # their retries do not all land together.
    delay = min(delay * random.uniform(0.8, 1.2), MAX_BACKOFF)  # noqa: S311
    if outcome.retry_after is not None:
        delay = max(delay, outcome.retry_after)
    return delay


@dataclass
class DeliveryStats:
    """What the workers of one process did, for /metrics and the logs."""

    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    alarms: dict[tuple[str, str], int] = field(default_factory=dict)
    # Registrations removed because their service said the token was dead.
    pruned_registrations: int = 0
    # Outcomes a worker reached after its lease had ended: another attempt owns the row.
    stale_outcomes: int = 0

    def count(self, table: dict[tuple[str, str], int], provider: str, label: str) -> None:
        table[(provider, label)] = table.get((provider, label), 0) + 1


class DeliveryCollector(Collector):
    def __init__(self, stats: DeliveryStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "gateway_deliveries",
            "Delivery attempts recorded by this process's workers, by provider and verdict.",
            labels=["provider", "verdict"],
        )
        for (provider, verdict), n in sorted(self.stats.outcomes.items()):
            outcomes.add_metric([provider, verdict], n)
        yield outcomes
        alarms = CounterMetricFamily(
            "gateway_delivery_alarms",
            "Deliveries failed for a reason an operator must fix (credentials, topic, payload).",
            labels=["provider", "reason"],
        )
        for (provider, reason), n in sorted(self.stats.alarms.items()):
            alarms.add_metric([provider, reason], n)
        yield alarms
        yield CounterMetricFamily(
            "gateway_delivery_pruned_registrations",
            "Registrations removed because their push service said the token is dead.",
            value=self.stats.pruned_registrations,
        )
        yield CounterMetricFamily(
            "gateway_delivery_stale_outcomes",
            "Outcomes dropped because the worker's lease had ended.",
            value=self.stats.stale_outcomes,
        )


@dataclass(frozen=True, slots=True)
class _Notification:
    id: str
    category: str
    message: dict[str, Any]
    overrides: dict[str, Any]
    priority: str
    collapse_key: str | None


@dataclass(frozen=True, slots=True)
class _Attempt:
    push: Push
    lease_id: uuid.UUID
    attempts: int
    outcome: Outcome


class DeliveryWorker:
    """One worker: a claim loop per provider, bounded by that provider's own concurrency."""

    def __init__(
        self,
        store: Store,
        providers: Sequence[PushProvider],
        settings: Settings,
        *,
        dsn: str | None = None,
        stats: DeliveryStats | None = None,
        name: str | None = None,
    ) -> None:
        self._store = store
        self._providers = list(providers)
        self._settings = settings
        self._dsn = dsn
        self.stats = stats or DeliveryStats()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = {p.provider: asyncio.Semaphore(p.concurrency) for p in self._providers}
        self._wake = {p.provider: asyncio.Event() for p in self._providers}
        self._in_flight = {p.provider: 0 for p in self._providers}
        self._notifications: dict[str, _Notification] = {}
        self._recorded: list[_Attempt] = []
        self._record_wake = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._stopping = False
        # A send must end well inside the lease, so that its outcome is recorded under it.
        self._send_timeout = max(settings.delivery_lease / 2, 0.5)

    async def start(self) -> None:
        for provider in self._providers:
            self._tasks.append(
                asyncio.create_task(
                    self._claim_forever(provider), name=f"claim-{provider.provider}"
                )
            )
        self._recorder = asyncio.create_task(self._record_forever(), name="record-outcomes")
        self._tasks.append(asyncio.create_task(self._purge_forever(), name="purge-deliveries"))
        if self._dsn is not None:
            self._tasks.append(asyncio.create_task(self._listen_forever(), name="listen"))

    async def close(self) -> None:
        """Stop claiming, let the sends in flight finish, record their outcomes, then stop."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sends:
            await asyncio.wait(self._sends)
        self._record_wake.set()
        await self._recorder
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    # ---------------------------------------------------------------- claiming

    async def _claim_forever(self, provider: PushProvider) -> None:
        slots = self._slots[provider.provider]
        wake = self._wake[provider.provider]
        # While sends are in flight, claiming as soon as one slot frees would
        # cost a claim statement per push: wait for a quarter of the slots.
        enough = max(1, min(CLAIM_BATCH, provider.concurrency // 4))
        while not self._stopping:
            await slots.acquire()
            taken = 1
            while taken < enough and self._in_flight[provider.provider]:
                await slots.acquire()
                taken += 1
            while taken < CLAIM_BATCH and not slots.locked():
                await slots.acquire()
                taken += 1
            # Cleared before the claim: a NOTIFY arriving during it is not lost.
            wake.clear()
            lease_id = uuid.uuid4()
            try:
                rows = await self._store.claim_deliveries(
                    provider.provider.value,
                    taken,
                    self.name,
                    lease_id,
                    self._settings.delivery_lease,
                )
                pushes = await self._pushes(rows)
            except GatewayError:
                for _ in range(taken):
                    slots.release()
                log.warning("claiming %s deliveries failed; trying again", provider.provider)
                await asyncio.sleep(DATABASE_PAUSE)
                continue
            for _ in range(taken - len(pushes)):
                slots.release()
            for push, attempts in pushes:
                self._in_flight[provider.provider] += 1
                task = asyncio.create_task(self._send(provider, push, lease_id, attempts))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            if len(rows) < taken:
                await self._idle(provider.provider, wake)

    async def _idle(self, provider: Provider, wake: asyncio.Event) -> None:
        """Wait for a NOTIFY, the next due row (a retry, a lease ending) or the poll."""
        timeout = self._settings.delivery_poll
        try:
            due = await self._store.next_due(provider.value)
        except GatewayError:
            due = None
        if due is not None:
            timeout = min(timeout, max((due - datetime.now(UTC)).total_seconds(), 0.0))
        # A row due now but locked by another worker's claim must not make this
        # loop spin.
        timeout = max(timeout, 0.01)
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
        # cancellation that lands as the event is set, and close() would wait
        # on this loop for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wake.wait()

    async def _pushes(self, rows: Sequence[asyncpg.Record]) -> list[tuple[Push, int]]:
        missing = {str(r["notification_id"]) for r in rows} - self._notifications.keys()
        if missing:
            for n in await self._store.load_notifications([uuid.UUID(i) for i in missing]):
                if len(self._notifications) >= NOTIFICATION_CACHE:
                    del self._notifications[next(iter(self._notifications))]
                self._notifications[str(n["id"])] = _Notification(
                    id=str(n["id"]),
                    category=n["category"],
                    message=orjson.loads(n["message"]),
                    overrides=orjson.loads(n["overrides"]),
                    priority=n["priority"],
                    collapse_key=n["collapse_key"],
                )
        return [(self._push(row), row["attempts"]) for row in rows]

    def _push(self, row: asyncpg.Record) -> Push:
        notification = self._notifications[str(row["notification_id"])]
        message = notification.message
        return Push(
            delivery_id=row["id"],
            provider=Provider(row["provider"]),
            token=row["token"],
            apns_bundle_id=row["apns_bundle_id"],
            gcm_sender_id=row["gcm_sender_id"],
            webpush_p256dh=row["webpush_p256dh"],
            webpush_auth=row["webpush_auth"],
            expires_at=row["expires_at"],
            priority=notification.priority,
            collapse_key=notification.collapse_key,
            notification_id=notification.id,
            category=notification.category,
            title=message.get("title"),
            body=message.get("body"),
            data=message.get("data") or {},
            override=notification.overrides.get(row["provider"]),
        )

    # ---------------------------------------------------------------- sending

    async def _send(
        self, provider: PushProvider, push: Push, lease_id: uuid.UUID, attempts: int
    ) -> None:
        try:
            # asyncio.timeout, not wait_for: no extra task per push.
            async with asyncio.timeout(self._send_timeout):
                outcome = await provider.send(push)
        except TimeoutError:
            outcome = Outcome(Verdict.RETRY, reason="timeout")
        except Exception as exc:
            # A provider must classify every answer; one that raises is a bug,
            # and the delivery is retried rather than lost.
            log.exception("the %s provider raised", provider.provider)
            outcome = Outcome(Verdict.RETRY, reason=f"provider error: {type(exc).__name__}")
        finally:
            self._in_flight[provider.provider] -= 1
            self._slots[provider.provider].release()
        self._recorded.append(_Attempt(push, lease_id, attempts, outcome))
        self._record_wake.set()

    # ---------------------------------------------------------------- recording

    async def _record_forever(self) -> None:
        failures = 0
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            while self._recorded:
                batch = self._recorded[:RECORD_BATCH]
                try:
                    await self._record(batch)
                except DatabaseError:
                    # Not an outage: the same batch would fail again. One at a
                    # time, so that only the outcome the database refuses is
                    # dropped (its row is attempted again when its lease ends),
                    # not the pushes already delivered beside it.
                    log.exception("the database refused a batch of delivery outcomes")
                    await self._record_one_by_one(batch)
                    del self._recorded[: len(batch)]
                    continue
                except GatewayError:
                    # Kept and written again; if the lease ends first, the row
                    # is attempted again and this outcome is dropped as stale.
                    log.warning("recording delivery outcomes failed; trying again", exc_info=True)
                    failures += 1
                    if self._stopping and failures > STOPPING_RECORD_TRIES:
                        log.error(
                            "stopping with %d outcomes unrecorded; their rows will be"
                            " attempted again when their leases end",
                            len(self._recorded),
                        )
                        return
                    await asyncio.sleep(DATABASE_PAUSE)
                    continue
                failures = 0
                del self._recorded[: len(batch)]
            if self._stopping and not self._sends:
                return

    async def _record_one_by_one(self, batch: list[_Attempt]) -> None:
        for attempt in batch:
            try:
                await self._record([attempt])
            except GatewayError:
                log.exception("dropped the outcome of delivery %d", attempt.push.delivery_id)

    async def _record(self, batch: list[_Attempt]) -> None:
        dead = [
            DeadToken(a.push.provider, a.push.token, a.outcome.observed_at)
            for a in batch
            if a.outcome.verdict is Verdict.PRUNE
        ]
        # Pruned before the outcome is written: a crash in between leaves a
        # delivery that is attempted again and pruned again, never a dead
        # token left registered.
        if dead:
            removed = await self._store.prune_tokens(PruneTokens(tuple(dict.fromkeys(dead))))
            self.stats.pruned_registrations += removed
        settings = self._settings
        rows = []
        for attempt in batch:
            outcome = attempt.outcome
            delay = 0.0
            if outcome.verdict is Verdict.RETRY:
                delay = backoff(
                    attempt.attempts,
                    outcome,
                    settings.delivery_retry_base,
                    settings.delivery_quota_retry_base,
                )
            rows.append(
                RecordedOutcome(
                    attempt.push.delivery_id,
                    attempt.lease_id,
                    STATE_OF[outcome.verdict],
                    outcome.status,
                    _printable(outcome.reason),
                    delay,
                )
            )
        written = await self._store.record_outcomes(rows)
        retry_soon = False
        for attempt, row in zip(batch, rows, strict=True):
            provider = attempt.push.provider.value
            if row.delivery_id not in written:
                self.stats.stale_outcomes += 1
                continue
            self.stats.count(self.stats.outcomes, provider, attempt.outcome.verdict.value)
            if attempt.outcome.alarm:
                self.stats.count(self.stats.alarms, provider, attempt.outcome.reason or "unknown")
                log.error(
                    "delivery %d via %s failed for a reason an operator must fix: %s",
                    row.delivery_id,
                    provider,
                    attempt.outcome.reason,
                )
            if attempt.outcome.verdict is Verdict.RETRY and row.delay < settings.delivery_poll:
                retry_soon = True
        if retry_soon:
            self.wake()

    # ---------------------------------------------------------------- waking, purging

    async def _listen_forever(self) -> None:
        """LISTEN on its own connection; reconnects after a failure. The poll covers the gaps."""
        assert self._dsn is not None
        while True:
            if self._listener is None or self._listener.is_closed():
                try:
                    self._listener = await asyncpg.connect(self._dsn, timeout=5)
                    await self._listener.add_listener(DELIVERY_CHANNEL, self._notified)
                    # Rows queued while this worker was not listening.
                    self.wake()
                except (OSError, asyncpg.PostgresError, TimeoutError):
                    log.warning("cannot LISTEN for deliveries; polling only", exc_info=True)
                    self._listener = None
            await asyncio.sleep(max(self._settings.delivery_poll, 1.0))

    def _notified(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        self.wake()

    async def _purge_forever(self) -> None:
        while True:
            try:
                while (
                    await self._store.purge_delivered(
                        self._settings.delivery_retention, PURGE_BATCH
                    )
                    == PURGE_BATCH
                ):
                    pass
            except GatewayError:
                log.warning("purging delivered rows failed", exc_info=True)
            await asyncio.sleep(PURGE_INTERVAL)


# -------------------------------------------------------------------- assembly


def build_providers(settings: Settings) -> list[PushProvider]:
    """The providers whose credentials are configured."""
    from gateway.delivery import apns, fcm, webpush

    found: list[PushProvider | None] = [
        apns.ApnsProvider.from_settings(settings),
        fcm.FcmProvider.from_settings(settings),
        webpush.WebPushProvider.from_settings(settings),
    ]
    return [provider for provider in found if provider is not None]


def worker_count(settings: Settings, providers: Sequence[PushProvider]) -> int:
    if settings.delivery_workers is not None:
        return settings.delivery_workers if providers else 0
    return 1 if providers else 0


@contextlib.asynccontextmanager
async def running_workers(
    settings: Settings, stats: DeliveryStats | None = None
) -> AsyncIterator[list[DeliveryWorker]]:
    """The configured workers, on a pool of their own, until the block ends."""
    assert settings.database_url is not None
    providers = build_providers(settings)
    count = worker_count(settings, providers)
    if count == 0:
        for provider in providers:
            await provider.close()
        yield []
        return
    # Their own connections: deliveries never take a request's.
    pool = await create_pool(settings.database_url, min_size=1, max_size=1 + 2 * count)
    stats = stats or DeliveryStats()
    workers = [
        DeliveryWorker(Store(pool), providers, settings, dsn=settings.database_url, stats=stats)
        for _ in range(count)
    ]
    log.info("delivery: %d worker(s) for %s", count, ", ".join(p.provider.value for p in providers))
    try:
        for worker in workers:
            await worker.start()
        yield workers
    finally:
        for worker in workers:
            await worker.close()
        for provider in providers:
            await provider.close()
        await pool.close()


DELIVERY_WORKERS = web.AppKey("delivery_workers", list)
