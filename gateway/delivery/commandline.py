"""`gateway deliver` (workers alone) and `gateway notify` (send and follow, for operators)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from dataclasses import replace
from typing import Any

import orjson

from gateway.commands import DeliveryState, ListDeliveries, ShowNotification
from gateway.config import ConfigError, Settings
from gateway.errors import GatewayError, InvalidParameters, NotificationNotFound


def add_parsers(commands: Any) -> None:
    """The two commands' parsers, on the gateway's subparsers."""
    deliver = commands.add_parser(
        "deliver", help="run delivery workers only (no HTTP), until SIGTERM or SIGINT"
    )
    deliver.add_argument(
        "--workers", type=int, help="workers in this process (GATEWAY_DELIVERY_WORKERS, else 1)"
    )

    notify = commands.add_parser("notify", help="send a notification or follow one")
    actions = notify.add_subparsers(dest="notify_command", required=True)
    send = actions.add_parser("send", help="queue a notification; prints {id, targets}")
    send.add_argument("--users", required=True, help="comma-separated user ids")
    send.add_argument("--category", required=True)
    send.add_argument("--exclude-users", default="", help="comma-separated user ids")
    send.add_argument("--title")
    send.add_argument("--body")
    send.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    send.add_argument("--ttl", type=int, help="seconds (default 1 day, at most 28 days)")
    send.add_argument("--priority", choices=("high", "normal"))
    send.add_argument("--collapse-key")
    send.add_argument("--idempotency-key")
    send.add_argument(
        "--json",
        metavar="FILE",
        help="the whole POST body as JSON (- for stdin); the other options are added to it",
    )
    show = actions.add_parser("show", help="a notification's state and counts, as JSON")
    show.add_argument("id")
    failed = actions.add_parser("failed", help="its failed deliveries, one JSON object a line")
    failed.add_argument("id")


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _body(arguments: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if arguments.json:
        if arguments.json == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(arguments.json, "rb") as file:
                raw = file.read()
        loaded = orjson.loads(raw)
        if not isinstance(loaded, dict):
            raise ValueError("--json must hold a JSON object")
        body.update(loaded)
    body["users"] = _split(arguments.users)
    body["category"] = arguments.category
    if arguments.exclude_users:
        body["exclude_users"] = _split(arguments.exclude_users)
    for name in ("title", "body", "ttl", "priority", "collapse_key"):
        value = getattr(arguments, name)
        if value is not None:
            body[name] = value
    if arguments.data:
        data = dict(body.get("data") or {})
        for pair in arguments.data:
            key, equals, value = pair.partition("=")
            if not equals:
                raise ValueError(f"--data takes KEY=VALUE, got {pair!r}")
            data[key] = value
        body["data"] = data
    return body


async def _notify(settings: Settings, arguments: argparse.Namespace) -> str:
    from gateway.store import Store, create_pool
    from gateway.surfaces import notifications

    assert settings.database_url is not None
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        store = Store(pool)
        if arguments.notify_command == "send":
            command = notifications.parse_notification(
                notifications.NotificationSchema(settings.categories),
                _body(arguments),
                notifications.check_idempotency_key(arguments.idempotency_key),
            )
            queued = await store.enqueue_notification(command)
            return orjson.dumps({"id": str(queued.id), "targets": queued.targets}).decode()
        try:
            notification = uuid.UUID(arguments.id)
        except ValueError:
            raise ValueError("the id must be a notification id (a UUID)") from None
        if arguments.notify_command == "show":
            progress = await store.show_notification(ShowNotification(notification))
            document = notifications.progress_document(progress)
            return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
        lines = []
        after = 0
        while True:
            rows = await store.list_deliveries(
                ListDeliveries(notification, DeliveryState.FAILED, after, 1000)
            )
            lines += [orjson.dumps(notifications.delivery_document(r)).decode() for r in rows]
            if len(rows) < 1000:
                return "\n".join(lines)
            after = rows[-1]["id"]
    finally:
        await pool.close()


def notify(settings: Settings, arguments: argparse.Namespace) -> int:
    try:
        output = asyncio.run(_notify(settings, arguments))
    except InvalidParameters as exc:
        for problem in exc.problems:
            print(f"gateway: {problem.parameter}: {problem.message}", file=sys.stderr)
        return 2
    except NotificationNotFound:
        print("gateway: no notification has this id", file=sys.stderr)
        return 1
    except (GatewayError, ValueError, OSError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


async def _deliver(settings: Settings) -> int:
    from gateway.delivery.worker import running_workers
    from gateway.store import apply_schema

    assert settings.database_url is not None
    await apply_schema(settings.database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_workers(settings) as workers:
        if not workers:
            print(
                "gateway: no push provider is configured (GATEWAY_APNS_KEY_FILE,"
                " GATEWAY_FCM_CREDENTIALS or GATEWAY_VAPID_PRIVATE_KEY)",
                file=sys.stderr,
            )
            return 2
        await stop.wait()
    return 0


def deliver(settings: Settings, arguments: argparse.Namespace) -> int:
    count = arguments.workers or settings.delivery_workers or 1
    if not 1 <= count <= 64:
        print("gateway: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    import uvloop

    try:
        return uvloop.run(_deliver(replace(settings, delivery_workers=count)))
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
