"""The command line: serve, migrate, and session create/revoke, all on the same database;
vapid keygen, which needs none."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.config import ConfigError, Settings, check_whole
from gateway.delivery import commandline as delivery_commands
from gateway.embedded import redact, resolve_database_url
from gateway.errors import GatewayError, SessionNotFound
from gateway.validation import MAX_SESSION_TTL

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Push-token gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve both API dialects over HTTP")
    serve.add_argument("--host", help="address to listen on (GATEWAY_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (GATEWAY_PORT)")
    serve.add_argument(
        "--workers", type=int, help="processes sharing the port with SO_REUSEPORT (GATEWAY_WORKERS)"
    )

    commands.add_parser("migrate", help="apply schema.sql (idempotent)")
    delivery_commands.add_parsers(commands)

    session = commands.add_parser("session", help="create or revoke sessions")
    session_commands = session.add_subparsers(dest="session_command", required=True)
    create = session_commands.add_parser("create", help="print a new session token for USER")
    create.add_argument("user")
    create.add_argument("--ttl", type=int, help="lifetime in seconds (GATEWAY_SESSION_TTL)")
    revoke = session_commands.add_parser("revoke", help="end a session and its registrations")
    revoke.add_argument("token")

    layer = commands.add_parser("layer", help="Layer's authentication handshake, for development")
    layer_commands = layer.add_subparsers(dest="layer_command", required=True)
    keygen = layer_commands.add_parser(
        "keygen", help="write an RSA key pair: DIR/identity-key.pem and DIR/identity-keys.json"
    )
    keygen.add_argument("directory")
    identity = layer_commands.add_parser(
        "identity-token", help="print an identity token for USER over NONCE, signed with --key"
    )
    identity.add_argument("user")
    identity.add_argument("nonce")
    identity.add_argument("--key", required=True, help="the private key PEM that keygen wrote")
    identity.add_argument(
        "--issuer", help="the provider id, the token's iss (GATEWAY_LAYER_PROVIDER_ID)"
    )
    vapid = commands.add_parser("vapid", help="Web Push VAPID keys")
    vapid_commands = vapid.add_subparsers(dest="vapid_command", required=True)
    vapid_keygen = vapid_commands.add_parser(
        "keygen",
        help="write a new P-256 private key (PEM, PKCS#8) at PATH and print its public key"
        " (base64url, the form browsers take as applicationServerKey)",
    )
    vapid_keygen.add_argument("path")
    return parser


def _layer(arguments: argparse.Namespace, provider_id: str | None) -> int:
    """The two commands that stand in for Layer's dashboard and an app's backend."""
    from pathlib import Path

    from gateway.layer_auth import IdentityKeyError, generate_key_pair, sign_identity_token

    if arguments.layer_command == "keygen":
        try:
            pem, jwks = generate_key_pair(Path(arguments.directory))
        except FileExistsError as exc:
            print(f"gateway: {exc.filename} exists; keygen never overwrites a key", file=sys.stderr)
            return 1
        print(f"private key: {pem}\npublic keys (GATEWAY_LAYER_IDENTITY_KEYS): {jwks}")
        return 0
    issuer = arguments.issuer or provider_id
    if not issuer:
        print("gateway: give --issuer or set GATEWAY_LAYER_PROVIDER_ID", file=sys.stderr)
        return 2
    try:
        pem_bytes = Path(arguments.key).read_bytes()
        print(sign_identity_token(pem_bytes, arguments.user, arguments.nonce, issuer))
    except OSError as exc:
        print(f"gateway: cannot read {arguments.key}: {exc.strerror}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, IdentityKeyError) as exc:
        print(f"gateway: {arguments.key} is not an RSA private key PEM: {exc}", file=sys.stderr)
        return 1
    return 0


def _vapid_keygen(path: str) -> int:
    from pathlib import Path

    from gateway.delivery.webpush import generate_vapid_key

    try:
        print(generate_vapid_key(Path(path)))
    except FileExistsError:
        # Every subscription was made with the old key: replacing it silently would orphan them.
        print(f"gateway: {path} exists; not overwriting a VAPID key", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gateway: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


async def _migrate(dsn: str) -> None:
    from gateway.store import apply_schema

    await apply_schema(dsn)


async def _with_store(dsn: str, action: str, argument: str, ttl: int) -> str:
    from gateway.commands import SessionRef
    from gateway.store import Store, create_pool
    from gateway.validation import check_identifier

    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        store = Store(pool)
        if action == "create":
            return await store.create_session(check_identifier(argument), ttl)
        await store.end_session(SessionRef.from_token(argument.strip().lower()))
        return ""
    finally:
        await pool.close()


def _serve_one(settings: Settings, buckets_name: str | None = None, lock: Any = None) -> None:
    """One server process: its own event loop, pool and group-commit writer.

    Workers attach the parent's rate-limit buckets, so a session's limit holds
    across all of them.
    """
    import uvloop

    from gateway import protocol
    from gateway.app import create_app
    from gateway.gc_tuning import tune_after_startup
    from gateway.observability import AccessLogger, setup_logging
    from gateway.ratelimit import RateLimiter, SharedBuckets

    setup_logging(logging.INFO)
    # Fails here, before the port is bound, if aiohttp changed what it overrides.
    protocol.install()
    buckets = SharedBuckets(buckets_name) if buckets_name else None
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst, buckets, lock)
    app = create_app(settings, limiter)
    # Last of the start-up hooks: the pools and caches made there are frozen too.
    app.on_startup.append(tune_after_startup)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        # Every process binds the same port; the kernel spreads connections.
        reuse_port=settings.workers > 1,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        # Route templates, never raw paths or query strings: those carry session tokens.
        access_log_class=AccessLogger,
        print=None,
        loop=uvloop.new_event_loop(),
        # SIGTERM: stop accepting, let in-flight requests finish (their writes
        # commit), then drain the write queue in the app's cleanup.
        shutdown_timeout=30,
    )


def _serve(settings: Settings) -> int:
    asyncio.run(_migrate(settings.database_url or ""))
    log.info(
        "serving on http://%s:%d with %d worker(s)", settings.host, settings.port, settings.workers
    )
    if settings.workers == 1:
        _serve_one(settings)
        return 0
    # spawn, not fork: a worker must not inherit the parent's handle on the
    # embedded database (or its exit hooks).
    from gateway.ratelimit import SharedBuckets

    context = multiprocessing.get_context("spawn")
    buckets = SharedBuckets()
    lock = context.Lock()
    workers = [
        context.Process(
            target=_serve_one,
            args=(settings, buckets.name, lock),
            name=f"gateway-worker-{number}",
        )
        for number in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, _: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for worker in workers:
            worker.join()
    finally:
        buckets.close(unlink=True)
        del lock
        _stop_resource_tracker()
    return max((worker.exitcode or 0) for worker in workers)


def _stop_resource_tracker() -> None:
    # The shared buckets and the lock start multiprocessing's resource tracker,
    # a process that would otherwise exit only after it sees this one gone: a
    # supervisor that waits for the parent would find it still running. Its
    # stop is private API, hence the getattr; without it, it exits a moment later.
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if callable(stop):
        stop()


def main(argv: Sequence[str] | None = None) -> int:
    from gateway.observability import setup_logging

    arguments = _parser().parse_args(argv)
    setup_logging(logging.INFO)
    if arguments.command == "layer":
        # Neither needs the database or the gateway's settings: keygen is
        # what one runs before GATEWAY_LAYER_IDENTITY_KEYS names a file.
        return _layer(arguments, os.environ.get("GATEWAY_LAYER_PROVIDER_ID"))
    if arguments.command == "vapid":
        # Before the settings: GATEWAY_VAPID_PRIVATE_KEY may name the file about to be made.
        return _vapid_keygen(arguments.path)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if arguments.command == "serve":
        try:
            settings = replace(
                settings,
                host=arguments.host or settings.host,
                port=(
                    settings.port
                    if arguments.port is None
                    else check_whole("port", arguments.port, "--port")
                ),
                workers=(
                    settings.workers
                    if arguments.workers is None
                    else check_whole("workers", arguments.workers, "--workers")
                ),
            )
        except ConfigError as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            return 2
    dsn = resolve_database_url(settings.database_url, settings.data_dir)
    settings = replace(settings, database_url=dsn)
    log.info("database: %s", redact(dsn))

    if arguments.command == "serve":
        return _serve(settings)
    if arguments.command == "migrate":
        asyncio.run(_migrate(dsn))
        return 0
    if arguments.command == "deliver":
        return delivery_commands.deliver(settings, arguments)
    if arguments.command == "notify":
        return delivery_commands.notify(settings, arguments)
    try:
        if arguments.session_command == "create":
            ttl = settings.session_ttl if arguments.ttl is None else arguments.ttl
            if not 1 <= ttl <= MAX_SESSION_TTL:
                print(
                    f"gateway: --ttl must be between 1 and {MAX_SESSION_TTL} seconds",
                    file=sys.stderr,
                )
                return 2
            print(asyncio.run(_with_store(dsn, "create", arguments.user, ttl)))
        else:
            asyncio.run(_with_store(dsn, "revoke", arguments.token, 0))
    except SessionNotFound:
        print("gateway: no such live session", file=sys.stderr)
        return 1
    except (GatewayError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0
