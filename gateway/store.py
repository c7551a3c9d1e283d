"""Every line of SQL the gateway runs, and the turn of database failures into domain errors."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import orjson

from gateway.commands import (
    FindTargets,
    ListDeliveries,
    ListRegistrations,
    OpenSession,
    PruneTokens,
    Row,
    SendNotification,
    SessionRef,
    ShowNotification,
    WriteCommand,
)
from gateway.errors import (
    DatabaseError,
    DatabaseUnavailable,
    GatewayError,
    IdempotencyKeyReused,
    NotificationNotFound,
    SessionNotFound,
)
from gateway.planning import plan_writes
from gateway.sessions import ResolvedSession, SessionCache

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"

# Bounds on waiting for the database, so an outage fails requests in seconds
# instead of holding them: connecting, getting a pooled connection, and any
# one statement. A batch of 1,024 writes takes tens of milliseconds; a hung
# server (a partition, a frozen host) is answered 503 within about 8 s.
CONNECT_TIMEOUT = 3.0
ACQUIRE_TIMEOUT = 3.0
STATEMENT_TIMEOUT = 5.0

# Deadlocks between batches of different worker processes are possible (two
# batches can meet on the same rows through token transfers in opposite
# orders); Postgres breaks them by aborting one, which is then simply rerun.
RETRIES_ON_CONFLICT = 3

# What the pool hands out: a proxy that behaves as a connection.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# Deletes an expired session too, so that it stops holding registrations, but
# reports only a live one as ended.
END_SESSION = """
DELETE FROM sessions WHERE token_sha256 = $1 RETURNING expires_at > now() AS was_live
"""

PURGE_EXPIRED_SESSIONS = """
WITH gone AS (DELETE FROM sessions WHERE expires_at <= now() RETURNING 1)
SELECT count(*) FROM gone
"""

RESOLVE_SESSIONS = """
SELECT token_sha256, id, user_id FROM sessions
WHERE token_sha256 = ANY($1::bytea[]) AND expires_at > now()
"""

# schema.sql's function re-checks every session under FOR KEY SHARE and
# applies the plan in the same single round trip.
APPLY_WRITES = "SELECT apply_registration_writes($1::json)"

LIST_REGISTRATIONS = """
SELECT caller.id AS caller_session, r.provider, r.token, r.device_id, r.category_filter,
       r.apns_bundle_id, r.gcm_sender_id, r.ios_version, r.webpush_p256dh, r.webpush_auth,
       r.created_at, r.updated_at
FROM sessions AS caller
LEFT JOIN (registrations AS r JOIN sessions AS owner
           ON owner.id = r.session_id AND owner.expires_at > now())
       ON r.user_id = caller.user_id
WHERE caller.token_sha256 = $1 AND caller.expires_at > now()
ORDER BY r.registered_seq DESC
"""

SESSION_USER = """
SELECT user_id FROM sessions WHERE token_sha256 = $1 AND expires_at > now()
"""

PING = "SELECT 1"

# For the operators' gauge, run in the background every few seconds on the
# internal pool, never by a scrape: one pass over the table, no lock beyond a
# plain read.
COUNT_REGISTRATIONS_BY_PROVIDER = """
-- Registrations of expired, not yet purged sessions are gone to every caller.
SELECT r.provider, count(*) AS registrations
FROM registrations AS r JOIN sessions AS s ON s.id = r.session_id AND s.expires_at > now()
GROUP BY r.provider
"""


# Everything talking to Postgres can raise: its own errors, the driver's, the
# socket's, and our timeouts.
DATABASE_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


# Postgres aborts one side of a deadlock, or a transaction that lost a
# serialization race: nothing was written, and running it again succeeds.
CONFLICTS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def _is_unavailable(exc: BaseException) -> bool:
    # A conflict still there after its retries is contention, not a fault:
    # the caller is told to retry soon (503), never that the request failed.
    return isinstance(
        exc,
        asyncpg.DeadlockDetectedError
        | asyncpg.SerializationError
        | OSError
        | asyncio.TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.TooManyConnectionsError,
    )


def translate(exc: BaseException) -> GatewayError:
    """The domain error for a failure raised while talking to Postgres."""
    if _is_unavailable(exc):
        return DatabaseUnavailable(str(exc))
    return DatabaseError(f"{type(exc).__name__}: {exc}")


@contextmanager
def translated() -> Iterator[None]:
    """Where the store talks to Postgres: any failure leaves as its domain error."""
    try:
        yield
    except DATABASE_FAILURES as exc:
        raise translate(exc) from exc


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Skips the pool's per-release reset query: the gateway leaves no session state behind."""


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, idle_transaction_timeout: float | None = None
) -> asyncpg.Pool:
    """``idle_transaction_timeout``: the server ends a transaction left idle this long."""
    server_settings = (
        {}
        if idle_transaction_timeout is None
        else {"idle_in_transaction_session_timeout": str(int(idle_transaction_timeout * 1000))}
    )
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_no_reset,
        timeout=CONNECT_TIMEOUT,
        command_timeout=STATEMENT_TIMEOUT,
        server_settings=server_settings,
    )


async def apply_schema(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        # Concurrent migrations (several workers, or tests) would race on
        # CREATE ... IF NOT EXISTS; one lock makes them take turns.
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(7224302577)")
            await connection.execute(SCHEMA_PATH.read_text())
    finally:
        await connection.close()


class Store:
    """The gateway's data, on one asyncpg pool.

    The internal API has a Store of its own on a pool of its own, sharing the
    public one's session cache: a session it ends is forgotten by both.
    """

    def __init__(self, pool: asyncpg.Pool, sessions: SessionCache | None = None) -> None:
        self._pool = pool
        self.sessions = SessionCache() if sessions is None else sessions
        self._nonce_slots = asyncio.Semaphore(NONCE_CONNECTIONS)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection whose release cannot turn a committed write into a failure.

        Once a statement has committed the write is durable, so a failure while
        the connection goes back to the pool is logged and not reported.
        """
        connection = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT)
        try:
            yield connection
        finally:
            try:
                await self._pool.release(connection)
            except Exception:
                log.warning("connection failed on release; the pool replaces it", exc_info=True)

    async def ping(self) -> None:
        with translated():
            async with self._connection() as connection:
                await connection.fetchval(PING)

    async def create_session(self, user_id: str, ttl_seconds: int) -> str:
        """A new session's token, for callers with no use for its expiry."""
        return (await self.open_session(OpenSession(user_id, ttl_seconds))).token

    async def end_session(self, session: SessionRef) -> None:
        self.sessions.forget(session.token_sha256)
        was_live = await self._retrying_conflicts(END_SESSION, session.token_sha256)
        if not was_live:
            raise SessionNotFound()

    async def purge_expired_sessions(self) -> int:
        count: int = await self._retrying_conflicts(PURGE_EXPIRED_SESSIONS)
        return count

    async def list_registrations(self, query: ListRegistrations) -> list[Row]:
        with translated():
            async with self._connection() as connection:
                rows = await connection.fetch(LIST_REGISTRATIONS, query.session.token_sha256)
        if not rows:
            raise SessionNotFound()
        return [dict(row) for row in rows if row["provider"] is not None]

    async def session_user(self, session: SessionRef) -> str:
        """The user a live session belongs to; SessionNotFound otherwise."""
        with translated():
            async with self._connection() as connection:
                user_id: str | None = await connection.fetchval(
                    SESSION_USER, session.token_sha256
                )
        if user_id is None:
            raise SessionNotFound()
        return user_id

    async def apply_writes(self, commands: Sequence[WriteCommand]) -> list[GatewayError | None]:
        """Apply a batch of writes atomically; the outcome of each, in order.

        A failure that one command may have caused is isolated by rerunning the
        batch's commands one by one, so it fails that command alone.
        """
        try:
            return await self._apply_writes_once(commands)
        except DATABASE_FAILURES as exc:
            if _is_unavailable(exc):
                return [translate(exc)] * len(commands)
            if len(commands) == 1:
                log.error("write rejected by the database: %s", type(exc).__name__)
                return [translate(exc)]
        outcomes: list[GatewayError | None] = []
        for command in commands:
            outcomes.extend(await self.apply_writes([command]))
        return outcomes

    async def _resolve(
        self, connection: Connection, commands: Sequence[WriteCommand]
    ) -> dict[bytes, ResolvedSession]:
        found: dict[bytes, ResolvedSession] = {}
        missing: list[bytes] = []
        for command in commands:
            digest = command.session.token_sha256
            session = self.sessions.get(digest)
            if session is not None:
                found[digest] = session
            elif digest not in missing:
                missing.append(digest)
        if missing:
            for row in await connection.fetch(RESOLVE_SESSIONS, missing):
                session = ResolvedSession(row["id"], row["user_id"])
                found[bytes(row["token_sha256"])] = session
                self.sessions.put(bytes(row["token_sha256"]), session)
        return found

    async def _apply_writes_once(
        self, commands: Sequence[WriteCommand]
    ) -> list[GatewayError | None]:
        outcomes: list[GatewayError | None] = [None] * len(commands)
        conflicts = 0
        async with self._connection() as connection:
            sessions = await self._resolve(connection, commands)
            while True:
                writes: list[tuple[ResolvedSession, WriteCommand]] = []
                for index, command in enumerate(commands):
                    session = sessions.get(command.session.token_sha256)
                    if session is None:
                        outcomes[index] = SessionNotFound()
                    else:
                        writes.append((session, command))
                if not writes:
                    return outcomes
                try:
                    dead = await connection.fetchval(APPLY_WRITES, plan_writes(writes).document())
                except CONFLICTS:
                    conflicts += 1
                    if conflicts > RETRIES_ON_CONFLICT:
                        raise
                    continue
                if not dead:
                    return outcomes
                # Sessions ended since they were cached: nothing was written;
                # fail their commands and plan the rest again.
                self.sessions.forget_ids(set(dead))
                sessions = {d: s for d, s in sessions.items() if s.id not in set(dead)}

    # -------------------------------------------------- the senders' internal API

    async def open_session(self, command: OpenSession) -> OpenedSession:
        """Start a session; its token (stored only as a digest) and when it expires."""
        token = secrets.token_hex(16)
        digest = SessionRef.from_token(token).token_sha256
        with translated():
            async with self._connection() as connection:
                expires_at = await connection.fetchval(
                    OPEN_SESSION, digest, command.user_id, command.ttl_seconds
                )
        return OpenedSession(token, expires_at)

    async def find_targets(self, query: FindTargets) -> AsyncGenerator[list[bytes], None]:
        """The fan-out's targets in batches of NDJSON lines, read through a server-side cursor.

        However large the audience, only one batch is in memory at a time. The
        caller must close the generator when it stops early
        (``contextlib.aclosing``), so that the connection goes back at once.
        """
        if not query.users:
            return
        with translated():
            async with self._connection() as connection, connection.transaction(readonly=True):
                cursor = await connection.cursor(
                    FIND_TARGET_LINES, list(query.users), query.category
                )
                while batch := await cursor.fetch(TARGETS_BATCH):
                    yield [row[0] for row in batch]

    async def prune_tokens(self, command: PruneTokens) -> int:
        """Remove the registrations of tokens reported dead; how many there were."""
        providers = [dead.provider.value for dead in command.tokens]
        tokens = [dead.token for dead in command.tokens]
        observed = [dead.observed_at for dead in command.tokens]
        removed: int = await self._retrying_conflicts(PRUNE_TOKENS, providers, tokens, observed)
        return removed

    async def _retrying_conflicts(self, query: str, *arguments: Any) -> Any:
        """One statement's value, run again when Postgres aborts it on a conflict.

        Ending or purging a session cascades to its registrations, and pruning
        deletes registrations by token: each locks rows in an order of its own,
        so it can meet a write batch head on (the batch moving a user's devices
        in the other order), and Postgres aborts one of the two. The batch
        retries on its own; these retry here.
        """
        conflicts = 0
        with translated():
            while True:
                try:
                    async with self._connection() as connection:
                        return await connection.fetchval(query, *arguments)
                except CONFLICTS:
                    conflicts += 1
                    if conflicts > RETRIES_ON_CONFLICT:
                        raise

    # -------------------------------------------------- the operators' metrics

    def pool_usage(self) -> tuple[int, int, int]:
        """The pool's open, idle and maximum connections; asks the database nothing."""
        return self._pool.get_size(), self._pool.get_idle_size(), self._pool.get_max_size()

    async def count_registrations_by_provider(self) -> dict[str, int]:
        with translated():
            async with self._connection() as connection:
                rows = await connection.fetch(COUNT_REGISTRATIONS_BY_PROVIDER)
        return {row["provider"]: row["registrations"] for row in rows}

    # -------------------------------------------------- Layer's authentication handshake

    async def issue_nonce(self) -> str:
        """A new single-use nonce, stored as its digest, valid for NONCE_TTL_SECONDS."""
        nonce = secrets.token_urlsafe(32)
        with translated():
            # Every 401 mints one: a flood of refused requests may use a few
            # pooled connections, never all of them (writes keep the rest).
            async with self._nonce_slots, self._connection() as connection:
                await connection.execute(ISSUE_NONCE, _digest(nonce), NONCE_TTL_SECONDS)
        return nonce

    async def open_session_with_nonce(
        self, nonce: str, user_id: str, ttl_seconds: int
    ) -> OpenedSession | None:
        """Consume the nonce and open a session for the user, atomically; None if it was not live.

        One statement does both, so two presentations of the same nonce at the
        same moment (two workers, two hosts) open one session between them.
        """
        token = secrets.token_hex(16)
        with translated():
            async with self._connection() as connection:
                expires_at = await connection.fetchval(
                    OPEN_SESSION_WITH_NONCE,
                    _digest(nonce),
                    SessionRef.from_token(token).token_sha256,
                    user_id,
                    ttl_seconds,
                )
        return None if expires_at is None else OpenedSession(token, expires_at)
    # -------------------------------------------------- delivery: the queue

    async def enqueue_notification(self, command: SendNotification) -> QueuedNotification:
        """The notification and one delivery per target, committed together.

        With an idempotency key already used, the first notification is the
        answer and nothing is written; the same key on a different request is
        refused.
        """
        audience = command.audience
        with translated():
            async with self._connection() as connection, connection.transaction():
                row = await connection.fetchrow(
                    INSERT_NOTIFICATION,
                    command.idempotency_key,
                    command.request_sha256,
                    orjson.dumps(
                        {"users": audience.users, "exclude_users": command.exclude_users}
                    ).decode(),
                    audience.category,
                    orjson.dumps(command.message).decode(),
                    orjson.dumps(command.overrides).decode(),
                    command.ttl_seconds,
                    command.priority,
                    command.collapse_key,
                )
                if row is None:
                    first = await connection.fetchrow(
                        FIND_NOTIFICATION_BY_KEY, command.idempotency_key
                    )
                    if first is None or first["request_sha256"] != command.request_sha256:
                        raise IdempotencyKeyReused()
                    return QueuedNotification(first["id"], first["targets"], replayed=True)
                targets: int = 0
                if audience.users:
                    targets = await connection.fetchval(
                        ENQUEUE_DELIVERIES,
                        list(audience.users),
                        audience.category,
                        row["id"],
                        row["expires_at"],
                        timeout=ENQUEUE_TIMEOUT,
                    )
                await connection.execute(SET_NOTIFICATION_TARGETS, row["id"], targets)
                if targets:
                    await connection.execute(WAKE_WORKERS, "")
        return QueuedNotification(row["id"], targets, replayed=False)

    async def show_notification(self, query: ShowNotification) -> NotificationProgress:
        with translated():
            async with self._connection() as connection:
                row = await connection.fetchrow(SHOW_NOTIFICATION, query.notification_id)
                if row is None:
                    raise NotificationNotFound()
                counts = await connection.fetch(COUNT_DELIVERIES, query.notification_id)
                failures = await connection.fetch(
                    FAILURE_REASONS, query.notification_id, FAILURE_REASONS_SHOWN
                )
        return NotificationProgress(
            dict(row), [(r["provider"], r["state"], r["n"]) for r in counts], failures
        )

    async def list_deliveries(self, query: ListDeliveries) -> list[Row]:
        state = None if query.outcome is None else query.outcome.value
        with translated():
            async with self._connection() as connection:
                if await connection.fetchrow(SHOW_NOTIFICATION, query.notification_id) is None:
                    raise NotificationNotFound()
                rows: list[asyncpg.Record] = await connection.fetch(
                    LIST_DELIVERIES, query.notification_id, state, query.after, query.limit
                )
        return [dict(row) for row in rows]

    async def claim_deliveries(
        self, provider: str, limit: int, owner: str, lease_id: uuid.UUID, lease_seconds: float
    ) -> list[asyncpg.Record]:
        """Up to ``limit`` due deliveries of ``provider``, leased to ``lease_id``."""
        with translated():
            async with self._connection() as connection:
                rows: list[asyncpg.Record] = await connection.fetch(
                    CLAIM_DELIVERIES, provider, limit, owner, lease_id, lease_seconds
                )
        return rows

    async def load_notifications(self, ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
        with translated():
            async with self._connection() as connection:
                rows: list[asyncpg.Record] = await connection.fetch(LOAD_NOTIFICATIONS, list(ids))
        return rows

    async def next_due(self, provider: str) -> datetime | None:
        """When the next pending delivery of ``provider`` is due (a retry or a lease end)."""
        with translated():
            async with self._connection() as connection:
                due: datetime | None = await connection.fetchval(NEXT_DUE, provider)
        return due

    async def record_outcomes(self, outcomes: Sequence[RecordedOutcome]) -> set[int]:
        """Write each outcome under its lease; the ids actually written (the rest were stale)."""
        if not outcomes:
            return set()
        columns = [list(column) for column in zip(*outcomes, strict=True)]
        with translated():
            async with self._connection() as connection:
                rows = await connection.fetch(RECORD_OUTCOMES, *columns)
        return {row["id"] for row in rows}

    async def purge_delivered(self, retention_seconds: float, batch: int) -> int:
        with translated():
            async with self._connection() as connection:
                purged: int = await connection.fetchval(PURGE_DELIVERED, retention_seconds, batch)
        return purged


# ------------------------------------------------------ the senders' internal API

# Rows per round trip of the fan-out cursor: large enough that round trips
# cost little next to encoding the rows, small enough to keep memory flat.
TARGETS_BATCH = 1000

OPEN_SESSION = """
INSERT INTO sessions (token_sha256, user_id, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
RETURNING expires_at
"""

# Probes the registrations index that leads with user_id once per user of the
# audience (unnest keeps the array one parameter, whatever its size), checks
# each registration's session is live, and applies the normalised filter ('*',
# 'a,b' or '-a,b'; category names hold no commas) in the query, so rows the
# sender will not use never leave the database. Same semantics as
# validation.category_filter_admits.

FIND_TARGETS = """
SELECT r.user_id, r.provider, r.token, r.apns_bundle_id, r.gcm_sender_id, r.ios_version,
       r.webpush_p256dh, r.webpush_auth, r.device_id
FROM unnest($1::text[]) AS audience(user_id)
JOIN registrations AS r ON r.user_id = audience.user_id
JOIN sessions AS s ON s.id = r.session_id AND s.expires_at > now()
WHERE r.category_filter = '*'
   OR (left(r.category_filter, 1) <> '-'
       AND $2::text = ANY(string_to_array(r.category_filter, ',')))
   OR (left(r.category_filter, 1) = '-'
       AND $2::text <> ALL(string_to_array(substr(r.category_filter, 2), ',')))
"""

# One statement on the (provider, token) unique index; a token listed twice is
# counted once. Registrations of expired, not yet purged sessions go too, but
# are not counted: to every caller they are already gone.
PRUNE_TOKENS = """
WITH gone AS (
    DELETE FROM registrations AS r
    USING unnest($1::text[], $2::text[], $3::timestamptz[]) AS dead(provider, token, observed_at)
    WHERE r.provider = dead.provider AND r.token = dead.token
      -- Registered again after the push service saw it dead: a new install.
      AND (dead.observed_at IS NULL OR r.updated_at <= dead.observed_at)
    RETURNING r.session_id
)
SELECT count(*) FROM gone JOIN sessions AS s ON s.id = gone.session_id AND s.expires_at > now()
"""


@dataclass(frozen=True, slots=True)
class OpenedSession:
    token: str
    expires_at: datetime


# ------------------------------------------------------ Layer's authentication handshake

# Layer's nonces live ten minutes: time for the app's backend to sign one.
NONCE_TTL_SECONDS = 600
# Pooled connections that minting nonces may hold at once (see issue_nonce).
NONCE_CONNECTIONS = 2


def _digest(nonce: str) -> bytes:
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).digest()


# Also clears a few expired nonces, so the table stays as small as the last
# ten minutes' handshakes without a sweeper of its own.
ISSUE_NONCE = """
WITH expired AS (
    DELETE FROM layer_nonces WHERE nonce_sha256 IN (
        SELECT nonce_sha256 FROM layer_nonces WHERE expires_at <= now() LIMIT 8
        FOR UPDATE SKIP LOCKED
    )
)
INSERT INTO layer_nonces (nonce_sha256, expires_at)
VALUES ($1, now() + make_interval(secs => $2))
"""

# The DELETE takes the nonce's row lock: a second presentation waits for the
# first to commit, then finds the row gone and opens nothing.
OPEN_SESSION_WITH_NONCE = """
WITH used AS (
    DELETE FROM layer_nonces WHERE nonce_sha256 = $1 AND expires_at > now() RETURNING 1
)
INSERT INTO sessions (token_sha256, user_id, expires_at)
SELECT $2, $3, now() + make_interval(secs => $4) FROM used
RETURNING expires_at
"""


# ------------------------------------------------------------------ delivery
# The notifications queue. Claiming, recording and purging are each one
# statement, so any number of workers on any number of hosts share the tables
# with no coordinator but PostgreSQL's row locks.

# Workers LISTEN here; an enqueue and a retry due soon NOTIFY it.
DELIVERY_CHANNEL = "gateway_deliveries"

# ON CONFLICT DO NOTHING waits for a concurrent insert of the same key to
# commit or roll back, so two racing retries cannot both insert.
INSERT_NOTIFICATION = """
INSERT INTO notifications (
    idempotency_key, request_sha256, audience, category, message, overrides,
    ttl_seconds, expires_at, priority, collapse_key)
VALUES ($1, $2, $3::jsonb, $4, $5::json, $6::json, $7::integer,
        now() + make_interval(secs => $7::integer), $8, $9)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, expires_at
"""

FIND_NOTIFICATION_BY_KEY = """
SELECT id, targets, request_sha256 FROM notifications WHERE idempotency_key = $1
"""

# One statement from the registrations to the queue: the targets never come
# into Python. FIND_TARGETS ($1 users, $2 category) is the rule /targets uses;
# it is composed from constants only.
ENQUEUE_DELIVERIES = f"""
WITH queued AS (
    INSERT INTO deliveries (
        notification_id, user_id, provider, token, apns_bundle_id, gcm_sender_id,
        webpush_p256dh, webpush_auth, expires_at)
    SELECT $3, t.user_id, t.provider, t.token, t.apns_bundle_id, t.gcm_sender_id,
           t.webpush_p256dh, t.webpush_auth, $4
    FROM ({FIND_TARGETS}) AS t
    RETURNING 1
)
SELECT count(*) FROM queued
"""  # noqa: S608

SET_NOTIFICATION_TARGETS = """
UPDATE notifications SET targets = $2 WHERE id = $1
"""

WAKE_WORKERS = f"SELECT pg_notify('{DELIVERY_CHANNEL}', $1)"

SHOW_NOTIFICATION = """
SELECT id, category, targets, priority, collapse_key, ttl_seconds, created_at, expires_at
FROM notifications WHERE id = $1
"""

COUNT_DELIVERIES = """
SELECT provider, state, count(*) AS n FROM deliveries WHERE notification_id = $1
GROUP BY provider, state
UNION ALL
SELECT provider, 'delivered', delivered FROM notification_purged WHERE notification_id = $1
"""

# The most frequent reasons its failed deliveries gave, the latest first on a tie.
FAILURE_REASONS = """
SELECT provider, last_error, count(*) AS n, max(updated_at) AS last_seen
FROM deliveries WHERE notification_id = $1 AND state = 'failed'
GROUP BY provider, last_error
ORDER BY last_seen DESC
LIMIT $2
"""

LIST_DELIVERIES = """
SELECT id, user_id, provider, token, state, attempts, last_status, last_error,
       next_attempt_at, created_at, updated_at, finished_at
FROM deliveries
WHERE notification_id = $1 AND ($2::text IS NULL OR state = $2) AND id > $3
ORDER BY id
LIMIT $4
"""

# Due rows of one provider, oldest first; SKIP LOCKED lets workers claim side
# by side. A row past its notification's TTL is settled as expired in the same
# statement instead of being sent; a claimed one becomes due again when its
# lease ends, so a dead worker's rows are picked up by the others.
CLAIM_DELIVERIES = """
WITH due AS (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND provider = $1 AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE deliveries AS d SET
        state = CASE WHEN d.expires_at <= now() THEN 'expired' ELSE 'pending' END,
        last_error = CASE WHEN d.expires_at <= now()
                          THEN coalesce(d.last_error, 'the TTL ended before a send')
                          ELSE d.last_error END,
        finished_at = CASE WHEN d.expires_at <= now() THEN now() END,
        attempts = d.attempts + (d.expires_at > now())::int,
        lease_owner = $3, lease_id = $4,
        lease_until = now() + make_interval(secs => $5),
        next_attempt_at = now() + make_interval(secs => $5),
        updated_at = now()
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.notification_id, d.provider, d.token, d.apns_bundle_id, d.gcm_sender_id,
              d.webpush_p256dh, d.webpush_auth, d.expires_at, d.attempts, d.state
)
SELECT * FROM claimed WHERE state = 'pending'
"""

LOAD_NOTIFICATIONS = """
SELECT id, category, message, overrides, priority, collapse_key, expires_at
FROM notifications WHERE id = ANY($1::uuid[])
"""

NEXT_DUE = """
SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending' AND provider = $1
"""

# Each outcome is written only under the lease it was claimed with: a worker
# whose lease ended (and whose row another worker claimed) changes nothing. A
# retry that would fall after the TTL settles the row as expired now.
RECORD_OUTCOMES = """
UPDATE deliveries AS d SET
    state = CASE
        WHEN o.verdict <> 'retry' THEN o.verdict
        WHEN now() + make_interval(secs => o.delay) >= d.expires_at THEN 'expired'
        ELSE 'pending' END,
    next_attempt_at = CASE WHEN o.verdict = 'retry'
                           THEN now() + make_interval(secs => o.delay)
                           ELSE d.next_attempt_at END,
    finished_at = CASE
        WHEN o.verdict = 'retry' AND now() + make_interval(secs => o.delay) < d.expires_at
        THEN NULL ELSE now() END,
    last_status = o.status, last_error = o.error,
    lease_owner = NULL, lease_id = NULL, lease_until = NULL, updated_at = now()
FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::int[], $5::text[], $6::float8[])
     AS o(id, lease_id, verdict, status, error, delay)
WHERE d.id = o.id AND d.lease_id = o.lease_id AND d.state = 'pending'
RETURNING d.id
"""

# A bounded batch at a time, so a purge never holds many locks or a long
# transaction; counted per notification so that its counts stay exact.
PURGE_DELIVERED = """
WITH gone AS (
    DELETE FROM deliveries WHERE id IN (
        SELECT id FROM deliveries
        WHERE state = 'delivered' AND finished_at < now() - make_interval(secs => $1)
        LIMIT $2
    )
    RETURNING notification_id, provider
), counted AS (
    INSERT INTO notification_purged AS p (notification_id, provider, delivered)
    SELECT notification_id, provider, count(*) FROM gone GROUP BY notification_id, provider
    ON CONFLICT (notification_id, provider)
    DO UPDATE SET delivered = p.delivered + excluded.delivered
    RETURNING delivered
)
SELECT count(*) FROM gone
"""

# Enqueueing a 100,000-user audience writes hundreds of thousands of rows in
# one statement: seconds, longer than STATEMENT_TIMEOUT allows a request.
ENQUEUE_TIMEOUT = 120.0
# How many distinct failure reasons a notification's progress lists.
FAILURE_REASONS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class QueuedNotification:
    id: uuid.UUID
    targets: int
    # True when an idempotency key found the notification an earlier request made.
    replayed: bool


@dataclass(frozen=True, slots=True)
class NotificationProgress:
    notification: dict[str, Any]
    # (provider, state, count), a provider and state possibly more than once.
    counts: list[tuple[str, str, int]]
    failures: list[asyncpg.Record]


class RecordedOutcome(NamedTuple):
    """One attempt's result as RECORD_OUTCOMES takes it; ``delay`` is for a retry."""

    delivery_id: int
    lease_id: uuid.UUID
    verdict: str
    status: int | None
    error: str | None
    delay: float


# ------------------------------------------------------ the fan-out's answer, as bytes

# Each target's NDJSON line, written by PostgreSQL's JSON encoder (row_to_json:
# compact, keys in this order) and sent as bytea, so the gateway passes the
# bytes through: no row is decoded into Python objects and encoded again.
FIND_TARGET_LINES = f"""
SELECT convert_to(row_to_json(target)::text || E'\\n', 'UTF8')
FROM (
    SELECT t.user_id AS "user", t.provider, t.token, t.apns_bundle_id, t.gcm_sender_id,
           t.ios_version,
           CASE WHEN t.webpush_p256dh IS NOT NULL
                THEN json_build_object('p256dh', t.webpush_p256dh, 'auth', t.webpush_auth)
           END AS webpush,
           t.device_id
    FROM ({FIND_TARGETS}) AS t
) AS target
"""  # noqa: S608
