"""The commands every surface turns a request into: what the caller asked, in our own words."""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# A row as the store answers a query: plain values by column name, no driver type.
Row = dict[str, Any]


class Provider(enum.StrEnum):
    """The push service a token belongs to, whatever dialect named it."""

    APNS = "apns"
    FCM = "fcm"
    WEBPUSH = "webpush"


@dataclass(frozen=True, slots=True)
class SessionRef:
    """A session as a caller presented it: only the token's digest is ever kept."""

    token_sha256: bytes

    @classmethod
    def from_token(cls, token: str) -> SessionRef:
        return cls(hashlib.sha256(token.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class WebPushKeys:
    p256dh: str
    auth: str


@dataclass(frozen=True, slots=True)
class RegisterToken:
    """Register a push token for the session's user.

    ``device_id`` keys a Layer registration (one per user and device); ``None``
    makes it the session's own binding (Navixy: one per session).
    """

    session: SessionRef
    device_id: str | None
    provider: Provider
    token: str
    category_filter: str = "*"
    apns_bundle_id: str | None = None
    gcm_sender_id: str | None = None
    ios_version: str | None = None
    webpush: WebPushKeys | None = None


@dataclass(frozen=True, slots=True)
class UnregisterToken:
    """Remove the registration for ``device_id``, or the session's binding when it is ``None``."""

    session: SessionRef
    device_id: str | None


@dataclass(frozen=True, slots=True)
class EndSession:
    """End a session; its registrations end with it."""

    session: SessionRef


@dataclass(frozen=True, slots=True)
class ListRegistrations:
    """Every live registration of the session's user, both dialects'."""

    session: SessionRef


WriteCommand = RegisterToken | UnregisterToken
# What a session's own caller asks: each counts against that session's rate limit.
SessionCommand = RegisterToken | UnregisterToken | EndSession | ListRegistrations


@dataclass(frozen=True, slots=True)
class FindTargets:
    """Every live registration of ``users`` whose category filter admits ``category``.

    ``users`` is the audience as the sender meant it: distinct, with the users
    to leave out (the sender of the message) already gone.
    """

    users: tuple[str, ...]
    category: str


@dataclass(frozen=True, slots=True)
class DeadToken:
    """A token its push service reported as gone for good.

    ``observed_at``, when the sender knows it, is when the service said so: a
    registration of the token made after that is a new install's, and stays.
    """

    provider: Provider
    token: str
    observed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PruneTokens:
    """Remove every registration of these tokens, whichever user or session holds it."""

    tokens: tuple[DeadToken, ...]


@dataclass(frozen=True, slots=True)
class OpenSession:
    """Start a session for a user, lasting ``ttl_seconds``."""

    user_id: str
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class RevokeSession:
    """End a session on a sender's word (the internal API), not on the session's own request."""

    session: SessionRef


@dataclass(frozen=True, slots=True)
class IssueNonce:
    """Mint a single-use nonce for Layer's authentication handshake."""


@dataclass(frozen=True, slots=True)
class LogIn:
    """Turn an identity token the app's backend signed into a session lasting ``ttl_seconds``."""

    identity_token: str
    app_id: str
    ttl_seconds: int


# ------------------------------------------------------------------ delivery


class DeliveryState(enum.StrEnum):
    """Where a delivery stands: pending until one attempt settles it."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    PRUNED = "pruned"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class SendNotification:
    """Deliver one message to every target ``audience`` finds, from the durable queue.

    ``message`` is the portable message (title, body, data); ``overrides`` holds
    the per-provider blocks by provider name. ``idempotency_key`` makes a retried
    request return the first notification; ``request_sha256`` tells a retry from
    a different request that reuses the key.
    """

    audience: FindTargets
    exclude_users: tuple[str, ...]
    message: dict[str, Any]
    overrides: dict[str, Any]
    ttl_seconds: int
    priority: str
    collapse_key: str | None
    idempotency_key: str | None = None
    request_sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class ShowNotification:
    """A notification's progress: its state and counts by outcome and provider."""

    notification_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class ListDeliveries:
    """A page of a notification's deliveries, by id, after ``after``; one outcome or all."""

    notification_id: uuid.UUID
    outcome: DeliveryState | None
    after: int
    limit: int


# What the senders' internal API asks, behind the admin key: no session's rate limit applies.
SenderCommand = (
    FindTargets
    | PruneTokens
    | OpenSession
    | RevokeSession
    | SendNotification
    | ShowNotification
    | ListDeliveries
)
# Made before there is a session: no session's rate limit applies either.
Handshake = IssueNonce | LogIn
Command = SessionCommand | SenderCommand | Handshake
