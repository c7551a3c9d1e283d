"""Neutral domain errors: raised anywhere, rendered by each surface in its own dialect."""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Base of every failure a caller is told about."""


@dataclass(frozen=True)
class Problem:
    """One bad parameter: its wire name and what is wrong with it."""

    parameter: str
    message: str
    missing: bool = False


class InvalidParameters(GatewayError):
    """Raised by a surface's parsing when one or more parameters fail validation."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(", ".join(f"{p.parameter}: {p.message}" for p in problems))
        self.problems = problems


class MalformedRequest(GatewayError):
    """Raised when the request body cannot be parsed at all (not JSON, not an object)."""


class MissingCredentials(GatewayError):
    """Raised by a surface when the session credential is absent or not well formed."""


class SessionNotFound(GatewayError):
    """Raised by the store when a session is unknown, expired or already ended."""


class UnknownEndpoint(GatewayError):
    """Raised when no route matches the path (Navixy: unknown action)."""


class MethodNotAllowed(GatewayError):
    """Raised when the route exists but not for this HTTP method."""


class NotAcceptable(GatewayError):
    """Raised by the Layer surface when the Accept header does not ask for its media type."""


class RequestTooLarge(GatewayError):
    """Raised when the body exceeds the configured maximum size."""


class DatabaseUnavailable(GatewayError):
    """Raised by the store when Postgres cannot be reached or the connection dies."""


class DatabaseError(GatewayError):
    """Raised by the store when Postgres rejects a statement for a reason no input explains."""


class InternalError(GatewayError):
    """Stands for any unexpected exception, so the caller sees no internals."""


class Overloaded(GatewayError):
    """Raised by the executor when more writes are queued than the process will hold."""


class RateLimited(GatewayError):
    """Raised by the executor when one session sends more than its share of requests."""


class AdminKeyRejected(GatewayError):
    """Raised by the internal surface when the admin key is missing or wrong, or none is set."""


class IdentityRejected(GatewayError):
    """Raised when an identity token fails a check; the message names the check, never the token."""


class AuthenticationNotConfigured(GatewayError):
    """Raised by the Layer handshake when no app id, provider id and identity keys are set."""
class NotificationNotFound(GatewayError):
    """Raised by the store when no notification has the id asked for."""


class IdempotencyKeyReused(GatewayError):
    """Raised when an Idempotency-Key comes back with a request other than its first."""
