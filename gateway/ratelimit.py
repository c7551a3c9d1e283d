"""Per-session token buckets, in memory that every worker process of one server shares."""

from __future__ import annotations

import struct
import time
from contextlib import AbstractContextManager, nullcontext
from multiprocessing import shared_memory
from typing import Any

# Sessions hash into this many buckets; two sessions that share one only ever
# share a limit. 2**20 buckets of two doubles is 16 MiB.
DEFAULT_SLOTS = 1 << 20
_SLOT = struct.Struct("dd")  # tokens left, and when they were counted (CLOCK_MONOTONIC)


class SharedBuckets:
    """The bucket table in shared memory: created by the parent, attached by each worker."""

    def __init__(self, name: str | None = None, slots: int = DEFAULT_SLOTS) -> None:
        if name is None:
            # A new segment is zero-filled: every bucket starts full.
            self.memory = shared_memory.SharedMemory(create=True, size=slots * _SLOT.size)
        else:
            self.memory = shared_memory.SharedMemory(name=name)
        self.slots = self.memory.size // _SLOT.size

    @property
    def name(self) -> str:
        return self.memory.name

    def close(self, *, unlink: bool = False) -> None:
        self.memory.close()
        if unlink:
            self.memory.unlink()


class RateLimiter:
    """Allows each session ``rate`` requests a second, in bursts of up to ``burst``.

    Without ``buckets`` the table is private to this process. With them,
    ``lock`` (a multiprocessing lock) guards it across processes; within one
    process no lock is needed, as the event loop runs one check at a time.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        buckets: SharedBuckets | None = None,
        lock: Any = None,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        # Held so the shared memory outlives every view of it.
        self._buckets = buckets
        table = buckets.memory.buf if buckets is not None else None
        self._table: memoryview = table if table is not None else memoryview(
            bytearray(DEFAULT_SLOTS * _SLOT.size)
        )
        self._slots = len(self._table) // _SLOT.size
        self._lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()

    def allow(self, session_digest: bytes) -> bool:
        """Take one token from the session's bucket; False when it has none left."""
        if self.rate <= 0:
            return True
        offset = (int.from_bytes(session_digest[:8], "little") % self._slots) * _SLOT.size
        now = time.monotonic()
        with self._lock:
            tokens, counted_at = _SLOT.unpack_from(self._table, offset)
            if counted_at == 0.0:
                tokens = self.burst
            else:
                tokens = min(self.burst, tokens + (now - counted_at) * self.rate)
            allowed: bool = tokens >= 1.0
            _SLOT.pack_into(self._table, offset, tokens - 1.0 if allowed else tokens, now)
        return allowed
