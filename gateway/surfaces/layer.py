"""The Layer Client API dialect: /push_tokens and /sessions, its headers, and its error bodies."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

from gateway import validation
from gateway.commands import (
    EndSession,
    IssueNonce,
    ListRegistrations,
    LogIn,
    Provider,
    RegisterToken,
    SessionRef,
    UnregisterToken,
)
from gateway.errors import (
    AuthenticationNotConfigured,
    DatabaseError,
    DatabaseUnavailable,
    GatewayError,
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
from gateway.keys import EXECUTOR, SETTINGS
from gateway.parsing import SESSION_KEY, Text, json_object, load, one_of, read_body

MEDIA_TYPE = "application/vnd.layer+json"
DOCS_URL = "https://developer.layer.com/docs/client/rest"

# The page's own examples quote the token with single quotes; the SDKs use
# double quotes.
_AUTHORIZATION = re.compile(
    r"""\s*Layer\s+session-token\s*=\s*(?:"([^"]*)"|'([^']*)')\s*""", re.IGNORECASE
)
_SESSION_TOKEN = re.compile(r"[0-9a-fA-F]{32}")
# [0-9], not \d: \d would let other scripts' digits through (as gateway.validation notes).
_IOS_VERSION = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}")
_TYPES = {"apns": Provider.APNS, "gcm": Provider.FCM}
_TYPE_NAMES = {Provider.APNS: "apns", Provider.FCM: "gcm", Provider.WEBPUSH: "webpush"}


def _ios_version(value: str) -> str:
    if not _IOS_VERSION.fullmatch(value):
        raise ValueError("must be a version number like 9.0")
    return value


class RegisterSchema(Schema):
    """The body of POST /push_tokens."""

    class Meta:
        unknown = EXCLUDE

    token = Text(required=True)
    type = Text(one_of(_TYPES), required=True)
    device_id = Text(validation.check_identifier, required=True)
    apns_bundle_id = Text(validation.check_identifier, load_default=None)
    gcm_sender_id = Text(validation.check_identifier, load_default=None)
    ios_version = Text(_ios_version, load_default=None)
    session = fields.Raw(required=True, data_key=SESSION_KEY)

    @post_load
    def make_command(self, data: dict[str, Any], **_: Any) -> RegisterToken:
        provider = _TYPES[data["type"]]
        check = (
            validation.normalize_apns_token
            if provider is Provider.APNS
            else validation.check_fcm_token
        )
        try:
            token = check(data["token"])
        except ValueError as exc:
            raise ValidationError({"token": [str(exc)]}) from None
        if provider is Provider.FCM:
            for apns_only in ("apns_bundle_id", "ios_version"):
                if data[apns_only] is not None:
                    raise ValidationError({apns_only: ["applies to apns tokens only"]})
        elif data["gcm_sender_id"] is not None:
            raise ValidationError({"gcm_sender_id": ["applies to gcm tokens only"]})
        return RegisterToken(
            session=data["session"],
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

    identity_token = Text(_identity_token, required=True)
    app_id = Text(validation.check_identifier, required=True)
    ttl = fields.Integer(required=True, data_key=SESSION_KEY)

    @post_load
    def make_command(self, data: dict[str, Any], **_: Any) -> LogIn:
        return LogIn(data["identity_token"], data["app_id"], data["ttl"])


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


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _route(handler: Handler) -> Handler:
    """A Layer route: the Accept check first, and a fresh nonce on every 401.

    The nonce is Layer's documented contract (its SDKs read data.nonce to
    re-authenticate when a session expires). When none can be minted because
    the database is down, the answer is 503, not a 401 without one: the
    client retries instead of dropping its session.
    """

    @functools.wraps(handler)
    async def serve(request: web.Request) -> web.Response:
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
    token = (match.group(1) or match.group(2)) if match else None
    if token is None or not _SESSION_TOKEN.fullmatch(token):
        return None
    return SessionRef.from_token(token.lower())


def _session(request: web.Request) -> SessionRef:
    session = _session_of(request.headers.get("Authorization", ""))
    if session is None:
        raise MissingCredentials()
    return session


async def _json_object(request: web.Request) -> dict[str, Any]:
    return json_object(await read_body(request))


@_route
async def register_push_token(request: web.Request) -> web.Response:
    executor = request.app[EXECUTOR]
    # Refused before the body is read: a flood costs no parsing.
    session = executor.admit(_session(request))
    body = await _json_object(request)
    body[SESSION_KEY] = session
    await executor.execute(load(REGISTER_SCHEMA, body), admitted=session)
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
    return _json(200, [_registration(row) for row in rows])


@_route
async def end_session(request: web.Request) -> web.Response:
    token = request.match_info["session_token"]
    if not _SESSION_TOKEN.fullmatch(token):
        raise MissingCredentials()
    await request.app[EXECUTOR].execute(EndSession(SessionRef.from_token(token.lower())))
    return web.Response(status=204)


@_route
async def issue_nonce(request: web.Request) -> web.Response:
    nonce = await request.app[EXECUTOR].execute(IssueNonce())
    return _json(201, {"nonce": nonce})


@_route
async def log_in(request: web.Request) -> web.Response:
    body = await _json_object(request)
    body[SESSION_KEY] = request.app[SETTINGS].session_ttl
    opened = await request.app[EXECUTOR].execute(load(LOG_IN_SCHEMA, body))
    return _json(201, {"session_token": opened.token})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/nonces", issue_nonce)
    app.router.add_post("/sessions", log_in)
    app.router.add_post("/push_tokens", register_push_token)
    app.router.add_get("/push_tokens", list_push_tokens, allow_head=False)
    # [\s\S], not '.': a device id with a newline is a bad property (422), not an unknown path.
    app.router.add_delete(r"/push_tokens/{device_id:[\s\S]+}", unregister_push_token)
    app.router.add_delete("/sessions/{session_token}", end_session)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _error(
    status: int,
    code: int,
    error_id: str,
    message: str,
    data: dict[str, Any] | None = None,
    nonce: str | None = None,
) -> web.Response:
    body = {
        "id": error_id,
        "code": code,
        "message": message,
        "url": f"{DOCS_URL}#{error_id}",
        "data": (data or {}) | ({"nonce": nonce} if nonce is not None else {}),
    }
    headers = _CHALLENGE if status == 401 else _RETRY_SOON if status in {429, 503} else None
    return _json(status, body, headers)


_CHALLENGE = {"WWW-Authenticate": "Layer"}
# Overload and rate limits clear within a second; an outage is worth retrying
# as soon as that.
_RETRY_SOON = {"Retry-After": "1"}


def render_error(exc: GatewayError, nonce: str | None = None) -> web.Response:
    """The one place a domain error becomes a Layer error body; 401s carry ``nonce``."""
    match exc:
        case InvalidParameters(problems=[first, *_]):
            if first.missing:
                return _error(
                    422, 104, "missing_property", f"{first.parameter} is required",
                    {"property": first.parameter},
                )
            return _error(
                422, 105, "invalid_property", f"{first.parameter} {first.message}",
                {"property": first.parameter},
            )
        case MalformedRequest():
            return _error(400, 10, "invalid_request", str(exc) or "The request is malformed")
        case MissingCredentials():
            return _error(
                401, 4, "authentication_required",
                "A valid Authorization header with a session-token is required", nonce=nonce,
            )
        case SessionNotFound():
            return _error(
                401, 4, "authentication_required", "The session is unknown, expired or ended",
                nonce=nonce,
            )
        case IdentityRejected():
            return _error(
                401, 4, "authentication_required", f"Identity token refused: {exc}", nonce=nonce
            )
        case AuthenticationNotConfigured():
            return _error(
                501, 4, "authentication_not_configured",
                "Identity-token authentication is not configured on this gateway",
            )
        case NotAcceptable():
            return _error(
                406, 107, "invalid_header",
                str(exc) or f"Accept must be {MEDIA_TYPE}", {"header": "Accept"},
            )
        case UnknownEndpoint():
            return _error(404, 106, "invalid_endpoint", "There is no such endpoint")
        case MethodNotAllowed():
            return _error(405, 109, "method_not_allowed", "This method is not allowed here")
        case RequestTooLarge():
            return _error(413, 10, "invalid_request", str(exc) or "The request body is too large")
        case RateLimited():
            return _error(
                429, 7, "rate_limit_exceeded", "Too many requests for this session; retry later"
            )
        case DatabaseUnavailable() | Overloaded():
            return _error(503, 1, "service_unavailable", "The service is temporarily unavailable")
        case DatabaseError():
            return _error(500, 100, "internal_server_error", "A database error occurred")
        case _:
            return _error(500, 100, "internal_server_error", "An unexpected error occurred")
