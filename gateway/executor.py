"""Runs commands: writes through one group-commit writer per process, the rest to the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, assert_never

from gateway.commands import (
    Command,
    EndSession,
    FindTargets,
    IssueNonce,
    ListDeliveries,
    ListRegistrations,
    LogIn,
    OpenSession,
    PruneTokens,
    RegisterToken,
    RevokeSession,
    SendNotification,
    SessionCommand,
    SessionRef,
    ShowIdentity,
    ShowNotification,
    UnregisterToken,
    WriteCommand,
)
from gateway.errors import (
    AuthenticationNotConfigured,
    DatabaseUnavailable,
    GatewayError,
    IdentityNotFound,
    IdentityRejected,
    Overloaded,
    RateLimited,
)
from gateway.layer_auth import IdentityVerifier
from gateway.ratelimit import RateLimiter
from gateway.store import OpenedSession, Store

log = logging.getLogger(__name__)


class GroupCommitter:
    """Writes the commands waiting at the same moment in one transaction.

    One flusher per process takes everything queued as soon as it is free; no
    timer holds a lone request back. Each caller is answered only once its own
    command's transaction has committed.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 1024,
        max_pending: int = 10_000,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        # Told each batch's size before it is written (the metrics' histogram).
        self.on_batch = on_batch
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[tuple[WriteCommand, asyncio.Future[GatewayError | None]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="group-commit")

    async def close(self) -> None:
        """Stop taking commands, write the ones already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, command: WriteCommand) -> None:
        if self._closing:
            raise DatabaseUnavailable("the gateway is shutting down")
        if len(self._pending) >= self._max_pending:
            raise Overloaded()
        future: asyncio.Future[GatewayError | None] = asyncio.get_running_loop().create_future()
        self._pending.append((command, future))
        self._wakeup.set()
        # A caller that goes away cancels only its own future; its command
        # stays in the batch and is applied all the same.
        outcome = await future
        if outcome is not None:
            raise outcome

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._flush(batch)
            if self._closing:
                return

    async def _flush(
        self, batch: list[tuple[WriteCommand, asyncio.Future[GatewayError | None]]]
    ) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            outcomes = await self._store.apply_writes([command for command, _ in batch])
        except Exception as exc:
            log.exception("group commit failed unexpectedly")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)


class Executor:
    """The one place a command is run, whichever surface it came from.

    The senders' commands run on ``internal``, the internal API's store on a
    pool of its own, so that its fan-outs never take the public dialects'
    connections; without one they run on ``store``.
    """

    def __init__(
        self,
        store: Store,
        writer: GroupCommitter,
        limiter: RateLimiter,
        identities: IdentityVerifier | None = None,
        internal: Store | None = None,
    ) -> None:
        self.store = store
        self._writer = writer
        self._limiter = limiter
        self._identities = identities
        self._internal = store if internal is None else internal

    @property
    def writer(self) -> GroupCommitter:
        """The group-commit writer, for gateway.observability to watch."""
        return self._writer

    def admit(self, session: SessionRef) -> SessionRef:
        """Charge the session's rate limit now, before the request's body is read.

        A surface that knows the session from the head alone calls this first,
        so a refused request costs no body parsing and no validation, and
        passes the result to :meth:`execute` as ``admitted``.
        """
        if not self._limiter.allow(session.token_sha256):
            raise RateLimited()
        return session

    async def execute(self, command: Command, *, admitted: SessionRef | None = None) -> Any:
        """Run ``command``; a session is charged unless it is the one ``admitted``."""
        if isinstance(command, SessionCommand) and command.session != admitted:
            self.admit(command.session)
        match command:
            case RegisterToken() | UnregisterToken():
                await self._writer.submit(command)
                return None
            case EndSession():
                await self.store.end_session(command.session)
                return None
            case ListRegistrations():
                return await self.store.list_registrations(command)
            case ShowIdentity():
                # No directory of users: only the caller's own identity is known.
                if await self.store.session_user(command.session) != command.user_id:
                    raise IdentityNotFound()
                return None
            case IssueNonce():
                if self._identities is None:
                    raise AuthenticationNotConfigured()
                return await self.store.issue_nonce()
            case LogIn():
                return await self._log_in(command)
            case FindTargets():
                # An async generator of batches of NDJSON lines; the caller closes it.
                return self._internal.find_targets(command)
            case PruneTokens():
                return await self._internal.prune_tokens(command) if command.tokens else 0
            case OpenSession():
                return await self._internal.open_session(command)
            case RevokeSession():
                await self._internal.end_session(command.session)
                return None
            # Delivery's queue is written on the public pool, as its workers read it.
            case SendNotification():
                return await self.store.enqueue_notification(command)
            case ShowNotification():
                return await self.store.show_notification(command)
            case ListDeliveries():
                return await self.store.list_deliveries(command)
            case _:
                assert_never(command)

    async def _log_in(self, command: LogIn) -> OpenedSession:
        if self._identities is None:
            raise AuthenticationNotConfigured()
        identity = self._identities.verify(command.identity_token, command.app_id)
        opened = await self.store.open_session_with_nonce(
            identity.nonce, identity.user_id, command.ttl_seconds
        )
        if opened is None:
            raise IdentityRejected("the nonce (nce) is unknown, expired or already used")
        return opened
