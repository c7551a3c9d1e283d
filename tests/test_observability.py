"""The operators' view: /metrics, the request id on answers and log lines, the access log."""

from __future__ import annotations

import io
import logging
import re
import sys
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.keys import EXECUTOR
from gateway.observability import (
    REQUEST_ID_HEADER,
    AccessLogger,
    JsonFormatter,
    Metrics,
    RouteStats,
    setup_logging,
)
from tests.conftest import layer_headers
from tests.faults_support import wait_until
from tests.helpers import (
    BIND,
    DELETE,
    LAYER_APNS,
    LAYER_DEVICE,
    NAVIXY_FCM,
    navixy,
    navixy_error,
    navixy_ok,
)

MADE_ID = re.compile(r"[0-9a-f]{32}")


def register_body(device: str = LAYER_DEVICE, token: str = LAYER_APNS) -> dict[str, str]:
    return {"token": token, "type": "apns", "device_id": device}


def android(hash_: str) -> dict[str, str]:
    return {"hash": hash_, "application": "navixy_android_viewer", "token": NAVIXY_FCM}


async def scrape(client) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """The /metrics text, and every sample by name and sorted labels."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def sample(samples, name: str, **labels: str) -> float:
    value: float = samples[(name, tuple(sorted(labels.items())))]
    return value


# --- /metrics ----------------------------------------------------------------------


async def test_metrics_count_requests_of_both_dialects_by_route_template_and_status(
    client, new_session
):
    token = await new_session("alice")
    for _ in range(2):
        response = await client.post(
            "/push_tokens", json=register_body(), headers=layer_headers(token)
        )
        assert response.status == 202
    await navixy_ok(await navixy(client, BIND, android(token), "query"))
    await navixy_error(await navixy(client, BIND, {"hash": "nope"}), 3)
    response = await client.delete(f"/push_tokens/{LAYER_DEVICE}", headers=layer_headers(token))
    assert response.status == 202

    _, samples = await scrape(client)

    requests = "gateway_http_requests_total"
    assert sample(samples, requests, route="/push_tokens", dialect="layer", status="202") == 2
    bind = "/v2/user/session/push_token/bind"
    assert sample(samples, requests, route=bind, dialect="navixy", status="200") == 1
    assert sample(samples, requests, route=bind, dialect="navixy", status="400") == 1
    device_route = "/push_tokens/{device_id}"
    assert sample(samples, requests, route=device_route, dialect="layer", status="202") == 1
    latency = "gateway_http_request_duration_seconds_count"
    assert sample(samples, latency, route="/push_tokens", dialect="layer") == 2
    assert sample(samples, latency, route=bind, dialect="navixy") == 2


async def test_metrics_latency_buckets_span_half_a_millisecond_to_a_second(client):
    await client.get("/health/live")
    _, samples = await scrape(client)
    buckets = {
        dict(labels)["le"]
        for name, labels in samples
        if name == "gateway_http_request_duration_seconds_bucket"
    }
    assert {"0.0005", "0.001", "0.01", "0.1", "1.0", "+Inf"} <= buckets


async def test_metrics_never_label_with_raw_paths_device_ids_or_tokens(client, new_session):
    token = await new_session("alice")
    other = await new_session("bob")
    await client.delete("/push_tokens/secret-device-42", headers=layer_headers(token))
    await client.delete(f"/sessions/{other}", headers=layer_headers())
    await client.get(f"/no/such/{token}")
    await navixy(client, DELETE, {"hash": token}, "query")

    text, samples = await scrape(client)

    assert token not in text
    assert other not in text
    assert "secret-device-42" not in text
    requests = "gateway_http_requests_total"
    assert sample(
        samples, requests, route="/sessions/{session_token}", dialect="layer", status="204"
    ) == 1
    assert sample(samples, requests, route="unmatched", dialect="other", status="404") == 1


async def test_metrics_report_group_commit_batches_pool_and_registrations_by_provider(
    aiohttp_client, settings, db
):
    settings = replace(settings, metrics_refresh_seconds=0.05)
    client = await aiohttp_client(create_app(settings))
    store = client.app[EXECUTOR].store
    token = await store.create_session("alice", 3600)
    response = await client.post("/push_tokens", json=register_body(), headers=layer_headers(token))
    assert response.status == 202
    await navixy_ok(await navixy(client, BIND, android(await store.create_session("bob", 3600))))

    # The gauge is recounted in the background, not by the scrape.
    async def recounted() -> bool:
        _, samples = await scrape(client)
        return samples.get(("gateway_registrations", (("provider", "fcm"),))) == 1

    await wait_until(recounted, within=10, what="the registrations gauge to be recounted")
    _, samples = await scrape(client)

    assert sample(samples, "gateway_group_commit_batch_size_count") >= 1
    assert sample(samples, "gateway_group_commit_batch_size_sum") == 2
    assert sample(samples, "gateway_registrations", provider="apns") == 1
    assert sample(samples, "gateway_registrations", provider="fcm") == 1
    assert sample(samples, "gateway_registrations", provider="webpush") == 0
    size = sample(samples, "gateway_db_pool_connections")
    idle = sample(samples, "gateway_db_pool_idle_connections")
    maximum = sample(samples, "gateway_db_pool_max_connections")
    assert 1 <= size <= maximum
    assert 0 <= idle <= size
    assert maximum == settings.pool_max_size


async def test_each_app_keeps_its_own_metrics(aiohttp_client, settings, db):
    first = await aiohttp_client(create_app(settings))
    second = await aiohttp_client(create_app(settings))
    for _ in range(3):
        await first.get("/health/live")

    _, samples = await scrape(second)

    assert (
        "gateway_http_requests_total",
        (("dialect", "other"), ("route", "/health/live"), ("status", "200")),
    ) not in samples


# --- the request id ------------------------------------------------------------------


async def test_a_sane_request_id_is_echoed_on_success_of_both_dialects(client, new_session):
    token = await new_session("alice")
    layer = await client.post(
        "/push_tokens",
        json=register_body(),
        headers={**layer_headers(token), REQUEST_ID_HEADER: "layer-req.1_A"},
    )
    assert layer.status == 202
    assert layer.headers[REQUEST_ID_HEADER] == "layer-req.1_A"
    nav = await navixy(client, BIND, android(token), headers={REQUEST_ID_HEADER: "nvx-1"})
    await navixy_ok(nav)
    assert nav.headers[REQUEST_ID_HEADER] == "nvx-1"


async def test_a_sane_request_id_is_echoed_on_errors_of_both_dialects(client):
    layer = await client.post(
        "/push_tokens", json=register_body(), headers={**layer_headers(), "X-Request-Id": "e-1"}
    )
    assert layer.status == 401
    assert layer.headers[REQUEST_ID_HEADER] == "e-1"
    nav = await navixy(client, BIND, {"hash": "bad"}, headers={REQUEST_ID_HEADER: "e-2"})
    await navixy_error(nav, 3)
    assert nav.headers[REQUEST_ID_HEADER] == "e-2"
    unknown = await client.get("/v2/no/such/action", headers={REQUEST_ID_HEADER: "e-3"})
    await navixy_error(unknown, 111)
    assert unknown.headers[REQUEST_ID_HEADER] == "e-3"
    not_allowed = await client.put("/push_tokens", headers={REQUEST_ID_HEADER: "e-4"})
    assert not_allowed.status == 405
    assert not_allowed.headers[REQUEST_ID_HEADER] == "e-4"


@pytest.mark.parametrize(
    "given",
    [None, "", "x" * 129, "has space", "new\\nline", "semi;colon", "ünï"],
    ids=["absent", "empty", "too-long", "space", "backslash", "semicolon", "non-ascii"],
)
async def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(client, given):
    headers = {} if given is None else {REQUEST_ID_HEADER: given}
    layer = await client.get("/push_tokens", headers={**layer_headers(), **headers})
    nav = await navixy(client, BIND, {}, headers=headers)
    assert layer.status == 401
    await navixy_error(nav, 3)
    made = [layer.headers[REQUEST_ID_HEADER], nav.headers[REQUEST_ID_HEADER]]
    assert all(MADE_ID.fullmatch(request_id) for request_id in made)
    assert made[0] != made[1]


async def test_the_longest_sane_request_id_is_kept(client):
    given = "A" * 128
    response = await client.get("/health/live", headers={REQUEST_ID_HEADER: given})
    assert response.headers[REQUEST_ID_HEADER] == given


# --- JSON log lines --------------------------------------------------------------------


def json_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [orjson.loads(formatter.format(record)) for record in records]


async def test_a_log_line_inside_a_request_carries_its_request_id(
    aiohttp_client, settings, db, caplog
):
    async def noisy(request: web.Request) -> web.Response:
        logging.getLogger("gateway.test").info("working on it", extra={"step": 3})
        return web.Response(status=204)

    app = create_app(settings)
    app.router.add_get("/test/noisy", noisy)
    client = await aiohttp_client(app)
    caplog.set_level(logging.INFO, logger="gateway.test")

    response = await client.get("/test/noisy", headers={REQUEST_ID_HEADER: "trace-me"})

    assert response.headers[REQUEST_ID_HEADER] == "trace-me"
    [line] = json_lines([r for r in caplog.records if r.name == "gateway.test"])
    assert line["request_id"] == "trace-me"
    assert line["message"] == "working on it"
    assert line["logger"] == "gateway.test"
    assert line["level"] == "INFO"
    assert line["step"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])


def test_a_log_line_outside_a_request_has_no_request_id_and_one_json_object():
    record = logging.LogRecord("gateway", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = orjson.loads(text)
    assert line["message"] == "hello you"
    assert line["level"] == "WARNING"
    assert "request_id" not in line


def test_log_lines_never_carry_anything_shaped_like_a_token_or_hash():
    token = "0123456789abcdef0123456789abcdef"
    try:
        raise ValueError(f"no session {token}")
    except ValueError:
        record = logging.LogRecord(
            "gateway", logging.ERROR, __file__, 1, "at /sessions/%s", (token,), sys.exc_info()
        )
    text = JsonFormatter().format(record)
    assert token not in text
    line = orjson.loads(text)
    assert line["message"] == "at /sessions/[redacted]"
    assert "ValueError: no session [redacted]" in line["exc"]


def test_log_lines_never_carry_push_tokens_or_keys_from_a_quoted_request_line():
    # What aiohttp's server logger says of a request line too long to parse.
    quoted = (
        f"Got more than 8190 bytes when reading: b'/v2/{BIND}?hash=abc&token={NAVIXY_FCM}"
        "&parameters=%7B%22p256dh%22%3A%22BOr' Authorization=NVX"
    )
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, quoted, None, None)
    text = JsonFormatter().format(record)
    assert NAVIXY_FCM not in text
    assert "p256dh" not in text
    assert "hash=[redacted]&token=[redacted]&parameters=[redacted]" in text


def test_setup_logging_writes_json_lines_and_leaves_configured_logging_alone(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    stream = io.StringIO()
    setup_logging(logging.INFO, stream)
    setup_logging(logging.INFO, io.StringIO())  # a second call adds nothing
    assert len(root.handlers) == 1
    logging.getLogger("gateway.test").info("started", extra={"port": 8080})
    line = orjson.loads(stream.getvalue())
    assert (line["message"], line["port"], line["level"]) == ("started", 8080, "INFO")


# --- the access log -----------------------------------------------------------------------


async def test_the_access_log_names_the_route_never_the_query_string_or_hash(
    aiohttp_client, settings, db, caplog
):
    server = TestServer(create_app(settings))
    await server.start_server(access_log_class=AccessLogger)
    client = await aiohttp_client(server)
    token = await client.app[EXECUTOR].store.create_session("alice", 3600)
    caplog.set_level(logging.INFO, logger="aiohttp.access")

    response = await navixy(client, BIND, android(token), "query", headers={"X-Request-Id": "a-1"})
    await navixy_ok(response)
    await client.delete(f"/sessions/{token}", headers=layer_headers())
    await client.close()  # the access log line is written once the response is sent

    lines = json_lines([r for r in caplog.records if r.name == "aiohttp.access"])
    assert len(lines) == 2
    assert token not in orjson.dumps(lines).decode()
    assert NAVIXY_FCM not in orjson.dumps(lines).decode()
    bind, end = lines
    assert bind["method"] == "GET"
    assert bind["route"] == "/v2/user/session/push_token/bind"
    assert bind["status"] == 200
    assert bind["request_id"] == "a-1"
    assert isinstance(bind["duration_ms"], float)
    assert bind["message"] == "GET /v2/user/session/push_token/bind 200"
    assert end["route"] == "/sessions/{session_token}"
    assert MADE_ID.fullmatch(end["request_id"])


def test_latency_buckets_are_cumulative_and_summed_across_statuses():
    metrics = Metrics()
    stats = metrics.requests.stats
    stats[("/push_tokens", "layer", "202")] = RouteStats()
    stats[("/push_tokens", "layer", "422")] = RouteStats()
    for seconds in (0.0004, 0.002):
        stats[("/push_tokens", "layer", "202")].observe(seconds)
    stats[("/push_tokens", "layer", "422")].observe(2.0)

    samples = {
        (s.name, s.labels.get("le"), s.labels.get("status")): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.labels.get("route") == "/push_tokens"
    }

    bucket = "gateway_http_request_duration_seconds_bucket"
    assert samples[(bucket, "0.0005", None)] == 1
    assert samples[(bucket, "0.001", None)] == 1
    assert samples[(bucket, "0.0025", None)] == 2
    assert samples[(bucket, "1.0", None)] == 2
    assert samples[(bucket, "+Inf", None)] == 3
    assert samples[("gateway_http_request_duration_seconds_count", None, None)] == 3
    assert samples[("gateway_http_request_duration_seconds_sum", None, None)] == pytest.approx(
        2.0024
    )
    assert samples[("gateway_http_requests_total", None, "202")] == 2
    assert samples[("gateway_http_requests_total", None, "422")] == 1
