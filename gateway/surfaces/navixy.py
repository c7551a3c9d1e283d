"""The Navixy dialect: RPC-style action paths, three request forms, the hash, its envelope."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import EXCLUDE, Schema, ValidationError, post_load

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
from gateway.expect import only_continue
from gateway.keys import EXECUTOR, SETTINGS
from gateway.parsing import (
    REPEATED,
    JsonObject,
    Normalized,
    Text,
    decode_pairs,
    load,
    one_of,
    read_body,
    read_json_object,
)
from gateway.wire import (
    SESSION_TOKEN,
    ErrorRow,
    ErrorTable,
    Handler,
    Operation,
    json_response,
    row_for,
    session_from_token,
)

PREFIXES = ("/v2", "")
_AUTHORIZATION = re.compile(r"NVX ([^ ]*)")
APPLICATIONS = {
    "navixy_iphone_viewer": Provider.APNS,
    "navixy_android_viewer": Provider.FCM,
    "w3c_pushapi": Provider.WEBPUSH,
}
_SUCCESS = orjson.dumps({"success": True})


class WebPushKeysSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    p256dh = Normalized(
        validation.check_webpush_p256dh,
        required=True,
        metadata={
            "pattern": validation.BASE64URL_JSON_PATTERN,
            "description": "base64url of a 65-byte uncompressed P-256 point",
        },
    )
    auth = Normalized(
        validation.check_webpush_auth,
        required=True,
        metadata={
            "pattern": validation.BASE64URL_JSON_PATTERN,
            "description": "base64url of 16 bytes",
        },
    )

    @post_load
    def make_keys(self, data: dict[str, str], **_: Any) -> WebPushKeys:
        return WebPushKeys(p256dh=data["p256dh"], auth=data["auth"])


class BindSchema(Schema):
    """The parameters of user/session/push_token/bind."""

    class Meta:
        unknown = EXCLUDE

    # Read by the surface before the schema (a bad or missing hash is code 3,
    # whatever else is wrong), declared here because it is on the wire.
    hash = Text(
        metadata={
            "pattern": f"^{SESSION_TOKEN.pattern}$",
            "description": "the session; also `Authorization: NVX <hash>`",
        },
    )
    application = Text(required=True, validate=one_of(APPLICATIONS))
    token = Text(required=True, metadata=validation.ANY_PUSH_TOKEN_JSON_SCHEMA)
    parameters = JsonObject(WebPushKeysSchema, load_default=None)
    category_filter = Text(
        load_default="*",
        metadata={"description": "'*', 'a,b' (only these) or '-a,b' (all but these)"},
    )

    def __init__(
        self, categories: frozenset[str], webpush_hosts: tuple[str, ...] | None = None
    ) -> None:
        super().__init__()
        self.categories = categories
        self.webpush_hosts = webpush_hosts
        # The filter's grammar over these categories, for the OpenAPI document
        # (a new mapping: the declared field's is shared by every instance).
        names = "|".join(sorted(categories))
        category_filter = self.fields["category_filter"]
        category_filter.metadata = {
            **category_filter.metadata,
            "pattern": f"^ *(\\*|-?({names})( *, *({names}))*) *$",
        }

    @post_load
    def make_command(
        self, data: dict[str, Any], **_: Any
    ) -> Callable[[SessionRef], RegisterToken]:
        """The binding, waiting for the session the surface read from the hash."""
        provider = APPLICATIONS[data["application"]]
        errors: dict[str, list[str]] = {}
        try:
            token = validation.normalize_token(provider, data["token"], self.webpush_hosts)
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
        return functools.partial(
            RegisterToken,
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
        body = await read_json_object(request)
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
    session = session_from_token(value)
    if session is None:
        raise MissingCredentials()
    return session


def _success() -> web.Response:
    return web.Response(body=_SUCCESS, content_type="application/json")


async def bind_push_token(request: web.Request) -> web.Response:
    parameters, admitted = await _parameters(request)
    session = _session(request, parameters)
    binding = load(request.app[BIND_SCHEMA], parameters)
    await request.app[EXECUTOR].execute(binding(session), admitted=admitted)
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


ACTIONS: dict[str, Handler] = {
    "user/session/push_token/bind": bind_push_token,
    "user/session/push_token/delete": delete_push_token,
    "user/logout": logout,
}

# The actions above as the OpenAPI document tells them, each by its POST with
# a JSON body (the form body and the GET query string carry the same fields as
# text); every one answers NavixySuccess or the error table's statuses.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v2/user/session/push_token/bind", "navixy_bind",
        "Bind a push token to the calling session, replacing its earlier one",
        200, "Done", "NavixySuccess",
        body="NavixyBind",
    ),
    Operation(
        "post", "/v2/user/session/push_token/delete", "navixy_delete",
        "Remove the session's binding; succeeds when there is none",
        200, "Done", "NavixySuccess",
        body="NavixySession",
    ),
    Operation(
        "post", "/v2/user/logout", "navixy_logout",
        "End the session, and its binding with it",
        200, "Done", "NavixySuccess",
        body="NavixySession",
    ),
)


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
                app.router.add_get(path, handler, allow_head=False, expect_handler=only_continue)
                app.router.add_post(path, handler, expect_handler=only_continue)
    app.router.add_route("*", "/v2/{action:.*}", unknown_action, expect_handler=only_continue)
    # The captured action keeps its "user/" so a known action is recognised without /v2 too.
    app.router.add_route("*", "/{action:user/.*}", unknown_action, expect_handler=only_continue)


def owns(path: str) -> bool:
    """Whether an unmatched or failed request at ``path`` should be answered in this dialect."""
    return path.startswith(("/v2/", "/user/")) or path == "/v2"


# Each domain error as Navixy tells it; the first row whose kind the error is wins.
ERRORS: ErrorTable = (
    ErrorRow(DatabaseError, 500, 1, "Database error"),
    ErrorRow(MissingCredentials, 400, 3, "Wrong hash"),
    ErrorRow(SessionNotFound, 400, 4, "User or API key not found or session ended"),
    ErrorRow(MalformedRequest, 400, 5, "Wrong request format"),
    ErrorRow(InvalidParameters, 400, 7, "Invalid parameters"),
    ErrorRow(RequestTooLarge, 412, 9, "Too large request"),
    ErrorRow(DatabaseUnavailable, 503, 14, "Database unavailable"),
    # Navixy has no code for a saturated service; the database's write queue
    # is what is full, so it is told as the database being unavailable.
    ErrorRow(Overloaded, 503, 14, "Database unavailable"),
    ErrorRow(RateLimited, 429, 15, "Too many requests (rate limit exceeded)"),
    ErrorRow(UnknownEndpoint, 400, 111, "Wrong handler"),
    ErrorRow(MethodNotAllowed, 400, 112, "Wrong method"),
    ErrorRow(GatewayError, 500, 6, "Unexpected error"),
)


def render_error(exc: GatewayError) -> web.Response:
    """The one place a domain error becomes a Navixy error envelope."""
    row = row_for(ERRORS, exc)
    body: dict[str, Any] = {
        "success": False,
        "status": {"code": row.code, "description": row.message},
    }
    if isinstance(exc, InvalidParameters):
        body["errors"] = [
            {"parameter": problem.parameter, "error": problem.message}
            for problem in exc.problems
        ]
    headers = {"Retry-After": "1"} if row.status in {429, 503} else None
    return json_response(row.status, body, headers)
