"""The OpenAPI 3.1 document of every dialect, built from the surfaces' marshmallow schemas."""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from gateway import validation
from gateway.commands import DeliveryState
from gateway.config import DEFAULT_LAYER_VERSIONS
from gateway.keys import SETTINGS
from gateway.observability import REQUEST_ID_HEADER
from gateway.surfaces import internal, layer, navixy, notifications
from gateway.wire import SESSION_TOKEN, describe

OPENAPI_VERSION = "3.1.0"

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# Patterns are ECMA-262, as JSON Schema reads them; they restate
# gateway.validation's rules for the document's readers and generators, and
# the code stays the authority.
_HEX_32 = f"^{SESSION_TOKEN.pattern}$"
_IDENTIFIER = validation.IDENTIFIER_JSON_SCHEMA
_PUSH_TOKEN: dict[str, Any] = {
    # Both the APNs and the FCM form; which applies depends on the type.
    "pattern": "^[A-Za-z0-9_:-]+$",
    "minLength": validation.FCM_TOKEN_MIN_LENGTH,
    "maxLength": validation.FCM_TOKEN_MAX_LENGTH,
    "description": (
        f"APNs: {validation.APNS_TOKEN_MIN_LENGTH} to {validation.APNS_TOKEN_MAX_LENGTH} hex "
        f"digits, an even number (stored lowercase). FCM: {validation.FCM_TOKEN_MIN_LENGTH} to "
        f"{validation.FCM_TOKEN_MAX_LENGTH} characters of [A-Za-z0-9_:-]."
    ),
}
_BASE64URL = "^[A-Za-z0-9_-]+={0,2}$"

# The two pages' own examples.
_LAYER_EXAMPLE = {
    "token": "105ebe3fcb7e93efda22257caaf5b9c465043f6d0b2abf3bc8ae7c939655e949",
    "type": "apns",
    "device_id": "a7775566-bfbf-11e5-bf72-359a01002888",
    "apns_bundle_id": "com.layer.bundleid",
    "ios_version": "9.0",
}
_NAVIXY_EXAMPLE = {
    "hash": "22eac1c27af4be7b9d04da2ce1af111b",
    "application": "navixy_android_viewer",
    "token": "f4be7b9d04da2ce1af111b",
}


# ------------------------------------------------------------ answers only the document names
# The surfaces write their answers by hand for speed; these schemas describe them.


class LayerErrorSchema(Schema):
    id = fields.String(required=True, metadata={"example": "missing_property"})
    code = fields.Integer(required=True, metadata={"example": 104})
    message = fields.String(required=True)
    url = fields.String(required=True, metadata={"format": "uri"})
    data = fields.Dict(required=True, metadata={"description": "e.g. {\"property\": \"token\"}"})


class LayerLogInSchema(Schema):
    identity_token = fields.String(required=True, metadata={"description": "a signed JWS"})
    app_id = fields.String(required=True)


class WebPushKeysDocSchema(Schema):
    """A Web Push subscription's keys, as both the Layer listing and fan-out show them."""

    p256dh = fields.String(required=True)
    auth = fields.String(required=True)


class LayerRegistrationSchema(Schema):
    token = fields.String(required=True)
    type = fields.String(required=True, metadata={"enum": ["apns", "gcm", "webpush"]})
    device_id = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "null for a Navixy binding, which belongs to its session"},
    )
    category_filter = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    apns_bundle_id = fields.String(allow_none=True, metadata={"description": "apns only"})
    ios_version = fields.String(allow_none=True, metadata={"description": "apns only"})
    gcm_sender_id = fields.String(allow_none=True, metadata={"description": "gcm only"})
    parameters = fields.Nested(WebPushKeysDocSchema, metadata={"description": "webpush only"})


class NavixySuccessSchema(Schema):
    success = fields.Boolean(required=True, metadata={"enum": [True]})


class NavixyStatusSchema(Schema):
    code = fields.Integer(required=True)
    description = fields.String(required=True)


class NavixyProblemSchema(Schema):
    parameter = fields.String(required=True)
    error = fields.String(required=True)


class NavixyErrorSchema(Schema):
    success = fields.Boolean(required=True, metadata={"enum": [False]})
    status = fields.Nested(NavixyStatusSchema, required=True)
    errors = fields.List(
        fields.Nested(NavixyProblemSchema), metadata={"description": "with code 7 only"}
    )


class NavixySessionSchema(Schema):
    """The parameters of user/session/push_token/delete and user/logout."""

    hash = fields.String(metadata={"pattern": _HEX_32})


class InternalProblemSchema(Schema):
    name = fields.String(required=True)
    message = fields.String(required=True)


class InternalErrorDetailSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    parameters = fields.List(fields.Nested(InternalProblemSchema))


class InternalErrorSchema(Schema):
    error = fields.Nested(InternalErrorDetailSchema, required=True)


class InternalTargetSchema(Schema):
    user = fields.String(required=True)
    provider = fields.String(required=True, metadata={"enum": ["apns", "fcm", "webpush"]})
    token = fields.String(required=True)
    apns_bundle_id = fields.String(required=True, allow_none=True)
    gcm_sender_id = fields.String(required=True, allow_none=True)
    ios_version = fields.String(required=True, allow_none=True)
    webpush = fields.Nested(WebPushKeysDocSchema, required=True, allow_none=True)
    device_id = fields.String(required=True, allow_none=True)


class InternalPrunedSchema(Schema):
    removed = fields.Integer(required=True, metadata={"minimum": 0})


class InternalOpenedSessionSchema(Schema):
    token = fields.String(required=True, metadata={"pattern": _HEX_32})
    expires_at = fields.DateTime(required=True)


class NotificationQueuedSchema(Schema):
    id = fields.UUID(required=True)
    targets = fields.Integer(required=True, metadata={"minimum": 0})


class DeliveryCountsSchema(Schema):
    pending = fields.Integer(required=True)
    delivered = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    pruned = fields.Integer(required=True)
    expired = fields.Integer(required=True)


class DeliveryFailureSchema(Schema):
    provider = fields.String(required=True)
    error = fields.String(required=True, allow_none=True)
    count = fields.Integer(required=True)


class NotificationProgressSchema(Schema):
    id = fields.UUID(required=True)
    state = fields.String(required=True, metadata={"enum": ["pending", "done"]})
    targets = fields.Integer(required=True)
    counts = fields.Nested(DeliveryCountsSchema, required=True)
    by_provider = fields.Dict(
        keys=fields.String(), values=fields.Nested(DeliveryCountsSchema), required=True
    )
    last_error = fields.String(required=True, allow_none=True)
    errors = fields.List(fields.Nested(DeliveryFailureSchema), required=True)
    category = fields.String(required=True)
    priority = fields.String(required=True)
    collapse_key = fields.String(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(required=True)


class DeliverySchema(Schema):
    id = fields.Integer(required=True)
    user = fields.String(required=True)
    provider = fields.String(required=True)
    token = fields.String(required=True)
    outcome = fields.String(required=True)
    attempts = fields.Integer(required=True)
    status = fields.Integer(required=True, allow_none=True)
    error = fields.String(required=True, allow_none=True)
    next_attempt_at = fields.DateTime(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    finished_at = fields.DateTime(required=True, allow_none=True)


class DeliveriesPageSchema(Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True)
    next_after = fields.Integer(
        required=True, allow_none=True, metadata={"description": "the next page's after"}
    )


class HealthSchema(Schema):
    status = fields.String(required=True)
    database = fields.String()


# ------------------------------------------------------------ building blocks


def _version() -> str:
    try:
        return metadata.version("push-token-gateway")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _json_schema(plugin: MarshmallowPlugin, schema: Schema | type[Schema]) -> dict[str, Any]:
    """A marshmallow schema as JSON Schema; nested schemas become components."""
    # Set once the plugin joins an APISpec, which every caller here has done.
    if plugin.converter is None:
        raise RuntimeError("the MarshmallowPlugin is not attached to an APISpec")
    converted: dict[str, Any] = plugin.converter.schema2jsonschema(schema)  # type: ignore[no-untyped-call]
    return converted


def _request_schema(
    plugin: MarshmallowPlugin, schema: Schema, refinements: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A surface's schema as JSON Schema, with what the schema cannot say added."""
    converted = _json_schema(plugin, schema)
    properties = converted["properties"]
    for name, extra in refinements.items():
        properties[name] = {**properties.get(name, {}), **extra}
    return converted


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in (REQUEST_ID_HEADER, *names)}


def _answer(description: str, schema: str | None = None, *headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "headers": _headers(*headers)}
    if schema is not None:
        answer["content"] = {JSON: {"schema": _ref(schema)}}
    return answer


def _json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


# ------------------------------------------------------------ the Layer dialect

# What each status answers, from the table the Layer renderer reads.
_LAYER_ERRORS = describe(layer.DOCUMENTED_ERRORS)


def _error_answers(
    descriptions: dict[int, str], schema: str, statuses: tuple[int, ...], *, retry_after: bool
) -> dict[str, Any]:
    """The documented error answers: 401 challenges; 429 and 503 may say when to retry."""
    answers = {}
    for status in statuses:
        extra: list[str] = []
        if status == 401:
            extra.append("WWW-Authenticate")
        if retry_after and status in {429, 503}:
            extra.append("Retry-After")
        answers[str(status)] = _answer(descriptions[status], schema, *extra)
    return answers


def _layer_errors(*statuses: int) -> dict[str, Any]:
    return _error_answers(_LAYER_ERRORS, "LayerError", statuses, retry_after=True)


def _layer_accept() -> dict[str, Any]:
    return {
        "name": "Accept",
        "in": "header",
        "required": True,
        "description": "Every Layer request names the API's media type and version.",
        "schema": {
            "type": "string",
            "enum": [f"{layer.MEDIA_TYPE}; version={v}" for v in sorted(DEFAULT_LAYER_VERSIONS)],
        },
    }


def _layer_paths(spec: APISpec, plugin: MarshmallowPlugin) -> None:
    spec.components.schema(
        "LayerRegister",
        component=_request_schema(
            plugin,
            layer.REGISTER_SCHEMA,
            {
                "token": {"type": "string", **_PUSH_TOKEN},
                "ios_version": {
                    "pattern": f"^{layer.IOS_VERSION.pattern}$",
                    "description": "apns only",
                },
            },
        )
        | {"example": _LAYER_EXAMPLE},
    )
    spec.components.schema("LayerError", schema=LayerErrorSchema)
    spec.components.schema("LayerRegistration", schema=LayerRegistrationSchema)
    security: list[dict[str, list[str]]] = [{"LayerSession": []}]
    tags = ["Layer"]
    spec.path(
        "/push_tokens",
        operations={
            "post": {
                "tags": tags,
                "operationId": "layer_register_push_token",
                "summary": "Register a push token for one of the user's devices",
                "description": "Registering again for the same device_id replaces its token.",
                "security": security,
                "parameters": [_layer_accept()],
                "requestBody": _json_body("LayerRegister"),
                "responses": {
                    "202": _answer("Registered; the write has committed"),
                    **_layer_errors(400, 401, 406, 413, 422, 429, 500, 503),
                },
            },
            "get": {
                "tags": tags,
                "operationId": "layer_list_push_tokens",
                "summary": "Every live registration of the session's user, newest first",
                "security": security,
                "parameters": [_layer_accept()],
                "responses": {
                    "200": {
                        "description": "The registrations, both dialects'",
                        "headers": _headers(),
                        "content": {
                            JSON: {"schema": {"type": "array", "items": _ref("LayerRegistration")}}
                        },
                    },
                    **_layer_errors(401, 406, 429, 500, 503),
                },
            },
        },
    )
    spec.path(
        "/push_tokens/{device_id}",
        operations={
            "delete": {
                "tags": tags,
                "operationId": "layer_unregister_push_token",
                "summary": "Unregister the token of one of the user's devices",
                "security": security,
                "parameters": [
                    _layer_accept(),
                    {
                        "name": "device_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", **_IDENTIFIER},
                    },
                ],
                "responses": {
                    "202": _answer("Unregistered, or there was nothing to unregister"),
                    **_layer_errors(401, 406, 422, 429, 500, 503),
                },
            }
        },
    )
    spec.components.schema("LayerLogIn", schema=LayerLogInSchema)
    spec.path(
        "/nonces",
        operations={
            "post": {
                "tags": tags,
                "operationId": "layer_issue_nonce",
                "summary": "Start Layer's authentication handshake: a single-use nonce",
                "description": (
                    "The app's backend signs an identity token over the nonce (valid 10"
                    " minutes); POST /sessions turns it into a session. No session needed."
                ),
                "parameters": [_layer_accept()],
                "responses": {
                    "201": {
                        "description": "A new nonce",
                        "headers": _headers(),
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["nonce"],
                                    "properties": {"nonce": {"type": "string"}},
                                }
                            }
                        },
                    },
                    **_layer_errors(406, 500, 501, 503),
                },
            }
        },
    )
    spec.path(
        "/sessions",
        operations={
            "post": {
                "tags": tags,
                "operationId": "layer_log_in",
                "summary": "Trade an identity token for a session",
                "description": (
                    "The identity token is a JWS (RS256, cty layer-eit;v=1, a configured kid)"
                    " with claims iss, prn, iat, exp and nce, a nonce from POST /nonces,"
                    " which it uses up."
                ),
                "parameters": [_layer_accept()],
                "requestBody": _json_body("LayerLogIn"),
                "responses": {
                    "201": {
                        "description": "A session, as `gateway session create` makes",
                        "headers": _headers(),
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["session_token"],
                                    "properties": {
                                        "session_token": {"type": "string", "pattern": _HEX_32}
                                    },
                                }
                            }
                        },
                    },
                    **_layer_errors(400, 401, 406, 413, 422, 500, 501, 503),
                },
            }
        },
    )
    spec.path(
        "/sessions/{session_token}",
        operations={
            "delete": {
                "tags": tags,
                "operationId": "layer_end_session",
                "summary": "End a session and its registrations",
                "description": "The token in the path is the credential; no Authorization needed.",
                "parameters": [
                    _layer_accept(),
                    {
                        "name": "session_token",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": _HEX_32},
                    },
                ],
                "responses": {
                    "204": _answer("The session has ended"),
                    **_layer_errors(401, 406, 429, 500, 503),
                },
            }
        },
    )


# ------------------------------------------------------------ the Navixy dialect

# Every Navixy error but a 200 answer's, from the table its renderer reads.
_NAVIXY_ERRORS = describe(navixy.ERRORS)


def _navixy_answers() -> dict[str, Any]:
    answers = {"200": _answer("Done", "NavixySuccess")}
    for status, description in _NAVIXY_ERRORS.items():
        extra = ("Retry-After",) if status in {429, 503} else ()
        answers[str(status)] = _answer(description, "NavixyError", *extra)
    return answers


def _query_parameters(component: dict[str, Any]) -> list[dict[str, Any]]:
    """A body schema's properties as query parameters: the GET form of the same action."""
    required = set(component.get("required", []))
    example = component.get("example", {})
    parameters = []
    for name, schema in component["properties"].items():
        parameter = {"name": name, "in": "query", "required": name in required, "schema": schema}
        if name in example:
            parameter["example"] = example[name]
        parameters.append(parameter)
    return parameters


def _navixy_paths(spec: APISpec, plugin: MarshmallowPlugin, categories: frozenset[str]) -> None:
    names = "|".join(sorted(categories))
    bind = _request_schema(
        plugin,
        navixy.BindSchema(categories),
        {
            "token": {
                "type": "string",
                # Every form the three applications take; which applies
                # depends on the application.
                "pattern": (
                    f"^([A-Za-z0-9_:-]{{{validation.FCM_TOKEN_MIN_LENGTH},"
                    f"{validation.FCM_TOKEN_MAX_LENGTH}}}|https://[!-~]+)$"
                ),
                "maxLength": validation.FCM_TOKEN_MAX_LENGTH,
                "description": _PUSH_TOKEN["description"]
                + " w3c_pushapi: the subscription's https endpoint URL.",
            },
            "category_filter": {
                "type": "string",
                "default": "*",
                "pattern": f"^ *(\\*|-?({names})( *, *({names}))*) *$",
                "description": "'*', 'a,b' (only these) or '-a,b' (all but these)",
            },
        },
    )
    bind["properties"]["parameters"] = {
        "anyOf": [_ref("WebPushKeys"), {"type": "string"}, {"type": "null"}],
        "default": None,
        "description": "w3c_pushapi only: the subscription's keys, or their JSON text",
    }
    bind["example"] = _NAVIXY_EXAMPLE
    # The form and query-string forms carry every value as text, an object as its JSON.
    bind_as_text = {
        **bind,
        "properties": {
            **bind["properties"],
            "parameters": {"type": "string", "description": "JSON text of WebPushKeys"},
        },
    }
    spec.components.schema("NavixyBind", component=bind)
    spec.components.schema("NavixyBindForm", component=bind_as_text)
    spec.components.schema("NavixySession", schema=NavixySessionSchema)
    spec.components.schema("NavixySuccess", schema=NavixySuccessSchema)
    spec.components.schema("NavixyError", schema=NavixyErrorSchema)
    keys = spec.components.schemas["WebPushKeys"]
    keys["properties"]["p256dh"].update(
        pattern=_BASE64URL, description="base64url of a 65-byte uncompressed P-256 point"
    )
    keys["properties"]["auth"].update(pattern=_BASE64URL, description="base64url of 16 bytes")

    session = _json_schema(plugin, NavixySessionSchema)
    # The hash also comes as 'Authorization: NVX <hash>'; none at all is an
    # error the action answers (code 3), not one the document forbids.
    security: list[dict[str, list[str]]] = [{}, {"NavixyAuthorization": []}]
    # (action, operationId stem, JSON body, form body, GET parameters, summary)
    actions = [
        (
            "user/session/push_token/bind", "navixy_bind", "NavixyBind", "NavixyBindForm",
            bind_as_text, "Bind a push token to the calling session, replacing its earlier one",
        ),
        (
            "user/session/push_token/delete", "navixy_delete", "NavixySession", "NavixySession",
            session, "Remove the session's binding; succeeds when there is none",
        ),
        (
            "user/logout", "navixy_logout", "NavixySession", "NavixySession",
            session, "End the session, and its binding with it",
        ),
    ]
    for action, operation_id, json_body, form_body, query, summary in actions:
        common = {
            "tags": ["Navixy"],
            "summary": summary,
            "description": (
                f"Also served at /{action} and with a trailing slash. The hash is read from "
                "the body, then the query string, then `Authorization: NVX <hash>`. Every "
                "answer is application/json, errors too."
            ),
            "security": security,
        }
        spec.path(
            f"/v2/{action}",
            operations={
                "post": {
                    **common,
                    "operationId": f"{operation_id}_post",
                    "requestBody": {
                        "required": json_body != "NavixySession",
                        "content": {
                            JSON: {"schema": _ref(json_body)},
                            FORM: {"schema": _ref(form_body)},
                        },
                    },
                    "responses": _navixy_answers(),
                },
                "get": {
                    **common,
                    "operationId": f"{operation_id}_get",
                    "parameters": _query_parameters(query),
                    "responses": _navixy_answers(),
                },
            },
        )


# ------------------------------------------------------------ the senders' internal API

_INTERNAL_ERRORS = describe(internal.ERRORS)


def _internal_errors(*statuses: int) -> dict[str, Any]:
    return _error_answers(_INTERNAL_ERRORS, "InternalError", statuses, retry_after=False)


def _internal_paths(spec: APISpec, plugin: MarshmallowPlugin, settings_ttl: int,
                    categories: frozenset[str]) -> None:
    user_ids = {"type": "array", "items": {"type": "string", **_IDENTIFIER}}
    spec.components.schema(
        "InternalTargetsQuery",
        component=_request_schema(
            plugin,
            internal.TargetsSchema(categories),
            {
                "users": {**user_ids, "minItems": 1, "maxItems": internal.MAX_AUDIENCE},
                "exclude_users": {**user_ids, "maxItems": internal.MAX_AUDIENCE, "default": []},
                "category": {"type": "string", "enum": sorted(categories)},
            },
        ),
    )
    spec.components.schema(
        "InternalFeedback", component=_request_schema(plugin, internal.FEEDBACK_SCHEMA, {})
    )
    feedback = spec.components.schemas["InternalFeedback"]
    feedback["properties"]["feedback"]["maxItems"] = internal.MAX_FEEDBACK
    dead = spec.components.schemas["DeadToken"]
    dead["properties"]["reason"]["description"] = "; ".join(
        f"{provider.value}: {', '.join(sorted(reasons))}"
        for provider, reasons in internal.DEAD_TOKEN_REASONS.items()
    )
    spec.components.schema(
        "InternalOpenSession",
        component=_request_schema(
            plugin,
            internal.SessionSchema(settings_ttl),
            {
                "ttl": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": internal.MAX_SESSION_TTL,
                    "description": "seconds; GATEWAY_SESSION_TTL when absent",
                },
            },
        ),
    )
    for name, schema in [
        ("InternalError", InternalErrorSchema),
        ("InternalTarget", InternalTargetSchema),
        ("InternalPruned", InternalPrunedSchema),
        ("InternalOpenedSession", InternalOpenedSessionSchema),
    ]:
        spec.components.schema(name, schema=schema)
    common = {"tags": ["Internal"], "security": [{"InternalBearer": []}]}
    spec.path(
        "/internal/v1/targets",
        operations={
            "post": {
                **common,
                "operationId": "internal_find_targets",
                "summary": "The fan-out's targets: live registrations admitting the category",
                "description": "NDJSON, one InternalTarget a line, streamed as it is read.",
                "requestBody": _json_body("InternalTargetsQuery"),
                "responses": {
                    "200": {
                        "description": "One InternalTarget per line",
                        "headers": _headers(),
                        "content": {internal.NDJSON: {"schema": _ref("InternalTarget")}},
                    },
                    **_internal_errors(400, 401, 413, 500, 503),
                },
            }
        },
    )
    spec.path(
        "/internal/v1/feedback",
        operations={
            "post": {
                **common,
                "operationId": "internal_prune_dead_tokens",
                "summary": "Remove the registrations of tokens their push service reported dead",
                "requestBody": _json_body("InternalFeedback"),
                "responses": {
                    "200": _answer("How many registrations were removed", "InternalPruned"),
                    **_internal_errors(400, 401, 413, 500, 503),
                },
            }
        },
    )
    spec.path(
        "/internal/v1/sessions",
        operations={
            "post": {
                **common,
                "operationId": "internal_open_session",
                "summary": "Start a session for a user; its token is both dialects' credential",
                "requestBody": _json_body("InternalOpenSession"),
                "responses": {
                    "201": _answer("The new session", "InternalOpenedSession"),
                    **_internal_errors(400, 401, 413, 500, 503),
                },
            }
        },
    )
    spec.path(
        "/internal/v1/sessions/{token}",
        operations={
            "delete": {
                **common,
                "operationId": "internal_end_session",
                "summary": "End a session and its registrations",
                "parameters": [
                    {
                        "name": "token",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": _HEX_32},
                    }
                ],
                "responses": {
                    "204": _answer("The session has ended"),
                    **_internal_errors(400, 401, 404, 500, 503),
                },
            }
        },
    )


_NOTIFICATION_ERRORS = {
    **_INTERNAL_ERRORS,
    404: "No notification has this id",
    409: "The Idempotency-Key came with a different request before",
}


def _notification_paths(spec: APISpec, plugin: MarshmallowPlugin,
                        categories: frozenset[str]) -> None:
    user_ids = {"type": "array", "items": {"type": "string", **_IDENTIFIER}}
    spec.components.schema(
        "NotificationRequest",
        component=_request_schema(
            plugin,
            notifications.NotificationSchema(categories),
            {
                "users": {**user_ids, "minItems": 1, "maxItems": internal.MAX_AUDIENCE},
                "exclude_users": {**user_ids, "maxItems": internal.MAX_AUDIENCE, "default": []},
                "category": {"type": "string", "enum": sorted(categories)},
                "ttl": {"minimum": 1, "maximum": notifications.MAX_TTL, "default": 86400},
                "priority": {"type": "string", "enum": ["high", "normal"], "default": "high"},
            },
        ),
    )
    for name, schema in [
        ("NotificationQueued", NotificationQueuedSchema),
        ("NotificationProgress", NotificationProgressSchema),
        ("DeliveriesPage", DeliveriesPageSchema),
    ]:
        spec.components.schema(name, schema=schema)
    common = {"tags": ["Internal"], "security": [{"InternalBearer": []}]}
    notification_id = {
        "name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}
    }

    def errors(*statuses: int) -> dict[str, Any]:
        return _error_answers(_NOTIFICATION_ERRORS, "InternalError", statuses, retry_after=False)

    spec.path(
        notifications.NOTIFICATIONS,
        operations={
            "post": {
                **common,
                "operationId": "internal_send_notification",
                "summary": "Queue a message to every target of the audience; 202 once committed",
                "description": (
                    "One delivery row per target, written with the notification in one "
                    "transaction. Idempotency-Key (1 to 255 visible ASCII characters) makes a "
                    "retry answer with the first notification."
                ),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                    }
                ],
                "requestBody": _json_body("NotificationRequest"),
                "responses": {
                    "202": _answer("The notification and its target count", "NotificationQueued"),
                    **errors(400, 401, 409, 413, 500, 503),
                },
            }
        },
    )
    spec.path(
        notifications.NOTIFICATIONS + "/{id}",
        operations={
            "get": {
                **common,
                "operationId": "internal_show_notification",
                "summary": "A notification's state and its deliveries' outcomes by provider",
                "parameters": [notification_id],
                "responses": {
                    "200": _answer("Its progress", "NotificationProgress"),
                    **errors(400, 401, 404, 500, 503),
                },
            }
        },
    )
    spec.path(
        notifications.NOTIFICATIONS + "/{id}/deliveries",
        operations={
            "get": {
                **common,
                "operationId": "internal_list_deliveries",
                "summary": "A page of its deliveries, by id, of one outcome or all",
                "parameters": [
                    notification_id,
                    {
                        "name": "outcome",
                        "in": "query",
                        "schema": {"type": "string", "enum": [s.value for s in DeliveryState]},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": notifications.MAX_DELIVERIES_PAGE,
                        },
                    },
                ],
                "responses": {
                    "200": _answer("The page", "DeliveriesPage"),
                    **errors(400, 401, 404, 500, 503),
                },
            }
        },
    )


# ------------------------------------------------------------ operations


def _operator_paths(spec: APISpec) -> None:
    spec.components.schema("Health", schema=HealthSchema)
    tags = ["Operations"]
    spec.path(
        "/health/live",
        operations={
            "get": {
                "tags": tags,
                "operationId": "health_live",
                "summary": "The process answers",
                "responses": {"200": _answer("Alive", "Health")},
            }
        },
    )
    spec.path(
        "/health/ready",
        operations={
            "get": {
                "tags": tags,
                "operationId": "health_ready",
                "summary": "The database answers a query",
                "responses": {
                    "200": _answer("Ready", "Health"),
                    "503": _answer("The database is down", "Health"),
                },
            }
        },
    )
    spec.path(
        "/metrics",
        operations={
            "get": {
                "tags": tags,
                "operationId": "metrics",
                "summary": "This worker process's metrics, in the Prometheus text format",
                # Open unless GATEWAY_METRICS_TOKEN is set.
                "security": [{}, {"MetricsBearer": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus exposition format 0.0.4",
                        "headers": _headers(),
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _answer(
                        "GATEWAY_METRICS_TOKEN is set and the request lacks it",
                        "InternalError",
                        "WWW-Authenticate",
                    ),
                },
            }
        },
    )
    spec.path(
        "/openapi.json",
        operations={
            "get": {
                "tags": tags,
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "headers": _headers(),
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    )


def _webpush_paths(spec: APISpec) -> None:
    error = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    }
    spec.path(
        "/webpush/vapid-public-key",
        operations={
            "get": {
                "tags": ["Web Push"],
                "operationId": "vapid_public_key",
                "summary": "The VAPID public key web pages subscribe with (applicationServerKey)",
                "responses": {
                    "200": {
                        "description": "base64url of the 65-byte uncompressed P-256 point",
                        "headers": _headers(),
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["public_key"],
                                    "properties": {
                                        "public_key": {
                                            "type": "string",
                                            "pattern": "^[A-Za-z0-9_-]{87}$",
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "404": {
                        "description": "Web Push is not configured (GATEWAY_VAPID_PRIVATE_KEY)",
                        "headers": _headers(),
                        "content": {JSON: {"schema": error}},
                    },
                },
            }
        },
    )


# ------------------------------------------------------------ the document


def build_document(categories: frozenset[str], session_ttl: int) -> dict[str, Any]:
    """The whole document; the categories and default session lifetime are the settings'."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Push-token gateway",
        version=_version(),
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        # Relative: a client resolves it against the document's own URL, so
        # the /docs page's "Try it out" calls the gateway that served both.
        servers=[{"url": "/"}],
        info={
            "description": (
                "Registers and unregisters push tokens over the Layer Client API and the "
                "Navixy actions, and serves senders an internal API. Every response carries "
                f"{REQUEST_ID_HEADER}: the caller's when it is 1 to 128 characters of "
                "[A-Za-z0-9._-], else a new one."
            )
        },
    )
    spec.components.security_scheme(
        "LayerSession",
        {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "Layer session-token=\"<32 hex digits>\" (single quotes too)",
        },
    )
    spec.components.security_scheme(
        "NavixyAuthorization",
        {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`NVX <hash>`, one space; read when the body and query carry no hash",
        },
    )
    spec.components.security_scheme(
        "InternalBearer",
        {"type": "http", "scheme": "bearer", "description": "GATEWAY_ADMIN_TOKEN"},
    )
    spec.components.security_scheme(
        "MetricsBearer",
        {"type": "http", "scheme": "bearer", "description": "GATEWAY_METRICS_TOKEN"},
    )
    spec.components.header(
        REQUEST_ID_HEADER,
        {
            "required": True,
            "description": "The request's id, on its log lines too",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
        },
    )
    spec.components.header(
        "Retry-After", {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    )
    spec.components.header("WWW-Authenticate", {"required": True, "schema": {"type": "string"}})
    _layer_paths(spec, plugin)
    _navixy_paths(spec, plugin, categories)
    _internal_paths(spec, plugin, session_ttl, categories)
    _notification_paths(spec, plugin, categories)
    _operator_paths(spec)
    _webpush_paths(spec)
    document: dict[str, Any] = spec.to_dict()
    return document


@functools.cache
def _document_body(categories: frozenset[str], session_ttl: int) -> bytes:
    return orjson.dumps(build_document(categories, session_ttl))


async def serve_document(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.Response(
        body=_document_body(settings.categories, settings.session_ttl), content_type=JSON
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve_document, allow_head=False)
