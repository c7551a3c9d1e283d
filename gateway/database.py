"""Finds the database: DATABASE_URL when given, else an embedded PostgreSQL in the data dir."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

# Kept alive for the life of the process: pgserver stops the embedded server
# when the last process holding a handle exits.
_embedded: list[Any] = []


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir`` and return its DSN.

    pgserver ships a real PostgreSQL in its wheel and listens on a Unix socket
    only, so a fresh machine needs nothing but Python.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers);
        # pgserver then falls back to /tmp, which is what we want.
        warnings.simplefilter("ignore")
        import pgserver

        # pgserver narrates every start-up step at INFO.
        logging.getLogger("pgserver").setLevel(logging.WARNING)

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(  # type: ignore[attr-defined]
            data_dir.resolve() / "postgres", cleanup_mode="stop"
        )
    _embedded.append(server)
    dsn: str = server.get_uri("postgres")
    return dsn


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    if database_url:
        return database_url
    dsn = start_embedded(data_dir)
    log.info("using the embedded PostgreSQL in %s", data_dir / "postgres")
    return dsn


def redact(dsn: str) -> str:
    """The DSN with its password hidden, for log lines."""
    parts = urlsplit(dsn)
    if not parts.password:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
