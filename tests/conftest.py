"""Fixtures: a throwaway database per test run, built from schema.sql; the app via its factory."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway import protocol
from gateway.app import create_app
from gateway.config import Settings
from gateway.embedded import resolve_database_url
from gateway.keys import EXECUTOR
from gateway.store import apply_schema

ROOT = Path(__file__).resolve().parent.parent

LAYER_ACCEPT = "application/vnd.layer+json; version=1.0"

ClientFactory = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of its own for this run: DATABASE_URL's server, or the embedded one."""
    admin_dsn = resolve_database_url(os.environ.get("DATABASE_URL"), ROOT / ".data")
    name = f"gateway_test_{secrets.token_hex(4)}"
    asyncio.run(_create_database(admin_dsn, name))
    dsn = _with_database(admin_dsn, name)
    try:
        asyncio.run(apply_schema(dsn))
        yield dsn
    finally:
        asyncio.run(_drop_database(admin_dsn, name))


@pytest.fixture(autouse=True, scope="session")
def gateway_protocol() -> None:
    """Every test's server answers as `gateway serve` does (gateway.protocol)."""
    protocol.install()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for asserting on what the gateway stored; every test starts empty."""
    connection = await asyncpg.connect(database_url)
    await connection.execute("TRUNCATE registrations, sessions")
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, settings: Settings, db: asyncpg.Connection
) -> TestClient:  # type: ignore[type-arg]
    return await aiohttp_client(create_app(settings))


SessionFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def new_session(client: TestClient) -> SessionFactory:  # type: ignore[type-arg]
    """Mints a session token for a user, as `gateway session create` does."""

    async def mint(user: str = "alice", ttl: int = 3600) -> str:
        token: str = await client.app[EXECUTOR].store.create_session(user, ttl)
        return token

    return mint


def layer_headers(token: str | None = None, accept: str | None = LAYER_ACCEPT) -> dict[str, str]:
    headers = {}
    if accept is not None:
        headers["Accept"] = accept
    if token is not None:
        headers["Authorization"] = f'Layer session-token="{token}"'
    return headers
