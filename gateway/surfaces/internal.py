"""The senders' internal API under /internal/: fan-out targets, dead-token pruning, sessions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load
from marshmallow.validate import Range

from gateway import validation
from gateway.bearer import bearer_matches, key_digest
from gateway.commands import (
    DeadToken,
    FindTargets,
    OpenSession,
    Provider,
    PruneTokens,
    RevokeSession,
)
from gateway.errors import (
    AdminKeyRejected,
    DatabaseError,
    DatabaseUnavailable,
    GatewayError,
    IdempotencyKeyReused,
    InvalidParameters,
    MalformedRequest,
    MethodNotAllowed,
    NotificationNotFound,
    Problem,
    RequestTooLarge,
    SessionNotFound,
    UnknownEndpoint,
)
from gateway.expect import only_continue
from gateway.keys import EXECUTOR, SETTINGS
from gateway.parsing import Text, identifier, load, one_of, read_json_object
from gateway.wire import (
    SESSION_TOKEN_PATTERN,
    Detail,
    ErrorRow,
    ErrorTable,
    Handler,
    Operation,
    json_response,
    methods_elsewhere,
    row_for,
    session_from_token,
)

log = logging.getLogger(__name__)

PREFIX = "/internal"
NDJSON = "application/x-ndjson"

# A message goes to at most this many users in one call; a larger audience is
# split by the sender. It bounds the query's array and the body below.
MAX_AUDIENCE = 100_000
# A sender reports the dead tokens of a batch of pushes at a time.
MAX_FEEDBACK = 10_000

# The bounds above, in bytes. Fan-out: 2 lists of 100,000 ids of up to 64
# ASCII characters, quoted and separated, is ~13.4 MB; feedback: 10,000 entries
# of a 2 KiB Web Push endpoint (the longest realistic token) with its framing
# is ~21 MB. Only reached after the admin key has been checked.
MAX_TARGETS_BODY_BYTES = 16 * 1024 * 1024
MAX_FEEDBACK_BODY_BYTES = 24 * 1024 * 1024
MAX_SESSION_BODY_BYTES = 64 * 1024

# The fan-out answer is written in pieces of about this size: a write per row
# would cost a syscall each, one write of everything would hold it all.
WRITE_CHUNK_BYTES = 64 * 1024

# The same ceiling GATEWAY_SESSION_TTL and the command line have.
MAX_SESSION_TTL = validation.MAX_SESSION_TTL

# Error bodies list at most this many bad parameters: a list of 100,000 bad
# user ids must not come back whole.
MAX_PROBLEMS_SHOWN = 20


# What each push service says when a token is gone for good: APNs 410
# Unregistered and 400 BadDeviceToken, FCM v1 UNREGISTERED, and the HTTP status
# of a Web Push service.
DEAD_TOKEN_REASONS: dict[Provider, frozenset[str]] = {
    Provider.APNS: frozenset({"Unregistered", "BadDeviceToken"}),
    Provider.FCM: frozenset({"UNREGISTERED"}),
    Provider.WEBPUSH: frozenset({"404", "410"}),
}

# ------------------------------------------------------------------ parsing


class UserIds(fields.Field):  # type: ignore[type-arg]
    """A JSON list of user ids, checked in one pass.

    A List(Text) field costs ~8 µs an item in marshmallow, most of a 100,000-user
    fan-out; the rules are check_identifier's.
    """

    def __init__(self, *, min_items: int, max_items: int, **kwargs: Any) -> None:
        # The same bounds as the OpenAPI document's JSON Schema (apispec reads metadata).
        shape: dict[str, Any] = {
            "type": "array",
            "items": {"type": "string", **validation.IDENTIFIER_JSON_SCHEMA},
            "maxItems": max_items,
        }
        if min_items:
            shape["minItems"] = min_items
        super().__init__(metadata={**shape, **kwargs.pop("metadata", {})}, **kwargs)
        self.min_items = min_items
        self.max_items = max_items

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> list[str]:
        if not isinstance(value, list):
            raise ValidationError("must be a list of user ids")
        if not self.min_items <= len(value) <= self.max_items:
            raise ValidationError(
                f"must hold between {self.min_items} and {self.max_items} user ids"
            )
        problems: dict[int, list[str]] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                problems[index] = ["must be a string"]
            elif not item or len(item) > validation.MAX_ID_LENGTH or validation.has_control(item):
                try:
                    validation.check_identifier(item)
                except ValueError as exc:
                    problems[index] = [str(exc)]
            if len(problems) == MAX_PROBLEMS_SHOWN:
                break
        if problems:
            raise ValidationError(problems)
        return value


class RecentMoment(fields.AwareDateTime):
    """An RFC 3339 date-time with an offset, within validation.check_recent_moment's range."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            return validation.check_recent_moment(moment)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class TargetsSchema(Schema):
    """The body of POST /internal/v1/targets."""

    class Meta:
        # A misspelt exclude_users must fail loudly, not push to the sender.
        unknown = RAISE

    users = UserIds(required=True, min_items=1, max_items=MAX_AUDIENCE)
    category = Text(required=True)
    exclude_users = UserIds(
        load_default=list, min_items=0, max_items=MAX_AUDIENCE, metadata={"default": []}
    )

    def __init__(self, categories: frozenset[str]) -> None:
        super().__init__()
        self.categories = categories
        # For the OpenAPI document; make_query checks it, after the other fields.
        # (a new mapping: the declared field's is shared by every instance).
        category = self.fields["category"]
        category.metadata = {**category.metadata, "enum": sorted(categories)}

    @post_load
    def make_query(self, data: dict[str, Any], **_: Any) -> FindTargets:
        if data["category"] not in self.categories:
            raise ValidationError(
                {"category": ["must be one of: " + ", ".join(sorted(self.categories))]}
            )
        excluded = set(data["exclude_users"])
        audience = tuple(dict.fromkeys(user for user in data["users"] if user not in excluded))
        return FindTargets(users=audience, category=data["category"])


class DeadTokenSchema(Schema):
    class Meta:
        unknown = RAISE

    provider = Text(required=True, validate=one_of(DEAD_TOKEN_REASONS))
    token = Text(required=True)
    reason = Text(
        required=True,
        metadata={
            "description": "; ".join(
                f"{provider.value}: {', '.join(sorted(reasons))}"
                for provider, reasons in DEAD_TOKEN_REASONS.items()
            )
        },
    )
    # RFC 3339 with an offset: a push service's answer is a moment, not a
    # wall-clock reading in an unknown zone.
    observed_at = RecentMoment(
        load_default=None,
        error_messages={
            "invalid": "must be an RFC 3339 date-time",
            "invalid_awareness": "must carry a UTC offset",
        },
    )

    @post_load
    def make_token(self, data: dict[str, Any], **_: Any) -> DeadToken:
        provider = Provider(data["provider"])
        reasons = DEAD_TOKEN_REASONS[provider]
        if data["reason"] not in reasons:
            raise ValidationError(
                {"reason": [f"must be one of, for {provider.value}: " + ", ".join(sorted(reasons))]}
            )
        try:
            # As registration normalised it; the Web Push allow-list guards
            # what is stored, not what may be pruned.
            token = validation.normalize_token(provider, data["token"])
        except ValueError as exc:
            raise ValidationError({"token": [str(exc)]}) from None
        return DeadToken(provider=provider, token=token, observed_at=data["observed_at"])


class FeedbackSchema(Schema):
    """The body of POST /internal/v1/feedback."""

    class Meta:
        unknown = RAISE

    feedback = fields.List(
        fields.Nested(DeadTokenSchema), required=True, metadata={"maxItems": MAX_FEEDBACK}
    )

    @pre_load
    def bound_length(self, data: Any, **_: Any) -> Any:
        # Before marshmallow walks every entry: an oversized list is refused
        # without paying for it.
        entries = data.get("feedback") if isinstance(data, dict) else None
        if isinstance(entries, list) and len(entries) > MAX_FEEDBACK:
            raise ValidationError({"feedback": [f"must hold at most {MAX_FEEDBACK} entries"]})
        return data

    @post_load
    def make_command(self, data: dict[str, list[DeadToken]], **_: Any) -> PruneTokens:
        return PruneTokens(tokens=tuple(dict.fromkeys(data["feedback"])))


class SessionSchema(Schema):
    """The body of POST /internal/v1/sessions."""

    class Meta:
        unknown = RAISE

    user = identifier(required=True)
    # marshmallow 4's Integer refuses JSON true (it is not 1 second) on its own.
    ttl = fields.Integer(
        strict=True,
        load_default=None,
        validate=Range(1, MAX_SESSION_TTL, error="must be between {min} and {max} seconds"),
        error_messages={"invalid": "must be a whole number of seconds"},
        metadata={"description": "seconds; GATEWAY_SESSION_TTL when absent"},
    )

    def __init__(self, default_ttl: int) -> None:
        super().__init__()
        self.default_ttl = default_ttl

    @post_load
    def make_command(self, data: dict[str, Any], **_: Any) -> OpenSession:
        ttl = self.default_ttl if data["ttl"] is None else data["ttl"]
        return OpenSession(user_id=data["user"], ttl_seconds=ttl)


TARGETS_SCHEMA = web.AppKey("internal_targets_schema", TargetsSchema)
SESSION_SCHEMA = web.AppKey("internal_session_schema", SessionSchema)
FEEDBACK_SCHEMA = FeedbackSchema()
# The admin key's digest, or None when GATEWAY_ADMIN_TOKEN is unset.
ADMIN_KEY_DIGEST = web.AppKey("internal_admin_key_digest", bytes)


# ------------------------------------------------------------------ the key


def _authorize(request: web.Request) -> None:
    if not bearer_matches(request, request.app.get(ADMIN_KEY_DIGEST)):
        raise AdminKeyRejected()


def admin_only(handler: Handler) -> Handler:
    """Every route of this surface checks the key before it reads anything else."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        _authorize(request)
        return await handler(request)

    return guarded


# ------------------------------------------------------------------ handlers


def _cut(request: web.Request) -> None:
    """End a chunked answer without its last chunk, so the sender sees it is incomplete."""
    if request.transport is not None:
        request.transport.abort()


async def find_targets(request: web.Request) -> web.StreamResponse:
    """Stream the fan-out's targets as NDJSON, one registration a line."""
    body = await read_json_object(request, MAX_TARGETS_BODY_BYTES)
    query = load(request.app[TARGETS_SCHEMA], body)
    response = web.StreamResponse()
    response.content_type = NDJSON
    settings = request.app[SETTINGS]
    write_timeout = settings.internal_write_timeout
    loop = asyncio.get_running_loop()
    # The transaction's snapshot holds back vacuum for as long as the stream
    # lasts, so even a sender that keeps reading, slowly, gets this long.
    last_write = loop.time() + settings.internal_stream_timeout

    async def send(chunk: bytes) -> None:
        # A write waits only while the sender's socket is full: a sender that
        # stops reading would otherwise hold the cursor and its transaction
        # open for as long as it likes.
        if loop.time() >= last_write:
            raise TimeoutError
        async with asyncio.timeout_at(min(loop.time() + write_timeout, last_write)):
            await response.write(chunk)

    targets: AsyncGenerator[list[bytes], None] = await request.app[EXECUTOR].execute(query)
    async with contextlib.aclosing(targets) as batches:
        # A failure before the first batch still gets an error status; after
        # the status has gone out, cutting the connection is the only signal.
        batch: list[bytes] = await anext(batches, [])
        await response.prepare(request)
        try:
            pending: list[bytes] = []
            size = 0
            while batch:
                for line in batch:
                    pending.append(line)
                    size += len(line)
                    if size >= WRITE_CHUNK_BYTES:
                        await send(b"".join(pending))
                        pending.clear()
                        size = 0
                batch = await anext(batches, [])
            if pending:
                await send(b"".join(pending))
        except ConnectionError:
            log.info("fan-out abandoned: the sender went away")
            _cut(request)
            return response
        except TimeoutError:
            log.info(
                "fan-out cut off: the sender read nothing for %g s, or the stream outlasted %g s",
                write_timeout,
                settings.internal_stream_timeout,
            )
            _cut(request)
            return response
        except Exception:
            log.exception("fan-out failed after its answer had started; cutting the connection")
            _cut(request)
            return response
    await response.write_eof()
    return response


async def prune_dead_tokens(request: web.Request) -> web.Response:
    command = load(FEEDBACK_SCHEMA, await read_json_object(request, MAX_FEEDBACK_BODY_BYTES))
    removed = await request.app[EXECUTOR].execute(command)
    return json_response(200, {"removed": removed})


async def open_session(request: web.Request) -> web.Response:
    body = await read_json_object(request, MAX_SESSION_BODY_BYTES)
    command = load(request.app[SESSION_SCHEMA], body)
    opened = await request.app[EXECUTOR].execute(command)
    return json_response(201, {"token": opened.token, "expires_at": opened.expires_at})


async def end_session(request: web.Request) -> web.Response:
    session = session_from_token(request.match_info["token"])
    if session is None:
        raise InvalidParameters([Problem("token", "must be 32 hexadecimal characters")])
    await request.app[EXECUTOR].execute(RevokeSession(session))
    return web.Response(status=204)


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/internal/v1/targets", find_targets),
    ("POST", "/internal/v1/feedback", prune_dead_tokens),
    ("POST", "/internal/v1/sessions", open_session),
    ("DELETE", "/internal/v1/sessions/{token}", end_session),
]

# The routes above as the OpenAPI document tells them; every one is behind the
# admin key and answers InternalError with the statuses named.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/internal/v1/targets", "internal_find_targets",
        "The fan-out's targets: live registrations admitting the category",
        200, "One InternalTarget per line", "InternalTarget",
        errors=(400, 401, 413, 500, 503),
        description="NDJSON, one InternalTarget a line, streamed as it is read.",
        body="InternalTargetsQuery",
        media_type=NDJSON,
    ),
    Operation(
        "post", "/internal/v1/feedback", "internal_prune_dead_tokens",
        "Remove the registrations of tokens their push service reported dead",
        200, "How many registrations were removed", "InternalPruned",
        errors=(400, 401, 413, 500, 503),
        body="InternalFeedback",
    ),
    Operation(
        "post", "/internal/v1/sessions", "internal_open_session",
        "Start a session for a user; its token is both dialects' credential",
        201, "The new session", "InternalOpenedSession",
        errors=(400, 401, 413, 500, 503),
        body="InternalOpenSession",
    ),
    Operation(
        "delete", "/internal/v1/sessions/{token}", "internal_end_session",
        "End a session and its registrations",
        204, "The session has ended",
        errors=(400, 401, 404, 500, 503),
        path_parameters=(("token", {"type": "string", "pattern": SESSION_TOKEN_PATTERN}),),
    ),
)


async def unknown_endpoint(request: web.Request) -> web.Response:
    """Anything else under /internal: behind the key too, so nothing is learnt without it."""
    if await methods_elsewhere(request, within=owns):
        raise MethodNotAllowed()
    raise UnknownEndpoint()


def setup_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[TARGETS_SCHEMA] = TargetsSchema(settings.categories)
    app[SESSION_SCHEMA] = SessionSchema(settings.session_ttl)
    if settings.admin_token is not None:
        app[ADMIN_KEY_DIGEST] = key_digest(settings.admin_token)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, admin_only(handler), expect_handler=only_continue)
    app.router.add_route(
        "*", PREFIX + "{tail:(/.*)?}", admin_only(unknown_endpoint), expect_handler=only_continue
    )


def owns(path: str) -> bool:
    """Whether a failed request at ``path`` should be answered in this surface's error format."""
    return path == PREFIX or path.startswith(PREFIX + "/")


# ------------------------------------------------------------------ errors


# Each domain error as the internal API tells it; the first row whose kind the error is wins.
ERRORS: ErrorTable = (
    ErrorRow(
        AdminKeyRejected, 401, "unauthorized", "'Authorization: Bearer <admin key>' is required"
    ),
    ErrorRow(InvalidParameters, 400, "invalid_parameters", "Invalid parameters"),
    ErrorRow(
        MalformedRequest, 400, "malformed_request", "The body must be a JSON object",
        detail=Detail.OWN,
    ),
    ErrorRow(SessionNotFound, 404, "session_not_found", "No live session has this token"),
    ErrorRow(NotificationNotFound, 404, "notification_not_found", "No notification has this id"),
    ErrorRow(
        IdempotencyKeyReused, 409, "idempotency_key_reused",
        "This Idempotency-Key came with a different request",
    ),
    ErrorRow(UnknownEndpoint, 404, "unknown_endpoint", "There is no such endpoint"),
    ErrorRow(MethodNotAllowed, 405, "method_not_allowed", "This method is not allowed here"),
    ErrorRow(
        RequestTooLarge, 413, "request_too_large", "The request body is too large",
        detail=Detail.OWN,
    ),
    ErrorRow(DatabaseUnavailable, 503, "database_unavailable", "The database is unavailable"),
    ErrorRow(DatabaseError, 500, "database_error", "A database error occurred"),
    ErrorRow(GatewayError, 500, "internal_error", "An unexpected error occurred"),
)


def render_error(exc: GatewayError) -> web.Response:
    """The one place a domain error becomes an internal API error body."""
    row = row_for(ERRORS, exc)
    # Our own wording (or aiohttp's reason) when the row takes it, never a caller's input.
    error: dict[str, Any] = {"code": row.code, "message": row.message_for(exc)}
    if isinstance(exc, InvalidParameters):
        shown = exc.problems[:MAX_PROBLEMS_SHOWN]
        error["message"] = "; ".join(f"{p.parameter}: {p.message}" for p in shown)
        error["parameters"] = [{"name": p.parameter, "message": p.message} for p in shown]
    headers = {"WWW-Authenticate": 'Bearer realm="gateway-internal"'} if row.status == 401 else None
    return json_response(row.status, {"error": error}, headers)
