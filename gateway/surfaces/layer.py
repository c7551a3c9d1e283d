"""The Layer Client API dialect: /push_tokens and /sessions, its headers, and its error bodies."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from marshmallow import EXCLUDE, Schema, ValidationError, post_load

from gateway import validation
from gateway.commands import (
    EndSession,
    IssueNonce,
    ListRegistrations,
    LogIn,
    Provider,
    RegisterToken,
    SessionRef,
    ShowIdentity,
    UnregisterToken,
)
from gateway.errors import (
    AuthenticationNotConfigured,
    DatabaseError,
    DatabaseUnavailable,
    GatewayError,
    IdentityNotFound,
    IdentityRejected,
    InvalidParameters,
    MalformedRequest,
    MethodNotAllowed,
    MissingCredentials,
    NotAcceptable,
    Overloaded,
    Problem,
    RateLimited,
    RequestTooLarge,
    SessionNotFound,
    UnknownEndpoint,
)
from gateway.expect import only_continue
from gateway.keys import EXECUTOR, SETTINGS
from gateway.observability.logs import UNMATCHED_ROUTE
from gateway.parsing import Text, identifier, load, one_of, read_json_object, rule
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

MEDIA_TYPE = "application/vnd.layer+json"
DOCS_URL = "https://developer.layer.com/docs/client/rest"

# The page's own examples quote the token with single quotes; the SDKs use
# double quotes.
_AUTHORIZATION = re.compile(
    r"""\s*Layer\s+session-token\s*=\s*(?:"([^"]*)"|'([^']*)')\s*""", re.IGNORECASE
)
# [0-9], not \d: \d would let other scripts' digits through (as gateway.validation notes).
IOS_VERSION = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}")
TYPES = {"apns": Provider.APNS, "gcm": Provider.FCM}
_TYPE_NAMES = {Provider.APNS: "apns", Provider.FCM: "gcm", Provider.WEBPUSH: "webpush"}


def _ios_version(value: str) -> str:
    if not IOS_VERSION.fullmatch(value):
        raise ValueError("must be a version number like 9.0")
    return value


class RegisterSchema(Schema):
    """The body of POST /push_tokens."""

    class Meta:
        unknown = EXCLUDE

    token = Text(required=True, metadata=validation.PUSH_TOKEN_JSON_SCHEMA)
    type = Text(required=True, validate=one_of(TYPES))
    device_id = identifier(required=True)
    apns_bundle_id = identifier(load_default=None, metadata={"description": "apns only"})
    gcm_sender_id = identifier(load_default=None, metadata={"description": "gcm only"})
    ios_version = Text(
        load_default=None,
        validate=rule(_ios_version),
        metadata={"pattern": f"^{IOS_VERSION.pattern}$", "description": "apns only"},
    )

    @post_load
    def make_command(self, data: dict[str, Any], **_: Any) -> Callable[[SessionRef], RegisterToken]:
        """The registration, waiting for the session the surface read beside the body."""
        provider = TYPES[data["type"]]
        try:
            token = validation.normalize_token(provider, data["token"])
        except ValueError as exc:
            raise ValidationError({"token": [str(exc)]}) from None
        if provider is Provider.FCM:
            for apns_only in ("apns_bundle_id", "ios_version"):
                if data[apns_only] is not None:
                    raise ValidationError({apns_only: ["applies to apns tokens only"]})
        elif data["gcm_sender_id"] is not None:
            raise ValidationError({"gcm_sender_id": ["applies to gcm tokens only"]})
        return functools.partial(
            RegisterToken,
            device_id=data["device_id"],
            provider=provider,
            token=token,
            apns_bundle_id=data["apns_bundle_id"],
            gcm_sender_id=data["gcm_sender_id"],
            ios_version=data["ios_version"],
        )


REGISTER_SCHEMA = RegisterSchema()


# A 2048-bit RS256 token with Layer's claims is under 1 KiB; a 4096-bit key
# with a long user id stays far below this.
IDENTITY_TOKEN_MAX_LENGTH = 8192


def _identity_token(value: str) -> str:
    return validation.check_identifier(value, IDENTITY_TOKEN_MAX_LENGTH)


class LogInSchema(Schema):
    """The body of POST /sessions: an identity token and the app it is for."""

    class Meta:
        unknown = EXCLUDE

    identity_token = Text(required=True, validate=rule(_identity_token))
    app_id = identifier(required=True)

    @post_load
    def make_command(self, data: dict[str, Any], **_: Any) -> Callable[[int], LogIn]:
        """The log-in, waiting for the session lifetime the gateway grants."""
        return functools.partial(LogIn, data["identity_token"], data["app_id"])


LOG_IN_SCHEMA = LogInSchema()


def _accepted(versions: frozenset[str]) -> str:
    """The Accept values served, for the 406 message."""
    return " or ".join(f"{MEDIA_TYPE}; version={v}" for v in sorted(versions))


# A keep-alive client sends the same few header strings on every request, and
# both verdicts below are pure functions of them: a small LRU per process
# saves the parse (and the SHA-256) each time. Bounded, so a client varying
# its headers costs the parse, never memory.
HEADER_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=HEADER_CACHE_SIZE)
def _acceptable(accept: str, versions: frozenset[str]) -> bool:
    for media_range in accept.split(","):
        media_type, *parameters = media_range.split(";")
        if media_type.strip().lower() != MEDIA_TYPE:
            continue
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "version" and value.strip().strip('"') in versions:
                return True
    return False


def _check_accept(request: web.Request) -> None:
    versions = request.app[SETTINGS].layer_versions
    if not _acceptable(request.headers.get("Accept", ""), versions):
        raise NotAcceptable(f"Accept must be {_accepted(versions)}")


def _route(handler: Handler) -> Handler:
    """A Layer route: the Accept check first, and a fresh nonce on every 401.

    The nonce is Layer's documented contract (its SDKs read data.nonce to
    re-authenticate when a session expires). When none can be minted because
    the database is down, the answer is 503, not a 401 without one: the
    client retries instead of dropping its session.
    """

    @functools.wraps(handler)
    async def serve(request: web.Request) -> web.StreamResponse:
        _check_accept(request)
        try:
            return await handler(request)
        except (MissingCredentials, SessionNotFound, IdentityRejected) as exc:
            if not request.app[SETTINGS].layer_auth_configured:
                return render_error(exc)
            nonce = await request.app[EXECUTOR].execute(IssueNonce())
            return render_error(exc, nonce=nonce)

    return serve


# The cache holds Authorization values, i.e. session tokens, in this process's
# memory (as each request does while it runs); only their digests leave it.
@functools.lru_cache(maxsize=HEADER_CACHE_SIZE)
def _session_of(authorization: str) -> SessionRef | None:
    match = _AUTHORIZATION.fullmatch(authorization)
    return session_from_token((match.group(1) or match.group(2)) if match else None)


def _session(request: web.Request) -> SessionRef:
    session = _session_of(request.headers.get("Authorization", ""))
    if session is None:
        raise MissingCredentials()
    return session


@_route
async def register_push_token(request: web.Request) -> web.Response:
    executor = request.app[EXECUTOR]
    # Refused before the body is read: a flood costs no parsing.
    session = executor.admit(_session(request))
    registration = load(REGISTER_SCHEMA, await read_json_object(request))
    await executor.execute(registration(session), admitted=session)
    return web.Response(status=202)


@_route
async def unregister_push_token(request: web.Request) -> web.Response:
    session = _session(request)
    try:
        device_id = validation.check_identifier(request.match_info["device_id"])
    except ValueError as exc:
        raise InvalidParameters([Problem("device_id", str(exc))]) from None
    await request.app[EXECUTOR].execute(UnregisterToken(session=session, device_id=device_id))
    return web.Response(status=202)


def _registration(row: dict[str, Any]) -> dict[str, Any]:
    provider = Provider(row["provider"])
    entry: dict[str, Any] = {
        "token": row["token"],
        "type": _TYPE_NAMES[provider],
        "device_id": row["device_id"],
        "category_filter": row["category_filter"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if provider is Provider.APNS:
        entry["apns_bundle_id"] = row["apns_bundle_id"]
        entry["ios_version"] = row["ios_version"]
    elif provider is Provider.FCM:
        entry["gcm_sender_id"] = row["gcm_sender_id"]
    else:
        entry["parameters"] = {"p256dh": row["webpush_p256dh"], "auth": row["webpush_auth"]}
    return entry


@_route
async def list_push_tokens(request: web.Request) -> web.Response:
    rows = await request.app[EXECUTOR].execute(ListRegistrations(_session(request)))
    return json_response(200, [_registration(row) for row in rows])


def _identity(request: web.Request, user_id: str) -> dict[str, Any]:
    """Layer's identity object, as the SDKs read their own user's: what the
    gateway knows is the user id; the rest is empty. ``metadata`` makes it a
    full identity to them, and they call ``url`` from then on."""
    path = "/identities/" + quote(user_id, safe="")
    return {
        "id": "layer:///identities/" + quote(user_id, safe=""),
        "url": str(request.url.origin().with_path(path, encoded=True)),
        "user_id": user_id,
        "display_name": "",
        "avatar_url": None,
        "first_name": "",
        "last_name": "",
        "phone_number": "",
        "email_address": "",
        "public_key": "",
        "metadata": {},
        "type": "user",
        "identity_type": "user",
    }


@_route
async def show_identity(request: web.Request) -> web.Response:
    session = _session(request)
    user_id = request.match_info["user_id"]
    await request.app[EXECUTOR].execute(ShowIdentity(session, user_id))
    return json_response(200, _identity(request, user_id))


@_route
async def end_session(request: web.Request) -> web.Response:
    session = session_from_token(request.match_info["session_token"])
    if session is None:
        raise MissingCredentials()
    await request.app[EXECUTOR].execute(EndSession(session))
    return web.Response(status=204)


@_route
async def issue_nonce(request: web.Request) -> web.Response:
    nonce = await request.app[EXECUTOR].execute(IssueNonce())
    return json_response(201, {"nonce": nonce})


@_route
async def log_in(request: web.Request) -> web.Response:
    log_in = load(LOG_IN_SCHEMA, await read_json_object(request))
    opened = await request.app[EXECUTOR].execute(log_in(request.app[SETTINGS].session_ttl))
    return json_response(201, {"session_token": opened.token})


def setup_routes(app: web.Application) -> None:
    add = functools.partial(app.router.add_route, expect_handler=only_continue)
    add("POST", "/nonces", issue_nonce)
    add("POST", "/sessions", log_in)
    add("POST", "/push_tokens", register_push_token)
    add("GET", "/push_tokens", list_push_tokens)
    # [\s\S], not '.': a device id with a newline is a bad property (422), not an unknown path.
    add("DELETE", r"/push_tokens/{device_id:[\s\S]+}", unregister_push_token)
    add("DELETE", "/sessions/{session_token}", end_session)
    add("GET", "/identities/{user_id}", show_identity)
    # web-xdk 4.0.6 puts its URL before the identity's own when that is not
    # https (its check is /^http(s):/): /http://host:port/identities/<user>.
    add("GET", "/{origin:https?:/+[^/]+}/identities/{user_id}", show_identity)


async def unrouted(request: web.Request) -> web.StreamResponse:
    # As aiohttp's router answers where no route matches: 405 where another
    # route has the path, else 404.
    allowed = await methods_elsewhere(request)
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def setup_catch_all(app: web.Application) -> None:
    """Every path no other route serves: even there a bad Expect gets a dialect's error.

    Added after every other route; named so that logs and metrics label its
    requests as unmatched.
    """
    app.router.add_route(
        "*", "/{path:.*}", unrouted, name=UNMATCHED_ROUTE, expect_handler=only_continue
    )


_TEXT: dict[str, Any] = {"type": "string"}
# What show_identity answers, as the document tells it.
_IDENTITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "url", "user_id", "metadata"],
    "properties": {
        "id": {"type": "string", "example": "layer:///identities/alice"},
        "url": {"type": "string", "format": "uri"},
        "user_id": _TEXT,
        "display_name": _TEXT,
        "avatar_url": {"type": ["string", "null"]},
        "first_name": _TEXT,
        "last_name": _TEXT,
        "phone_number": _TEXT,
        "email_address": _TEXT,
        "public_key": _TEXT,
        "metadata": {"type": "object"},
        "type": {"type": "string", "enum": ["user"]},
        "identity_type": {"type": "string", "enum": ["user"]},
    },
}


# The routes above as the OpenAPI document tells them; every one also takes
# the Accept header and answers LayerError with the statuses named.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/push_tokens", "layer_register_push_token",
        "Register a push token for one of the user's devices",
        202, "Registered; the write has committed",
        errors=(400, 401, 406, 413, 422, 429, 500, 503),
        description="Registering again for the same device_id replaces its token.",
        body="LayerRegister",
    ),
    Operation(
        "get", "/push_tokens", "layer_list_push_tokens",
        "Every live registration of the session's user, newest first",
        200, "The registrations, both dialects'",
        {"type": "array", "items": {"$ref": "#/components/schemas/LayerRegistration"}},
        errors=(401, 406, 429, 500, 503),
    ),
    Operation(
        "delete", "/push_tokens/{device_id}", "layer_unregister_push_token",
        "Unregister the token of one of the user's devices",
        202, "Unregistered, or there was nothing to unregister",
        errors=(401, 406, 422, 429, 500, 503),
        path_parameters=(("device_id", {"type": "string", **validation.IDENTIFIER_JSON_SCHEMA}),),
    ),
    Operation(
        "post", "/nonces", "layer_issue_nonce",
        "Start Layer's authentication handshake: a single-use nonce",
        201, "A new nonce",
        {"type": "object", "required": ["nonce"], "properties": {"nonce": {"type": "string"}}},
        errors=(406, 500, 501, 503),
        description=(
            "The app's backend signs an identity token over the nonce (valid 10"
            " minutes); POST /sessions turns it into a session. No session needed."
        ),
        authenticated=False,
    ),
    Operation(
        "post", "/sessions", "layer_log_in",
        "Trade an identity token for a session",
        201, "A session, as `gateway session create` makes",
        {
            "type": "object",
            "required": ["session_token"],
            "properties": {"session_token": {"type": "string", "pattern": SESSION_TOKEN_PATTERN}},
        },
        errors=(400, 401, 406, 413, 422, 500, 501, 503),
        description=(
            "The identity token is a JWS (RS256, cty layer-eit;v=1, a configured kid)"
            " with claims iss, prn, iat, exp and nce, a nonce from POST /nonces,"
            " which it uses up."
        ),
        body="LayerLogIn",
        authenticated=False,
    ),
    Operation(
        "delete", "/sessions/{session_token}", "layer_end_session",
        "End a session and its registrations",
        204, "The session has ended",
        errors=(401, 406, 429, 500, 503),
        description="The token in the path is the credential; no Authorization needed.",
        path_parameters=(("session_token", {"type": "string", "pattern": SESSION_TOKEN_PATTERN}),),
        authenticated=False,
    ),
    Operation(
        "get", "/identities/{user_id}", "layer_show_identity",
        "The identity of the session's own user, as the SDKs load it",
        200, "Layer's identity object", _IDENTITY_SCHEMA,
        errors=(401, 404, 406, 429, 500, 503),
        description=(
            "Only the caller's own user is known (the gateway keeps no directory):"
            " any other user_id is 404 not_found. Besides the ids, every field is"
            " empty. web-xdk 4.0.6 asks for it at `/{its url}/identities/{user_id}`"
            " when its URL is not https; that path is served too."
        ),
        path_parameters=(("user_id", {"type": "string"}),),
    ),
)


_CHALLENGE = {"WWW-Authenticate": "Layer"}
# Overload and rate limits clear within a second; an outage is worth retrying
# as soon as that.
_RETRY_SOON = {"Retry-After": "1"}

# The first bad property of an InvalidParameters, by whether it was missing.
MISSING_PROPERTY = ErrorRow(
    InvalidParameters, 422, 104, "{property} is required", id="missing_property"
)
INVALID_PROPERTY = ErrorRow(
    InvalidParameters, 422, 105, "{property} {problem}", id="invalid_property"
)

# Each domain error as Layer tells it; the first row whose kind the error is wins.
ERRORS: ErrorTable = (
    ErrorRow(MalformedRequest, 400, 10, "The request is malformed", "invalid_request", Detail.OWN),
    ErrorRow(
        MissingCredentials, 401, 4,
        "A valid Authorization header with a session-token is required",
        "authentication_required",
    ),
    ErrorRow(
        SessionNotFound, 401, 4, "The session is unknown, expired or ended",
        "authentication_required",
    ),
    ErrorRow(
        IdentityRejected, 401, 4, "Identity token refused", "authentication_required",
        Detail.REASON,
    ),
    ErrorRow(
        AuthenticationNotConfigured, 501, 4,
        "Identity-token authentication is not configured on this gateway",
        "authentication_not_configured",
    ),
    ErrorRow(NotAcceptable, 406, 107, f"Accept must be {MEDIA_TYPE}", "invalid_header", Detail.OWN),
    ErrorRow(UnknownEndpoint, 404, 106, "There is no such endpoint", "invalid_endpoint"),
    ErrorRow(IdentityNotFound, 404, 102, "There is no such identity", "not_found"),
    ErrorRow(MethodNotAllowed, 405, 109, "This method is not allowed here", "method_not_allowed"),
    ErrorRow(
        RequestTooLarge, 413, 10, "The request body is too large", "invalid_request", Detail.OWN
    ),
    ErrorRow(
        RateLimited, 429, 7, "Too many requests for this session; retry later",
        "rate_limit_exceeded",
    ),
    ErrorRow(
        DatabaseUnavailable, 503, 1, "The service is temporarily unavailable",
        "service_unavailable",
    ),
    ErrorRow(
        Overloaded, 503, 1, "The service is temporarily unavailable", "service_unavailable"
    ),
    ErrorRow(DatabaseError, 500, 100, "A database error occurred", "internal_server_error"),
    ErrorRow(GatewayError, 500, 100, "An unexpected error occurred", "internal_server_error"),
)
# The rows the OpenAPI document describes, the property errors among them.
DOCUMENTED_ERRORS: ErrorTable = (MISSING_PROPERTY, INVALID_PROPERTY, *ERRORS)


def _error(
    row: ErrorRow, message: str, data: dict[str, Any] | None = None, nonce: str | None = None
) -> web.Response:
    body = {
        "id": row.id,
        "code": row.code,
        "message": message,
        "url": f"{DOCS_URL}#{row.id}",
        "data": (data or {}) | ({"nonce": nonce} if nonce is not None else {}),
    }
    status = row.status
    headers = _CHALLENGE if status == 401 else _RETRY_SOON if status in {429, 503} else None
    return json_response(status, body, headers)


def render_error(exc: GatewayError, nonce: str | None = None) -> web.Response:
    """The one place a domain error becomes a Layer error body; 401s carry ``nonce``."""
    match exc:
        case InvalidParameters(problems=[first, *_]):
            row = MISSING_PROPERTY if first.missing else INVALID_PROPERTY
            message = row.message.format(property=first.parameter, problem=first.message)
            return _error(row, message, {"property": first.parameter})
        case InvalidParameters():
            # Never raised empty; told as the unexpected error it would be.
            return _error(ERRORS[-1], ERRORS[-1].message)
    row = row_for(ERRORS, exc)
    data = {"header": "Accept"} if isinstance(exc, NotAcceptable) else None
    return _error(row, row.message_for(exc), data, nonce if row.status == 401 else None)
