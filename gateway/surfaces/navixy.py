"""The Navixy dialect: RPC-style action paths, three request forms, the hash, its envelope."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

from gateway import validation
from gateway.commands import (
    EndSession,
    Provider,
    RegisterToken,
    SessionRef,
    UnregisterToken,
    WebPushKeys,
)
from gateway.errors import (
    DatabaseError,
    DatabaseUnavailable,
    GatewayError,
    InvalidParameters,
    MalformedRequest,
    MethodNotAllowed,
    MissingCredentials,
    Overloaded,
    Problem,
    RateLimited,
    RequestTooLarge,
    SessionNotFound,
    UnknownEndpoint,
)
from gateway.keys import EXECUTOR, SETTINGS
from gateway.parsing import (
    REPEATED,
    SESSION_KEY,
    JsonObject,
    Text,
    decode_pairs,
    json_object,
    load,
    one_of,
    read_body,
)

PREFIXES = ("/v2", "")
_HASH = re.compile(r"[0-9a-fA-F]{32}")
_AUTHORIZATION = re.compile(r"NVX ([^ ]*)")
_APPLICATIONS = {
    "navixy_iphone_viewer": Provider.APNS,
    "navixy_android_viewer": Provider.FCM,
    "w3c_pushapi": Provider.WEBPUSH,
}
_TOKEN_CHECKS: dict[Provider, Callable[[str], str]] = {
    Provider.APNS: validation.normalize_apns_token,
    Provider.FCM: validation.check_fcm_token,
}
_SUCCESS = orjson.dumps({"success": True})


class WebPushKeysSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    p256dh = Text(validation.check_webpush_p256dh, required=True)
    auth = Text(validation.check_webpush_auth, required=True)

    @post_load
    def make_keys(self, data: dict[str, str], **_: Any) -> WebPushKeys:
        return WebPushKeys(p256dh=data["p256dh"], auth=data["auth"])


class BindSchema(Schema):
    """The parameters of user/session/push_token/bind."""

    class Meta:
        unknown = EXCLUDE

    application = Text(one_of(_APPLICATIONS), required=True)
    token = Text(required=True)
    parameters = JsonObject(WebPushKeysSchema, load_default=None)
    category_filter = Text(load_default="*")
    session = fields.Raw(required=True, data_key=SESSION_KEY)

    def __init__(
        self, categories: frozenset[str], webpush_hosts: tuple[str, ...] | None = None
    ) -> None:
        super().__init__()
        self.categories = categories
        self.webpush_hosts = webpush_hosts

    def _check_token(self, provider: Provider, token: str) -> str:
        if provider is Provider.WEBPUSH:
            return validation.normalize_webpush_endpoint(token, self.webpush_hosts)
        return _TOKEN_CHECKS[provider](token)

    @post_load
    def make_command(self, data: dict[str, Any], **_: Any) -> RegisterToken:
        provider = _APPLICATIONS[data["application"]]
        errors: dict[str, list[str]] = {}
        try:
            token = self._check_token(provider, data["token"])
        except ValueError as exc:
            errors["token"] = [str(exc)]
        if provider is Provider.WEBPUSH and data["parameters"] is None:
            errors["parameters"] = ["is required with application w3c_pushapi"]
        if provider is not Provider.WEBPUSH and data["parameters"] is not None:
            errors["parameters"] = ["applies to application w3c_pushapi only"]
        try:
            category_filter = validation.normalize_category_filter(
                data["category_filter"], self.categories
            )
        except ValueError as exc:
            errors["category_filter"] = [str(exc)]
        if errors:
            raise ValidationError(errors)
        return RegisterToken(
            session=data["session"],
            device_id=None,
            provider=provider,
            token=token,
            category_filter=category_filter,
            webpush=data["parameters"],
        )


BIND_SCHEMA = web.AppKey("navixy_bind_schema", BindSchema)


def _single_values(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Name/value pairs as a dict; a parameter given twice is an error, not a guess."""
    values: dict[str, Any] = {}
    repeated: list[str] = []
    for name, value in pairs:
        if name in values:
            repeated.append(name)
        values[name] = value
    if repeated:
        raise InvalidParameters([Problem(name, REPEATED) for name in repeated])
    return values


async def _parameters(request: web.Request) -> tuple[dict[str, Any], SessionRef | None]:
    """The action's parameters, the body's taking precedence over the query string's.

    And the session already charged to the rate limit: the one the query
    string or the Authorization header names, if any, charged before the body
    is read (a hash in the body is charged after parsing, by the executor).
    """
    parameters = _single_values(decode_pairs(request.rel_url.raw_query_string))
    try:
        head_session: SessionRef | None = _session(request, parameters)
    except MissingCredentials:
        head_session = None  # the body may still bring the hash
    admitted = None if head_session is None else request.app[EXECUTOR].admit(head_session)
    return await _with_body(request, parameters), admitted


async def _with_body(request: web.Request, parameters: dict[str, Any]) -> dict[str, Any]:
    if request.method != "POST" or not request.body_exists:
        return parameters
    if request.content_type == "application/json":
        body = json_object(await read_body(request))
    elif request.content_type == "application/x-www-form-urlencoded":
        body = _single_values(decode_pairs(await read_body(request), request.charset))
    elif request.content_type == "multipart/form-data":
        try:
            body = _single_values((await request.post()).items())
        except (
            ValueError,
            LookupError,
            RuntimeError,
            HttpProcessingError,
            RequestPayloadError,
        ):
            # aiohttp's multipart reader raises each of these for a part it
            # cannot decode: an unknown charset or transfer encoding, a bad or
            # overlong part header.
            raise MalformedRequest("the multipart body cannot be decoded") from None
    else:
        raise MalformedRequest(
            "the body must be application/json or application/x-www-form-urlencoded"
        )
    # A JSON null is a parameter not given, so the hash falls back to the query
    # string and optional parameters to their defaults.
    parameters.update((name, value) for name, value in body.items() if value is not None)
    return parameters


def _session(request: web.Request, parameters: dict[str, Any]) -> SessionRef:
    """The session hash: from the body, then the query string, then the Authorization header."""
    value: Any = parameters.get("hash")
    if value is None:
        header = request.headers.get("Authorization")
        if header is not None:
            match = _AUTHORIZATION.fullmatch(header)
            value = match.group(1) if match else None
            if value is None:
                raise MissingCredentials()
    session = _session_of(value) if isinstance(value, str) else None
    if session is None:
        raise MissingCredentials()
    return session


# A client sends the same hash on every request: its digest is a pure function
# of it, kept in a small LRU per process (the hashes stay in this process's
# memory, as each request's do while it runs).
@functools.lru_cache(maxsize=4096)
def _session_of(value: str) -> SessionRef | None:
    if not _HASH.fullmatch(value):
        return None
    return SessionRef.from_token(value.lower())


def _success() -> web.Response:
    return web.Response(body=_SUCCESS, content_type="application/json")


async def bind_push_token(request: web.Request) -> web.Response:
    parameters, admitted = await _parameters(request)
    parameters[SESSION_KEY] = _session(request, parameters)
    command = load(request.app[BIND_SCHEMA], parameters)
    await request.app[EXECUTOR].execute(command, admitted=admitted)
    return _success()


async def delete_push_token(request: web.Request) -> web.Response:
    parameters, admitted = await _parameters(request)
    session = _session(request, parameters)
    command = UnregisterToken(session=session, device_id=None)
    await request.app[EXECUTOR].execute(command, admitted=admitted)
    return _success()


async def logout(request: web.Request) -> web.Response:
    parameters, admitted = await _parameters(request)
    command = EndSession(_session(request, parameters))
    await request.app[EXECUTOR].execute(command, admitted=admitted)
    return _success()


async def unknown_action(request: web.Request) -> web.Response:
    # Only the exact paths setup_routes serves name an action, as sent (an
    # escaped slash in ".../delete%2F" is not one): /v2//user/logout names none.
    if request.raw_path.partition("?")[0] in SERVED_PATHS:
        raise MethodNotAllowed()
    raise UnknownEndpoint()


ACTIONS: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
    "user/session/push_token/bind": bind_push_token,
    "user/session/push_token/delete": delete_push_token,
    "user/logout": logout,
}


# Each action with and without a trailing slash, under /v2 and at the root.
SERVED_PATHS = frozenset(
    f"{prefix}/{action}{slash}" for prefix in PREFIXES for action in ACTIONS for slash in ("", "/")
)


def setup_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[BIND_SCHEMA] = BindSchema(settings.categories, settings.webpush_allowed_hosts)
    for prefix in PREFIXES:
        for action, handler in ACTIONS.items():
            for path in (f"{prefix}/{action}", f"{prefix}/{action}/"):
                app.router.add_get(path, handler, allow_head=False)
                app.router.add_post(path, handler)
    app.router.add_route("*", "/v2/{action:.*}", unknown_action)
    # The captured action keeps its "user/" so a known action is recognised without /v2 too.
    app.router.add_route("*", "/{action:user/.*}", unknown_action)


def owns(path: str) -> bool:
    """Whether an unmatched or failed request at ``path`` should be answered in this dialect."""
    return path.startswith(("/v2/", "/user/")) or path == "/v2"


_STATUS: list[tuple[type[GatewayError], int, int, str]] = [
    (DatabaseError, 500, 1, "Database error"),
    (MissingCredentials, 400, 3, "Wrong hash"),
    (SessionNotFound, 400, 4, "User or API key not found or session ended"),
    (MalformedRequest, 400, 5, "Wrong request format"),
    (InvalidParameters, 400, 7, "Invalid parameters"),
    (RequestTooLarge, 412, 9, "Too large request"),
    (DatabaseUnavailable, 503, 14, "Database unavailable"),
    # Navixy has no code for a saturated service; the database's write queue
    # is what is full, so it is told as the database being unavailable.
    (Overloaded, 503, 14, "Database unavailable"),
    (RateLimited, 429, 15, "Too many requests (rate limit exceeded)"),
    (UnknownEndpoint, 400, 111, "Wrong handler"),
    (MethodNotAllowed, 400, 112, "Wrong method"),
]


def render_error(exc: GatewayError) -> web.Response:
    """The one place a domain error becomes a Navixy error envelope."""
    status, code, description = 500, 6, "Unexpected error"
    for kind, kind_status, kind_code, kind_description in _STATUS:
        if isinstance(exc, kind):
            status, code, description = kind_status, kind_code, kind_description
            break
    body: dict[str, Any] = {
        "success": False,
        "status": {"code": code, "description": description},
    }
    if isinstance(exc, InvalidParameters):
        body["errors"] = [
            {"parameter": problem.parameter, "error": problem.message}
            for problem in exc.problems
        ]
    headers = {"Retry-After": "1"} if status in {429, 503} else None
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
