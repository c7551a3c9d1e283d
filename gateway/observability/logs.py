"""What operators read: JSON log lines, the request id that ties them, and the access log."""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

REQUEST_ID_HEADER = "X-Request-Id"

# A caller's id is kept only when it cannot smuggle anything into a log line
# or a header: short, and from a set that needs no escaping anywhere.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# A made id is this process's random prefix and a counter: 32 hex characters
# like a uuid4's, unique across processes and restarts, but about a tenth of
# uuid4's cost, which this service pays on every request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)

class Observation:
    """What is noted of a request: when it reached the app, and its id once something asks.

    One object per request, kept on the request: no context variable to set
    and reset, no middleware of its own.
    """

    __slots__ = ("request_id", "started")

    def __init__(self, started: float | None) -> None:
        # time.perf_counter() when the app began on it; None once counted, or
        # for a request answered before the app (the parser's refusals, Expect).
        self.started = started
        self.request_id: str | None = None


OBSERVATION = web.RequestKey("gateway_observation", Observation)


def observation_of(request: BaseRequest) -> Observation:
    """The request's Observation; one made now for a request the app never saw."""
    try:
        return request[OBSERVATION]
    except KeyError:
        observation = request[OBSERVATION] = Observation(None)
        return observation


def request_id_of(request: BaseRequest) -> str:
    """The caller's X-Request-Id when it is safe to echo, else a new one; the same every call."""
    observation = observation_of(request)
    request_id = observation.request_id
    if request_id is None:
        given = request.headers.get(REQUEST_ID_HEADER)
        if given is not None and _SANE_REQUEST_ID.fullmatch(given):
            request_id = given
        else:
            request_id = f"{_ID_PREFIX}{next(_id_counter):016x}"
        observation.request_id = request_id
    return request_id


def _no_request() -> BaseRequest | None:
    return None


# Finds the request the running code serves; gateway.protocol installs the
# real one, which knows where aiohttp keeps it.
_current_request: Callable[[], BaseRequest | None] = _no_request


def find_requests_with(finder: Callable[[], BaseRequest | None]) -> None:
    """Have log records ask ``finder`` for the request they are made in."""
    global _current_request
    _current_request = finder


def current_request_id() -> str | None:
    """The id of the request the running code serves, or None outside one."""
    request = _current_request()
    return request_id_of(request) if request is not None else None


# Attributes every LogRecord has; anything else on a record came as an extra.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "request_id"}

# Defence in depth: nothing should log a credential or a push token, but a
# message quoting a path, a request line (aiohttp's own "Error handling
# request") or an exception must not carry one by accident. Session tokens,
# hashes and APNs tokens are long hex runs; the rest travel as named parameters.
_SECRET_LIKE = re.compile(r"[0-9A-Fa-f]{32,}")
_SECRET_PARAMETER = re.compile(
    r"(?i)\b(hash|token|session-token|p256dh|auth|parameters|authorization)(=|%3D)[^&\s'\"]*"
)
_REDACTED = "[redacted]"


def _redact(text: str) -> str:
    text = _SECRET_PARAMETER.sub(rf"\1\2{_REDACTED}", text)
    return _SECRET_LIKE.sub(_REDACTED, text)


_stamping = False


def stamp_log_records() -> None:
    """Every log record made from now on remembers the request it was made in.

    At the record's birth, not when it is formatted: a handler may format it
    later, elsewhere (a queue, pytest's caplog), when the request is over.
    """
    global _stamping
    if _stamping:
        return
    _stamping = True
    make_record = logging.getLogRecordFactory()

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.request_id = current_request_id()
        return record

    logging.setLogRecordFactory(stamped)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        entry["pid"] = record.process
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = _redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = _redact(record.exc_text)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """JSON lines on stderr; like logging.basicConfig, does nothing if logging is configured."""
    stamp_log_records()
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)


UNMATCHED_ROUTE = "unmatched"
# Marks a request answered before routing (the HTTP parser refused it), whose
# match_info aiohttp never set: reading it would fail an assertion.
UNROUTED = web.RequestKey("gateway_unrouted", bool)


def route_of(request: BaseRequest) -> str:
    """The matched route's template, never the raw path: paths carry device ids and tokens."""
    # A request aiohttp refused before routing is a bare BaseRequest, or (from
    # its HTTP parser) a web.Request that was never routed.
    if not isinstance(request, web.Request) or request.get(UNROUTED, False):
        return UNMATCHED_ROUTE
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


class AccessLogger(AbstractAccessLogger):
    """The access log: method, route template, status, duration and request id.

    Never the raw path or query string: the Navixy GET form carries the
    session hash in the query, and Layer paths carry session tokens.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        route = route_of(request)
        # The record finds the request id itself: aiohttp writes this line
        # from the task that served the request.
        self.logger.info(
            "%s %s %d",
            request.method,
            route,
            response.status,
            extra={
                "method": request.method,
                "route": route,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
