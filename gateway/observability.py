"""What operators see: Prometheus metrics, JSON log lines, and the request id that ties them."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.commands import Provider
from gateway.errors import GatewayError
from gateway.keys import EXECUTOR, INTERNAL_STORE, SETTINGS
from gateway.store import Store
from gateway.surfaces import internal, navixy

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"

# A caller's id is kept only when it cannot smuggle anything into a log line
# or a header: short, and from a set that needs no escaping anywhere.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# A made id is this process's random prefix and a counter: 32 hex characters
# like a uuid4's, unique across processes and restarts, but about a tenth of
# uuid4's cost, which this service pays on every request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# The gateway answers in about a millisecond; a second is already a failure.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
_LATENCY_LABELS = [
    *(floatToGoString(bound) for bound in LATENCY_BUCKETS),  # type: ignore[no-untyped-call]
    "+Inf",
]
# GroupCommitter caps a batch at 1024 commands.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Where a route's path says which dialect it speaks.
_LAYER_PREFIXES = ("/push_tokens", "/sessions/")
# The catch-all route's template is /internal{tail}.
_INTERNAL_TEMPLATE = internal.PREFIX + "{"
UNMATCHED_ROUTE = "unmatched"
# Marks a request answered before routing (the HTTP parser refused it), whose
# match_info aiohttp never set: reading it would fail an assertion.
UNROUTED = web.RequestKey("gateway_unrouted", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_of(request: BaseRequest) -> str:
    """The caller's X-Request-Id when it is safe to echo, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return _new_request_id()


def dialect_of(path: str) -> str:
    """layer, navixy, internal or other: the dialect a path (or route template) speaks."""
    if navixy.owns(path):
        return "navixy"
    if path.startswith(_LAYER_PREFIXES):
        return "layer"
    if internal.owns(path) or path.startswith(_INTERNAL_TEMPLATE):
        return "internal"
    return "other"


def route_of(request: BaseRequest) -> str:
    """The matched route's template, never the raw path: paths carry device ids and tokens."""
    # A request aiohttp refused before routing is a bare BaseRequest, or (from
    # its HTTP parser) a web.Request that was never routed.
    if not isinstance(request, web.Request) or request.get(UNROUTED, False):
        return UNMATCHED_ROUTE
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


# ---------------------------------------------------------------- metrics


class RouteStats:
    """The requests of one (route, dialect, status): a count, a sum, latency buckets.

    Plain integers, no lock: only the event loop's thread updates and reads
    them. prometheus_client's own Counter and Histogram take a lock per update,
    which is most of what this middleware would cost.
    """

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        # One more than LATENCY_BUCKETS: the last holds what exceeds them all.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


class RequestCollector(Collector):
    """The request counter and latency histogram, built from RouteStats when scraped."""

    def __init__(self) -> None:
        self.stats: dict[tuple[str, str, str], RouteStats] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gateway_http_requests",
            "HTTP requests answered, by route template, dialect and status.",
            labels=["route", "dialect", "status"],
        )
        # The latency histogram leaves the status out: fewer series, and the
        # counter above already splits by it.
        by_route: dict[tuple[str, str], tuple[list[int], float]] = {}
        for (route, dialect, status), stats in self.stats.items():
            requests.add_metric([route, dialect, status], stats.count)
            buckets, seconds = by_route.get((route, dialect), ([0] * len(stats.buckets), 0.0))
            merged = [total + count for total, count in zip(buckets, stats.buckets, strict=True)]
            by_route[(route, dialect)] = (merged, seconds + stats.seconds)
        yield requests
        latency = HistogramMetricFamily(
            "gateway_http_request_duration_seconds",
            "Time from the request reaching the app to its answer, by route and dialect.",
            labels=["route", "dialect"],
        )
        for (route, dialect), (buckets, seconds) in by_route.items():
            cumulative = itertools.accumulate(buckets)
            latency.add_metric(
                [route, dialect], list(zip(_LATENCY_LABELS, cumulative, strict=True)), seconds
            )
        yield latency


# Scrapes within this many seconds of a rendering get the same text.
RENDER_INTERVAL = 1.0


class Metrics:
    """The app's own registry, so that several apps in one process keep separate counts.

    Each worker process reports its own: with several workers on one port, a
    scrape reaches one of them; scrape each worker (or run one per port) and
    sum in Prometheus.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestCollector()
        self.registry.register(self.requests)
        self.batch_size = Histogram(
            "gateway_group_commit_batch_size",
            "Write commands committed together in one group-commit transaction.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.pool_size = Gauge(
            "gateway_db_pool_connections",
            "Connections the database pool holds open, busy or idle.",
            registry=self.registry,
        )
        self.pool_idle = Gauge(
            "gateway_db_pool_idle_connections",
            "Open pool connections waiting for work.",
            registry=self.registry,
        )
        self.pool_max = Gauge(
            "gateway_db_pool_max_connections",
            "The most connections the pool may open.",
            registry=self.registry,
        )
        self.internal_pool_size = Gauge(
            "gateway_db_internal_pool_connections",
            "Connections the internal API's own pool holds open, busy or idle.",
            registry=self.registry,
        )
        self.internal_pool_idle = Gauge(
            "gateway_db_internal_pool_idle_connections",
            "Open internal pool connections waiting for work.",
            registry=self.registry,
        )
        self.registrations = Gauge(
            "gateway_registrations",
            "Stored registrations by provider, recounted in the background every"
            " GATEWAY_METRICS_REFRESH_SECONDS.",
            ["provider"],
            registry=self.registry,
        )
        # A request's labels are worked out once per route and status; after
        # that it pays one dict lookup.
        self._stats: dict[Hashable, RouteStats] = {}
        # When the text was last rendered, and the text.
        self._rendered: tuple[float, bytes] | None = None

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        # Unmatched requests share one route label; their path still says
        # whose error they got.
        key: Hashable = (
            (resource, status) if resource is not None else (dialect_of(request.path), status)
        )
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = self._new_stats(request, status)
        stats.observe(seconds)

    def _new_stats(self, request: web.Request, status: int) -> RouteStats:
        route = route_of(request)
        dialect = dialect_of(route if route != UNMATCHED_ROUTE else request.path)
        # Resources with the same template share its stats.
        return self.requests.stats.setdefault((route, dialect, str(status)), RouteStats())

    def render(self, app: web.Application) -> bytes:
        """The exposition text, rendered at most once per RENDER_INTERVAL.

        Rendering costs milliseconds of CPU once the routes and statuses add
        up; scrapers in a loop would take it from the writes. Prometheus
        scrapes every few seconds, so a text a second old loses nothing.
        """
        now = time.monotonic()
        interval = min(RENDER_INTERVAL, app[SETTINGS].metrics_refresh_seconds)
        if self._rendered is None or now - self._rendered[0] >= interval:
            self.read_pools(app)
            self._rendered = (now, generate_latest(self.registry))
        return self._rendered[1]

    def read_pools(self, app: web.Application) -> None:
        """The pools' figures at scrape time, from the pools themselves: no query."""
        executor = app.get(EXECUTOR)
        if executor is None:
            return
        size, idle, maximum = executor.store.pool_usage()
        self.pool_size.set(size)
        self.pool_idle.set(idle)
        self.pool_max.set(maximum)
        size, idle, _ = app[INTERNAL_STORE].pool_usage()
        self.internal_pool_size.set(size)
        self.internal_pool_idle.set(idle)

    async def recount_registrations(self, store: Store) -> bool:
        """Count the registrations by provider into the gauge; whether the count succeeded."""
        try:
            counts = await store.count_registrations_by_provider()
        except GatewayError:
            # Better no gauge than a stale one.
            self.registrations.clear()
            return False
        for provider in Provider:
            self.registrations.labels(provider.value).set(counts.get(provider.value, 0))
        return True


METRICS = web.AppKey("metrics", Metrics)


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Gives the request its id (on log lines and the response), counts and times it.

    It must be the outermost middleware, so that error responses get the
    header and the count too.
    """
    started = time.perf_counter()
    request_id = request_id_of(request)
    reset_token = _request_id.set(request_id)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    except asyncio.CancelledError:
        # The client went away; nginx's name for that.
        status = 499
        raise
    finally:
        _request_id.reset(reset_token)
        request.app[METRICS].observe_request(request, status, time.perf_counter() - started)


async def _stamp_streamed_response(request: web.Request, response: StreamResponse) -> None:
    """A response a handler sends itself (a stream) goes out before the middleware sees it."""
    request_id = _request_id.get()
    if request_id is not None and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = request_id


# The digest of GATEWAY_METRICS_TOKEN, or None when /metrics is open.
METRICS_KEY_DIGEST = web.AppKey("metrics_key_digest", bytes)

_METRICS_KEY_REQUIRED = orjson.dumps(
    {
        "error": {
            "code": "unauthorized",
            "message": "'Authorization: Bearer <metrics key>' is required",
        }
    }
)


async def serve_metrics(request: web.Request) -> web.Response:
    """What a scrape costs: the pools' counters and the text; the database is not asked."""
    expected = request.app.get(METRICS_KEY_DIGEST)
    if expected is not None and not internal.bearer_matches(request, expected):
        return web.Response(
            status=401,
            body=_METRICS_KEY_REQUIRED,
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="gateway-metrics"'},
        )
    metrics = request.app[METRICS]
    return web.Response(
        body=metrics.render(request.app), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
    )


def setup(app: web.Application) -> None:
    """Adds /metrics and the app's registry; call after the database's cleanup context."""
    stamp_log_records()
    app[METRICS] = Metrics()
    token = app[SETTINGS].metrics_token
    if token is not None:
        app[METRICS_KEY_DIGEST] = internal.key_digest(token)
    app.cleanup_ctx.append(_observe_group_commit)
    app.cleanup_ctx.append(_recount_registrations)
    app.on_response_prepare.append(_stamp_streamed_response)
    app.router.add_get("/metrics", serve_metrics, allow_head=False)


async def _observe_group_commit(app: web.Application) -> AsyncIterator[None]:
    # Runs after database_ctx has made the executor and its writer.
    app[EXECUTOR].writer.on_batch = app[METRICS].batch_size.observe
    yield


async def _recount_forever(metrics: Metrics, store: Store, interval: float) -> None:
    healthy = True
    while True:
        counted = await metrics.recount_registrations(store)
        if healthy and not counted:
            log.warning("counting registrations for /metrics failed; the gauge is cleared")
        healthy = counted
        await asyncio.sleep(interval)


async def _recount_registrations(app: web.Application) -> AsyncIterator[None]:
    """Keeps the registrations gauge current off the request path, on the internal pool.

    A count is one pass over the table (tens of milliseconds at 500,000 rows):
    paid every few seconds per process, not per scrape, and never with a
    connection the public dialects need.
    """
    task = asyncio.create_task(
        _recount_forever(app[METRICS], app[INTERNAL_STORE], app[SETTINGS].metrics_refresh_seconds),
        name="recount-registrations",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------- logging

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
        record.request_id = _request_id.get()
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


class AccessLogger(AbstractAccessLogger):
    """The access log: method, route template, status, duration and request id.

    Never the raw path or query string: the Navixy GET form carries the
    session hash in the query, and Layer paths carry session tokens.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        route = route_of(request)
        # The request's own context has ended by now; the id is on the response.
        reset_token = _request_id.set(response.headers.get(REQUEST_ID_HEADER))
        try:
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
        finally:
            _request_id.reset(reset_token)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
