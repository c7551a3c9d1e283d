"""Sessions as a write sees them, and the process's cache of them by token digest."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ResolvedSession:
    """A live session the database vouched for: its row id and its user."""

    id: int
    user_id: str


class SessionCache:
    """Sessions this process has seen, by token digest, so a write needs no lookup round trip.

    It only saves a query: the write itself re-checks every session it relies
    on, so a session ended elsewhere fails at once all the same.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._sessions: dict[bytes, ResolvedSession] = {}

    def get(self, digest: bytes) -> ResolvedSession | None:
        return self._sessions.get(digest)

    def put(self, digest: bytes, session: ResolvedSession) -> None:
        if len(self._sessions) >= self._capacity:
            # dicts keep insertion order: this drops the oldest entry.
            del self._sessions[next(iter(self._sessions))]
        self._sessions[digest] = session

    def forget(self, digest: bytes) -> None:
        self._sessions.pop(digest, None)

    def forget_ids(self, session_ids: set[int]) -> None:
        for digest in [d for d, s in self._sessions.items() if s.id in session_ids]:
            del self._sessions[digest]
