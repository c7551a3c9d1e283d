"""What runs beside the requests, from start to shutdown: the pools, the group-commit writer,
the session purge, and the delivery workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.delivery.worker import (
    DELIVERY_WORKERS,
    DeliveryCollector,
    DeliveryStats,
    running_workers,
)
from gateway.executor import Executor, GroupCommitter
from gateway.keys import (
    DATABASE_PROBE,
    EXECUTOR,
    INTERNAL_PROBE,
    INTERNAL_STORE,
    RATE_LIMITER,
    SETTINGS,
)
from gateway.layer_auth import identity_verifier
from gateway.observability.metrics import METRICS
from gateway.store import Store, create_pool

log = logging.getLogger(__name__)

# Expired sessions stop working at once (every query checks expires_at); this
# only reclaims their rows, and their registrations with them.
PURGE_INTERVAL_SECONDS = 60

# How much longer than GATEWAY_INTERNAL_WRITE_TIMEOUT the database lets an
# internal transaction sit idle: the gateway cuts a stalled stream first.
INTERNAL_IDLE_MARGIN = 10.0


async def _purge_expired_sessions(store: Store) -> None:
    while True:
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)
        try:
            purged = await store.purge_expired_sessions()
        except Exception:
            log.warning("purging expired sessions failed", exc_info=True)
        else:
            if purged:
                log.info("purged %d expired sessions", purged)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens the pools and the group-commit writer; on shutdown drains the writer, then closes."""
    settings = app[SETTINGS]
    if settings.database_url is None:
        raise RuntimeError("Settings.database_url must be resolved before the app starts")
    pool = await create_pool(
        settings.database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size
    )
    try:
        # The senders' API streams through a pool of its own, so however many
        # fan-outs stall, the public dialects keep every connection of theirs.
        # The server ends a transaction a stalled stream left open, should the
        # gateway's own write timeout not have.
        internal_pool = await create_pool(
            settings.database_url,
            min_size=1,
            max_size=settings.internal_pool_max_size,
            idle_transaction_timeout=settings.internal_write_timeout + INTERNAL_IDLE_MARGIN,
        )
    except BaseException:
        await pool.close()
        raise
    store = Store(pool)
    internal_store = Store(internal_pool, sessions=store.sessions)
    app[INTERNAL_STORE] = internal_store
    app[DATABASE_PROBE] = store
    app[INTERNAL_PROBE] = internal_store
    writer = GroupCommitter(
        store,
        max_pending=settings.max_pending_writes,
        on_batch=app[METRICS].batch_size.observe,
    )
    writer.start()
    app[EXECUTOR] = Executor(
        store, writer, app[RATE_LIMITER], identity_verifier(settings), internal=internal_store
    )
    purger = asyncio.create_task(_purge_expired_sessions(store), name="purge-sessions")
    try:
        yield
    finally:
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger
        await writer.close()
        await pool.close()
        await internal_pool.close()


async def delivery_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs the delivery workers inside `serve` when provider credentials are configured."""
    stats = DeliveryStats()
    async with running_workers(app[SETTINGS], stats) as workers:
        if workers:
            app[METRICS].registry.register(DeliveryCollector(stats))
        app[DELIVERY_WORKERS] = workers
        yield
