"""The embedded PostgreSQL (pgserver), and finding the database: DATABASE_URL when given, else
the embedded one in the data dir."""

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
    _tune(server)
    dsn: str = server.get_uri("postgres")
    return dsn


# registrations is rewritten all day (every re-registration is a non-HOT
# update: the token is indexed), and each dead row version is one more heap
# visit on every key lookup until vacuum removes it. The default one-minute
# naptime let a batch cost three times what it does on a vacuumed table;
# schema.sql asks for registrations to be vacuumed after 1,000 dead rows, and
# this lets autovacuum look that often. README: do the same on your server.
AUTOVACUUM_NAPTIME = "2s"
# Whole statements, no text spliced in: ALTER SYSTEM takes no parameters.
SHOW_AUTOVACUUM_NAPTIME = "SHOW autovacuum_naptime;"
SET_AUTOVACUUM_NAPTIME = "ALTER SYSTEM SET autovacuum_naptime = '2s';"
RELOAD_CONFIGURATION = "SELECT pg_reload_conf();"


def _tune(server: Any) -> None:
    if AUTOVACUUM_NAPTIME not in server.psql(SHOW_AUTOVACUUM_NAPTIME).split():
        server.psql(SET_AUTOVACUUM_NAPTIME)
        server.psql(RELOAD_CONFIGURATION)


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
