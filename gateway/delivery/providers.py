"""What a push provider is to the delivery workers: one send, one classified outcome.

A provider module (apns.py, fcm.py, webpush.py) builds its wire request from a
``Push`` and turns the service's answer into an ``Outcome``; it never touches
the database. The workers own claiming, retrying, pruning and recording. A
fourth provider is a new module implementing ``PushProvider``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from gateway.commands import Provider


class Verdict(enum.StrEnum):
    """What the worker does with a delivery after one attempt."""

    DELIVERED = "delivered"
    # Transient: network error, timeout, 429, 5xx, GOAWAY: retried with backoff until the TTL ends.
    RETRY = "retry"
    # Permanent, the token is fine: our payload or our credentials. Not retried, not pruned.
    FAILED = "failed"
    # The service says the token is dead: the registration is pruned as /feedback does.
    PRUNE = "prune"


@dataclass(frozen=True, slots=True)
class Push:
    """One attempt at one delivery row: the target registration and the notification's message."""

    delivery_id: int
    provider: Provider
    token: str
    # The registration's provider fields, as stored (None where they do not apply).
    apns_bundle_id: str | None
    gcm_sender_id: str | None
    webpush_p256dh: str | None
    webpush_auth: str | None
    # The notification: TTL end, priority ("high" | "normal"), collapse key, and the
    # portable message plus this provider's override (the POST body's "apns"/"fcm"/"webpush").
    expires_at: datetime
    priority: str
    collapse_key: str | None
    notification_id: str
    category: str
    title: str | None
    body: str | None
    data: dict[str, str] = field(default_factory=dict)
    override: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A provider's answer, classified. ``reason`` is short text an operator can read."""

    verdict: Verdict
    status: int | None = None
    reason: str | None = None
    # Seconds the service asked us to wait (Retry-After), for RETRY.
    retry_after: float | None = None
    # For PRUNE: when the service says the token died (APNs 410 timestamp); a
    # registration updated after it is a new install and stays.
    observed_at: datetime | None = None
    # A 429 quota answer backs off longer than a plain transient failure (sygnal: 60 s x 2^n).
    quota: bool = False
    # A configuration fault (bad credential, topic disallowed): an operator must be alerted.
    alarm: bool = False


class PushProvider(Protocol):
    """One push service. ``concurrency`` bounds its sends in flight, so a failing
    provider never starves the others."""

    provider: Provider
    concurrency: int

    async def send(self, push: Push) -> Outcome:
        """Send one push; never raises for a service's or the network's answer (classify it)."""
        ...

    async def close(self) -> None: ...


def portable_message(push: Push) -> dict[str, Any]:
    """The message as every provider without an override carries it."""
    return {
        "title": push.title,
        "body": push.body,
        "data": push.data,
        "category": push.category,
        "id": push.notification_id,
    }


def webpush_plaintext(push: Push) -> bytes:
    """What a Web Push service receives (encrypted): the ``webpush`` override, else the message.

    One function for the size check at POST and the provider, so both count the same bytes.
    """
    return orjson.dumps(push.override if push.override is not None else portable_message(push))
