"""What health and metrics may ask of the database: a ping, the pool's figures, a count."""

from __future__ import annotations

from typing import Protocol


class DatabaseProbe(Protocol):
    """A narrow view of a store, for the operators' routes; gateway.store.Store is one."""

    async def ping(self) -> None:
        """Returns once the database answers; raises a GatewayError otherwise."""

    def pool_usage(self) -> tuple[int, int, int]:
        """The pool's open, idle and maximum connections; asks the database nothing."""

    async def count_registrations_by_provider(self) -> dict[str, int]:
        """Live registrations by provider."""
