"""What the surfaces share on the wire: handler type, session token, JSON answer, error tables."""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from marshmallow import Schema

from gateway.commands import SessionRef
from gateway.errors import GatewayError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def methods_elsewhere(
    request: web.Request, within: Callable[[str], bool] | None = None
) -> set[str]:
    """The methods other routes serve at this request's path, for a catch-all to
    answer 405 where aiohttp's router would have (``within``: only their paths)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue
        if within is None or within(resource.canonical):
            allowed |= (await resource.resolve(request))[1]
    return allowed

# A session token as the gateway mints it (secrets.token_hex(16)); either case
# is accepted, and it is kept by the digest of its lowercase form.
SESSION_TOKEN = re.compile(r"[0-9a-fA-F]{32}")


def session_from_token(value: object) -> SessionRef | None:
    """The session a presented token names, or None when it is not one's form."""
    return _session_of(value) if isinstance(value, str) else None


# A client presents the same token on every request, and its session (the
# form check and the SHA-256) is a pure function of it: kept in a small LRU
# per process. The tokens stay in this process's memory, as each request's do
# while it runs; only their digests leave it.
@functools.lru_cache(maxsize=4096)
def _session_of(value: str) -> SessionRef | None:
    if not SESSION_TOKEN.fullmatch(value):
        return None
    return SessionRef.from_token(value.lower())


def json_response(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class Detail(enum.Enum):
    """What a row's message makes of the error's own text (always our wording, never input)."""

    NONE = enum.auto()
    # The error's own text when it has one, else the row's message.
    OWN = enum.auto()
    # The row's message, then the error's own text after a colon.
    REASON = enum.auto()


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One row of a surface's error table: a domain error as that dialect tells it.

    The renderer and the OpenAPI document both read the table, so what the
    document promises is what the surface answers.
    """

    kind: type[GatewayError]
    status: int
    code: int | str
    message: str
    # Layer's error id; the other dialects have none.
    id: str | None = None
    detail: Detail = Detail.NONE

    def message_for(self, exc: GatewayError) -> str:
        text = str(exc)
        if self.detail is Detail.OWN and text:
            return text
        if self.detail is Detail.REASON:
            return f"{self.message}: {text}"
        return self.message


ErrorTable = tuple[ErrorRow, ...]


def row_for(table: ErrorTable, exc: GatewayError) -> ErrorRow:
    """The first row whose kind ``exc`` is; every table ends with GatewayError's."""
    for row in table:
        if isinstance(exc, row.kind):
            return row
    raise LookupError(f"no error row for {type(exc).__name__}")


def describe(table: ErrorTable) -> dict[int, str]:
    """Per status, what answers it (for the OpenAPI document), in the table's order."""
    lines: dict[int, list[str]] = {}
    for row in table:
        name = f"{row.id}, code {row.code}" if row.id else f"code {row.code}"
        text = f"`{row.message}`"
        if row.detail is Detail.OWN:
            text += " or the refusal's own reason"
        elif row.detail is Detail.REASON:
            text += " and the check refused"
        line = f"{text} ({name})"
        if line not in lines.setdefault(row.status, []):
            lines[row.status].append(line)
    return {status: "; ".join(lines[status]) for status in sorted(lines)}


# A path parameter's schema when it is a session token, as JSON Schema reads it.
SESSION_TOKEN_PATTERN = f"^{SESSION_TOKEN.pattern}$"


@dataclass(frozen=True, slots=True)
class Operation:
    """One route as the OpenAPI document tells it, declared beside the route it describes.

    The surface's route table stays the authority on what is served;
    gateway.openapi walks these records and adds what every operation of the
    surface shares (tag, security, headers, error schema).
    """

    method: str
    path: str
    operation_id: str
    summary: str
    # The success answer: its status, its description, and its JSON schema
    # (a component's name, an inline schema, or None for no body).
    status: int
    answer: str
    answer_schema: str | dict[str, Any] | None = None
    # The statuses of the surface's error table this operation can answer.
    errors: tuple[int, ...] = ()
    description: str | None = None
    # A component's name: the operation's required JSON request body.
    body: str | None = None
    # Path parameters: name and JSON schema.
    path_parameters: tuple[tuple[str, dict[str, Any]], ...] = ()
    # Whether the caller must present the surface's session credential.
    authenticated: bool = True
    # Header parameters, as the document's Parameter Objects.
    headers: tuple[dict[str, Any], ...] = ()
    # The schema the handler reads the query string with: its fields and
    # validators become the query parameters.
    query: Schema | None = None
    # The success answer's media type.
    media_type: str = "application/json"
    # Answers that come from no error table: status, description, JSON schema.
    other_answers: tuple[tuple[int, str, str | dict[str, Any] | None], ...] = ()
