"""What operators scrape: Prometheus metrics of the requests, the pools, the group commit and
the registrations."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.bearer import bearer_matches, key_digest
from gateway.commands import Provider
from gateway.errors import GatewayError
from gateway.keys import DATABASE_PROBE, INTERNAL_PROBE, SETTINGS
from gateway.observability.logs import Observation, route_of
from gateway.probes import DatabaseProbe
from gateway.wire import Operation

log = logging.getLogger(__name__)

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

    def __init__(self, dialect_at: Callable[[str], str] = lambda path: "other") -> None:
        # The dialect label of a path: the surfaces' registry says (see
        # gateway.app); this module knows no surface.
        self._dialect_at = dialect_at
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
            (resource, status) if resource is not None else (self._dialect_at(request.path), status)
        )
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = self._new_stats(request, status)
        stats.observe(seconds)

    def _new_stats(self, request: web.Request, status: int) -> RouteStats:
        route = route_of(request)
        # A route's requests all lie under the surface that added it, so the
        # first one's path says the route's dialect.
        dialect = self._dialect_at(request.path)
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
        probe = app.get(DATABASE_PROBE)
        if probe is None:
            return
        size, idle, maximum = probe.pool_usage()
        self.pool_size.set(size)
        self.pool_idle.set(idle)
        self.pool_max.set(maximum)
        size, idle, _ = app[INTERNAL_PROBE].pool_usage()
        self.internal_pool_size.set(size)
        self.internal_pool_idle.set(idle)

    async def recount_registrations(self, store: DatabaseProbe) -> bool:
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

# nginx's status for a request whose client went away.
CLIENT_CLOSED_REQUEST = 499


def count_response(request: web.Request, observation: Observation, status: int) -> None:
    """Counts and times the request's answer, once; not one the app never saw."""
    started = observation.started
    if started is not None:
        observation.started = None
        request.app[METRICS].observe_request(request, status, time.perf_counter() - started)


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
    if expected is not None and not bearer_matches(request, expected):
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


def setup(app: web.Application, dialect_at: Callable[[str], str]) -> None:
    """Adds /metrics and the app's registry, before the database lifecycle that reads it."""
    app[METRICS] = Metrics(dialect_at)
    token = app[SETTINGS].metrics_token
    if token is not None:
        app[METRICS_KEY_DIGEST] = key_digest(token)
    # After the database lifecycle in cleanup_ctx: it counts through the probe
    # that makes (a KeyError at start-up otherwise).
    app.cleanup_ctx.append(_recount_registrations)
    app.router.add_get("/metrics", serve_metrics, allow_head=False)


# The route above as the OpenAPI document tells it.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/metrics", "metrics",
        "This worker process's metrics, in the Prometheus text format",
        200, "Prometheus exposition format 0.0.4", {"type": "string"},
        other_answers=(
            (401, "GATEWAY_METRICS_TOKEN is set and the request lacks it", "InternalError"),
        ),
        media_type="text/plain",
    ),
)


async def _recount_forever(metrics: Metrics, store: DatabaseProbe, interval: float) -> None:
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
        _recount_forever(app[METRICS], app[INTERNAL_PROBE], app[SETTINGS].metrics_refresh_seconds),
        name="recount-registrations",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


