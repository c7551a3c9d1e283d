"""The OpenAPI 3.1 document of every dialect, built from the surfaces' marshmallow schemas."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from gateway import health
from gateway.config import DEFAULT_LAYER_VERSIONS
from gateway.keys import SETTINGS
from gateway.observability import REQUEST_ID_HEADER, metrics
from gateway.surfaces import internal, layer, navixy, notifications, vapid
from gateway.wire import SESSION_TOKEN_PATTERN, Operation, describe

OPENAPI_VERSION = "3.1.0"

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# The patterns the document states beside the surfaces' own fields are
# ECMA-262, as JSON Schema reads them; gateway.validation's code stays the authority.
_HEX_32 = SESSION_TOKEN_PATTERN

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


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in (REQUEST_ID_HEADER, *names)}


def _answer(description: str, schema: str | None = None, *headers: str) -> dict[str, Any]:
    return _declared_answer(description, schema, JSON, *headers)


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


def _declared_answer(
    description: str, schema: str | dict[str, Any] | None, media_type: str, *headers: str
) -> dict[str, Any]:
    """An answer as an Operation declares it: its schema a component's name or inline."""
    answer: dict[str, Any] = {"description": description, "headers": _headers(*headers)}
    if schema is not None:
        answer["content"] = {
            media_type: {"schema": _ref(schema) if isinstance(schema, str) else schema}
        }
    return answer


def _no_errors(*statuses: int) -> dict[str, Any]:
    """For operations that answer from no error table."""
    if statuses:
        raise ValueError(f"statuses {statuses} name no error table")
    return {}


def _operation(
    plugin: MarshmallowPlugin,
    operation: Operation,
    *,
    tags: list[str],
    security: list[dict[str, list[str]]],
    parameters: list[dict[str, Any]],
    errors: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """One declared operation as the document's Operation Object."""
    success = _declared_answer(operation.answer, operation.answer_schema, operation.media_type)
    others = {
        str(status): _declared_answer(
            description, schema, JSON, *(("WWW-Authenticate",) if status == 401 else ())
        )
        for status, description, schema in operation.other_answers
    }
    document: dict[str, Any] = {
        "tags": tags,
        "operationId": operation.operation_id,
        "summary": operation.summary,
    }
    if operation.description is not None:
        document["description"] = operation.description
    if operation.authenticated:
        document["security"] = security
    path_parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in operation.path_parameters
    ]
    query = []
    if operation.query is not None:
        if plugin.converter is None:
            raise RuntimeError("the MarshmallowPlugin is not attached to an APISpec")
        query = [
            _without_null(parameter)
            for parameter in plugin.converter.schema2parameters(
                operation.query, location="query"
            )
        ]
    every = [*parameters, *path_parameters, *operation.headers, *query]
    if every:
        document["parameters"] = every
    if operation.body is not None:
        document["requestBody"] = _json_body(operation.body)
    document["responses"] = {
        str(operation.status): success, **errors(*operation.errors), **others
    }
    return document


def _without_null(parameter: dict[str, Any]) -> dict[str, Any]:
    """A query parameter as a query string carries it: absent, never null."""
    schema = dict(parameter["schema"])
    if schema.get("default", ...) is None:
        del schema["default"]
    if isinstance(schema.get("type"), list):
        kinds = [kind for kind in schema["type"] if kind != "null"]
        schema["type"] = kinds[0] if len(kinds) == 1 else kinds
    if "enum" in schema:
        schema["enum"] = [value for value in schema["enum"] if value is not None]
    return {**parameter, "schema": schema}


def _declared_paths(
    spec: APISpec, plugin: MarshmallowPlugin, operations: tuple[Operation, ...], **shared: Any
) -> None:
    """A surface's declared operations, grouped by path in their order."""
    by_path: dict[str, dict[str, Any]] = {}
    for operation in operations:
        by_path.setdefault(operation.path, {})[operation.method] = _operation(
            plugin, operation, **shared
        )
    for path, methods in by_path.items():
        spec.path(path, operations=methods)


def _layer_paths(spec: APISpec, plugin: MarshmallowPlugin) -> None:
    spec.components.schema(
        "LayerRegister",
        component=_json_schema(plugin, layer.REGISTER_SCHEMA)
        | {"example": _LAYER_EXAMPLE},
    )
    spec.components.schema("LayerError", schema=LayerErrorSchema)
    spec.components.schema("LayerRegistration", schema=LayerRegistrationSchema)
    spec.components.schema("LayerLogIn", schema=LayerLogInSchema)
    _declared_paths(
        spec,
        plugin,
        layer.OPERATIONS,
        tags=["Layer"],
        security=[{"LayerSession": []}],
        parameters=[_layer_accept()],
        errors=_layer_errors,
    )


# ------------------------------------------------------------ the Navixy dialect

# Every Navixy error but a 200 answer's, from the table its renderer reads.
_NAVIXY_ERRORS = describe(navixy.ERRORS)


def _navixy_answers(operation: Operation) -> dict[str, Any]:
    schema = operation.answer_schema
    if not isinstance(schema, str):
        raise ValueError(f"{operation.operation_id} answers no component")
    answers = {str(operation.status): _answer(operation.answer, schema)}
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
    bind = _json_schema(plugin, navixy.BindSchema(categories))
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

    # The form and GET forms of each action, by its JSON body's component.
    as_text = {
        "NavixyBind": ("NavixyBindForm", bind_as_text),
        "NavixySession": ("NavixySession", _json_schema(plugin, NavixySessionSchema)),
    }
    # The hash also comes as 'Authorization: NVX <hash>'; none at all is an
    # error the action answers (code 3), not one the document forbids.
    security: list[dict[str, list[str]]] = [{}, {"NavixyAuthorization": []}]
    for operation in navixy.OPERATIONS:
        if operation.body is None:
            raise ValueError(f"{operation.operation_id} declares no body")
        action = operation.path.removeprefix("/v2/")
        form_body, query = as_text[operation.body]
        common = {
            "tags": ["Navixy"],
            "summary": operation.summary,
            "description": (
                f"Also served at /{action} and with a trailing slash. The hash is read from "
                "the body, then the query string, then `Authorization: NVX <hash>`. Every "
                "answer is application/json, errors too."
            ),
            "security": security,
        }
        spec.path(
            operation.path,
            operations={
                "post": {
                    **common,
                    "operationId": f"{operation.operation_id}_post",
                    "requestBody": {
                        # Only the session's hash is asked, and it may come otherwise.
                        "required": operation.body != "NavixySession",
                        "content": {
                            JSON: {"schema": _ref(operation.body)},
                            FORM: {"schema": _ref(form_body)},
                        },
                    },
                    "responses": _navixy_answers(operation),
                },
                "get": {
                    **common,
                    "operationId": f"{operation.operation_id}_get",
                    "parameters": _query_parameters(query),
                    "responses": _navixy_answers(operation),
                },
            },
        )

# ------------------------------------------------------------ the senders' internal API

_INTERNAL_ERRORS = describe(internal.ERRORS)


def _internal_errors(*statuses: int) -> dict[str, Any]:
    return _error_answers(_INTERNAL_ERRORS, "InternalError", statuses, retry_after=False)


def _internal_paths(spec: APISpec, plugin: MarshmallowPlugin, settings_ttl: int,
                    categories: frozenset[str]) -> None:
    spec.components.schema(
        "InternalTargetsQuery",
        component=_json_schema(plugin, internal.TargetsSchema(categories)),
    )
    spec.components.schema(
        "InternalFeedback", component=_json_schema(plugin, internal.FEEDBACK_SCHEMA)
    )
    spec.components.schema(
        "InternalOpenSession", component=_json_schema(plugin, internal.SessionSchema(settings_ttl))
    )
    for name, schema in [
        ("InternalError", InternalErrorSchema),
        ("InternalTarget", InternalTargetSchema),
        ("InternalPruned", InternalPrunedSchema),
        ("InternalOpenedSession", InternalOpenedSessionSchema),
    ]:
        spec.components.schema(name, schema=schema)
    _declared_paths(
        spec,
        plugin,
        internal.OPERATIONS,
        tags=["Internal"],
        security=[{"InternalBearer": []}],
        parameters=[],
        errors=_internal_errors,
    )


_NOTIFICATION_ERRORS = {
    **_INTERNAL_ERRORS,
    404: "No notification has this id",
    409: "The Idempotency-Key came with a different request before",
}


def _notification_paths(spec: APISpec, plugin: MarshmallowPlugin,
                        categories: frozenset[str]) -> None:
    spec.components.schema(
        "NotificationRequest",
        component=_json_schema(plugin, notifications.NotificationSchema(categories)),
    )
    for name, schema in [
        ("NotificationQueued", NotificationQueuedSchema),
        ("NotificationProgress", NotificationProgressSchema),
        ("DeliveriesPage", DeliveriesPageSchema),
    ]:
        spec.components.schema(name, schema=schema)

    def errors(*statuses: int) -> dict[str, Any]:
        return _error_answers(_NOTIFICATION_ERRORS, "InternalError", statuses, retry_after=False)

    _declared_paths(
        spec,
        plugin,
        notifications.OPERATIONS,
        tags=["Internal"],
        security=[{"InternalBearer": []}],
        parameters=[],
        errors=errors,
    )


# ------------------------------------------------------------ operations


# This document's own route, declared beside it.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/openapi.json", "openapi", "This document",
        200, "OpenAPI 3.1", {"type": "object"},
        authenticated=False,
    ),
)


def _operator_paths(spec: APISpec, plugin: MarshmallowPlugin) -> None:
    spec.components.schema("Health", schema=HealthSchema)
    operations = (*health.OPERATIONS, *metrics.OPERATIONS, *OPERATIONS)
    _declared_paths(
        spec,
        plugin,
        operations,
        tags=["Operations"],
        # Open unless GATEWAY_METRICS_TOKEN is set.
        security=[{}, {"MetricsBearer": []}],
        parameters=[],
        errors=_no_errors,
    )
    _declared_paths(
        spec,
        plugin,
        vapid.OPERATIONS,
        tags=["Web Push"],
        security=[],
        parameters=[],
        errors=_no_errors,
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
    _operator_paths(spec, plugin)
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
