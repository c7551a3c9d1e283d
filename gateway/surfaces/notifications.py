"""The senders' notifications under /internal/v1/: send through the queue, follow the progress.

Part of the internal API: behind its admin key, answered in its error format.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validates_schema
from marshmallow.validate import Range

from gateway.commands import (
    DeliveryState,
    FindTargets,
    ListDeliveries,
    Provider,
    Row,
    SendNotification,
    ShowNotification,
)
from gateway.delivery import apns, fcm, webpush
from gateway.delivery.providers import Push
from gateway.errors import InvalidParameters, Problem
from gateway.keys import EXECUTOR, SETTINGS
from gateway.parsing import Text, load, one_of, read_json_object, rule
from gateway.store import NotificationProgress
from gateway.surfaces.internal import MAX_TARGETS_BODY_BYTES, TargetsSchema, admin_only
from gateway.validation import has_control
from gateway.wire import Handler, Operation, json_response

NOTIFICATIONS = "/internal/v1/notifications"

DEFAULT_TTL = 86400
# What APNs and FCM keep a message for, at most.
MAX_TTL = 28 * 86400
# The audience's body plus a message and its overrides, each within 4 KiB.
MAX_NOTIFICATION_BODY_BYTES = MAX_TARGETS_BODY_BYTES + 256 * 1024
# APNs' ceiling on apns-collapse-id.
MAX_COLLAPSE_KEY_BYTES = 64
MAX_IDEMPOTENCY_KEY_LENGTH = 255
DELIVERIES_PAGE = 100
MAX_DELIVERIES_PAGE = 1000

# The APNs headers a sender may set; the gateway sets the rest itself.
APNS_HEADERS = ("apns-push-type", "apns-priority", "apns-expiration", "apns-collapse-id")


def _collapse_key(value: str) -> str:
    # It travels as an HTTP header (apns-collapse-id, Topic): no control characters.
    if not value or len(value.encode()) > MAX_COLLAPSE_KEY_BYTES or has_control(value):
        raise ValueError(f"must be 1 to {MAX_COLLAPSE_KEY_BYTES} bytes without control characters")
    return value


def _header_value(value: str) -> str:
    if not value or not all(" " <= c <= "~" for c in value):
        raise ValueError("must be printable ASCII")
    return value


def _strings() -> fields.Dict:
    """A JSON object of strings (FCM's data, the portable message's data)."""
    return fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        load_default=None,
        error_messages={"invalid": "must be an object"},
    )


class ApnsOverride(Schema):
    class Meta:
        unknown = RAISE

    aps = fields.Dict(load_default=None, error_messages={"invalid": "must be an object"})
    headers = fields.Dict(
        keys=Text(validate=one_of(APNS_HEADERS)),
        values=Text(validate=rule(_header_value)),
        load_default=None,
        error_messages={"invalid": "must be an object"},
    )


class FcmOverride(Schema):
    class Meta:
        unknown = RAISE

    android = fields.Dict(load_default=None, error_messages={"invalid": "must be an object"})
    data = _strings()


class NotificationSchema(TargetsSchema):
    """The body of POST /internal/v1/notifications: /targets' audience and the message."""

    ttl = fields.Integer(
        strict=True,
        load_default=DEFAULT_TTL,
        validate=Range(1, MAX_TTL, error="must be between {min} and {max} seconds"),
        error_messages={"invalid": "must be a whole number of seconds"},
    )
    priority = Text(load_default="high", validate=one_of(("high", "normal")))
    collapse_key = Text(load_default=None, validate=rule(_collapse_key))
    title = Text(load_default=None)
    body = Text(load_default=None)
    data = _strings()
    apns = fields.Nested(ApnsOverride, load_default=None)
    fcm = fields.Nested(FcmOverride, load_default=None)
    webpush = fields.Dict(load_default=None, error_messages={"invalid": "must be an object"})

    @validates_schema
    def something_to_send(self, data: dict[str, Any], **_: Any) -> None:
        if not any(data.get(name) for name in ("title", "body", "data", "apns", "fcm", "webpush")):
            raise ValidationError(
                "a notification needs a title, a body, data or a provider override", "body"
            )

    # Same name as TargetsSchema's hook, so that only this one runs.
    @post_load
    def make_query(self, data: dict[str, Any], **kwargs: Any) -> SendNotification:
        audience: FindTargets = super().make_query(
            {name: data[name] for name in ("users", "category", "exclude_users")}, **kwargs
        )
        message = {"title": data["title"], "body": data["body"], "data": data["data"] or {}}
        overrides = {
            provider: _without_nulls(data[provider])
            for provider in ("apns", "fcm", "webpush")
            if data[provider] is not None
        }
        command = SendNotification(
            audience=audience,
            exclude_users=tuple(dict.fromkeys(data["exclude_users"])),
            message=message,
            overrides=overrides,
            ttl_seconds=data["ttl"],
            priority=data["priority"],
            collapse_key=data["collapse_key"],
        )
        _check_sizes(command)
        return command


def _without_nulls(override: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in override.items() if value is not None}


def sample_push(command: SendNotification, provider: Provider) -> Push:
    """The Push a worker will build for ``provider``, but for the target's own fields."""
    return Push(
        delivery_id=0,
        provider=provider,
        token="",
        apns_bundle_id=None,
        gcm_sender_id=None,
        webpush_p256dh=None,
        webpush_auth=None,
        expires_at=datetime.now(UTC),
        priority=command.priority,
        collapse_key=command.collapse_key,
        # The longest id the worker will put there: a UUID's text.
        notification_id=str(uuid.UUID(int=0)),
        category=command.audience.category,
        title=command.message["title"],
        body=command.message["body"],
        data=command.message["data"],
        override=command.overrides.get(provider.value),
    )


def _largest_part(command: SendNotification) -> str:
    sizes = {
        name: len(orjson.dumps(command.message[name]))
        for name in ("title", "body", "data")
        if command.message[name]
    }
    return max(sizes, key=sizes.__getitem__) if sizes else "body"


def _check_sizes(command: SendNotification) -> None:
    """Refuse a message some provider would refuse, naming the field that makes it too large."""
    checks = [
        (Provider.APNS, "APNs payload", apns.payload_size, apns.PAYLOAD_LIMIT),
        (Provider.FCM, "FCM data", fcm.data_size, fcm.FCM_DATA_LIMIT),
        (Provider.WEBPUSH, "Web Push plaintext", webpush.plaintext_size, webpush.PLAINTEXT_LIMIT),
    ]
    problems = []
    for provider, what, size_of, limit in checks:
        size = size_of(sample_push(command, provider))
        if size > limit:
            field: str
            override = command.overrides.get(provider.value)
            if provider is Provider.FCM:
                # The FCM limit counts the data map: the override's, or the message's.
                field = "fcm" if override and "data" in override else "data"
            elif provider is Provider.APNS and override and "aps" in override:
                field = "apns"
            elif provider is Provider.WEBPUSH and override is not None:
                field = "webpush"
            else:
                field = _largest_part(command)
            problems.append(Problem(field, f"makes the {what} {size} bytes; at most {limit}"))
    if problems:
        raise InvalidParameters(problems)


class DeliveriesQuery(Schema):
    """The query string of GET /internal/v1/notifications/{id}/deliveries."""

    class Meta:
        unknown = RAISE

    outcome = Text(
        load_default=None, validate=one_of(state.value for state in DeliveryState)
    )
    after = fields.Integer(
        strict=False,
        load_default=0,
        validate=Range(0, 2**63 - 1, error="must be between {min} and {max}"),
        error_messages={"invalid": "must be a delivery id"},
    )
    limit = fields.Integer(
        strict=False,
        load_default=DELIVERIES_PAGE,
        validate=Range(1, MAX_DELIVERIES_PAGE, error="must be between {min} and {max}"),
        error_messages={"invalid": "must be a whole number"},
    )


NOTIFICATION_SCHEMA = web.AppKey("internal_notification_schema", NotificationSchema)
DELIVERIES_QUERY = DeliveriesQuery()


def _idempotency_key(request: web.Request) -> str | None:
    return check_idempotency_key(request.headers.get("Idempotency-Key"))


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not all("!" <= c <= "~" for c in key):
        raise InvalidParameters(
            [
                Problem(
                    "Idempotency-Key",
                    f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters",
                )
            ]
        )
    return key


def _notification_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise InvalidParameters([Problem("id", "must be a notification id (a UUID)")]) from None


def parse_notification(
    schema: NotificationSchema, body: dict[str, Any], idempotency_key: str | None
) -> SendNotification:
    """The command for a POST body (or the CLI's), or InvalidParameters."""
    command: SendNotification = load(schema, body)
    if idempotency_key is None:
        return command
    # The parsed body, keys sorted: a retry that re-encodes the same JSON
    # differently is still the same request.
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
    return replace(command, idempotency_key=idempotency_key, request_sha256=digest)


async def send_notification(request: web.Request) -> web.Response:
    key = _idempotency_key(request)
    body = await read_json_object(request, MAX_NOTIFICATION_BODY_BYTES)
    command = parse_notification(request.app[NOTIFICATION_SCHEMA], body, key)
    queued = await request.app[EXECUTOR].execute(command)
    return json_response(202, {"id": str(queued.id), "targets": queued.targets})


def progress_document(progress: NotificationProgress) -> dict[str, Any]:
    """GET /internal/v1/notifications/{id}'s answer (and the CLI's)."""
    empty = {state.value: 0 for state in DeliveryState}
    counts = dict(empty)
    by_provider: dict[str, dict[str, int]] = {}
    for provider, state, n in progress.counts:
        counts[state] += n
        by_provider.setdefault(provider, dict(empty))[state] += n
    row = progress.notification
    failures = [
        {"provider": f["provider"], "error": f["last_error"], "count": f["n"]}
        for f in progress.failures
    ]
    return {
        "id": str(row["id"]),
        "state": "pending" if counts["pending"] else "done",
        "targets": row["targets"],
        "counts": counts,
        "by_provider": by_provider,
        "last_error": failures[0]["error"] if failures else None,
        "errors": failures,
        "category": row["category"],
        "priority": row["priority"],
        "collapse_key": row["collapse_key"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
    }


async def show_notification(request: web.Request) -> web.Response:
    executor = request.app[EXECUTOR]
    progress = await executor.execute(ShowNotification(_notification_id(request)))
    return json_response(200, progress_document(progress))


def delivery_document(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user": row["user_id"],
        "provider": row["provider"],
        "token": row["token"],
        "outcome": row["state"],
        "attempts": row["attempts"],
        "status": row["last_status"],
        "error": row["last_error"],
        "next_attempt_at": row["next_attempt_at"] if row["state"] == "pending" else None,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
    }


async def list_deliveries(request: web.Request) -> web.Response:
    notification_id = _notification_id(request)
    query = load(DELIVERIES_QUERY, dict(request.query))
    outcome = query["outcome"]
    rows = await request.app[EXECUTOR].execute(
        ListDeliveries(
            notification_id=notification_id,
            outcome=None if outcome is None else DeliveryState(outcome),
            after=query["after"],
            limit=query["limit"],
        )
    )
    page = [delivery_document(row) for row in rows]
    # A full page may have more behind it: the next one starts after its last id.
    after = page[-1]["id"] if len(page) == query["limit"] else None
    return json_response(200, {"deliveries": page, "next_after": after})


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", NOTIFICATIONS, send_notification),
    ("GET", NOTIFICATIONS + "/{id}", show_notification),
    ("GET", NOTIFICATIONS + "/{id}/deliveries", list_deliveries),
]

_NOTIFICATION_ID = (("id", {"type": "string", "format": "uuid"}),)

# The routes above as the OpenAPI document tells them; behind the admin key,
# they answer the internal API's errors.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", NOTIFICATIONS, "internal_send_notification",
        "Queue a message to every target of the audience; 202 once committed",
        202, "The notification and its target count", "NotificationQueued",
        errors=(400, 401, 409, 413, 500, 503),
        description=(
            "One delivery row per target, written with the notification in one "
            f"transaction. Idempotency-Key (1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII "
            "characters) makes a retry answer with the first notification."
        ),
        body="NotificationRequest",
        headers=(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {
                    "type": "string",
                    "pattern": f"^[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}$",
                },
            },
        ),
    ),
    Operation(
        "get", NOTIFICATIONS + "/{id}", "internal_show_notification",
        "A notification's state and its deliveries' outcomes by provider",
        200, "Its progress", "NotificationProgress",
        errors=(400, 401, 404, 500, 503),
        path_parameters=_NOTIFICATION_ID,
    ),
    Operation(
        "get", NOTIFICATIONS + "/{id}/deliveries", "internal_list_deliveries",
        "A page of its deliveries, by id, of one outcome or all",
        200, "The page", "DeliveriesPage",
        errors=(400, 401, 404, 500, 503),
        path_parameters=_NOTIFICATION_ID,
        query=DELIVERIES_QUERY,
    ),
)


def setup_routes(app: web.Application) -> None:
    """Before the internal API's own routes, whose catch-all would otherwise answer these."""
    app[NOTIFICATION_SCHEMA] = NotificationSchema(app[SETTINGS].categories)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, admin_only(handler))
