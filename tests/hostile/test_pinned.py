"""Bugs found, fixed, and pinned: inputs the fuzzers leave out because each has a test here."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

import pytest

from tests.hostile.harness import (
    BIND,
    LAYER_ACCEPT,
    UNPARSEABLE_FIELD_NAMES_ARE_NOT_ERRORS,
    Answer,
    Intent,
    LiveGateway,
    Request,
)
from tests.hostile.oracle import exchange, layer_error, navixy_error
from tests.hostile.specs import MEDIA_TYPES, multipart_body
from tests.hostile.strategies import AUTH, P256DH

pytestmark = UNPARSEABLE_FIELD_NAMES_ARE_NOT_ERRORS


# --- bugs found, fixed, and pinned -------------------------------------------------------


def _send_checked(gateway: LiveGateway, request: Request, intent: Intent = Intent()) -> Answer:
    world = gateway.world()
    return exchange(gateway, world, request, intent)


@pytest.mark.parametrize("charset", ["nonsense", "base64"])
def test_unknown_form_charset_is_a_navixy_format_error(gateway, charset):
    request = Request(
        "POST",
        f"/v2/{BIND}".encode(),
        ((b"Content-Type", b"application/x-www-form-urlencoded; charset=" + charset.encode()),),
        b"hash=1",
    )
    answer = _send_checked(gateway, request, Intent("bind"))
    assert navixy_error(answer)["status"]["code"] in {3, 5}


@pytest.mark.parametrize(
    "part",
    [
        b'Content-Disposition: form-data; name="_charset_"\r\n\r\nnonsense',
        b'Content-Disposition: form-data; name="hash"\r\n'
        b"Content-Type: text/plain; charset=nonsense\r\n\r\nx",
        b'Content-Disposition: form-data; name="hash"\r\nContent-Transfer-Encoding: bogus\r\n\r\nx',
        b'Content-Disposition: form-data; name="\x00session"\r\n\r\nx',
        b'Content-Disposition: form-data; name="' + b"k" * 9_000 + b'"\r\n\r\nx',
    ],
    ids=[
        "charset-field",
        "part-charset",
        "part-transfer-encoding",
        "nul-in-part-header",
        "part-header-over-8190",
    ],
)
def test_undecodable_multipart_field_is_a_navixy_format_error(gateway, part):
    body = (
        b"--zz\r\n"
        + part
        + b'\r\n--zz\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--zz--\r\n'
    )
    request = Request(
        "POST",
        f"/v2/{BIND}".encode(),
        ((b"Content-Type", b"multipart/form-data; boundary=zz"),),
        body,
    )
    answer = _send_checked(gateway, request, Intent("bind"))
    assert navixy_error(answer)["status"]["code"] in {3, 5}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("dialect", ["navixy", "layer"])
def test_corrupt_content_encoding_is_a_client_error(gateway, encoding, dialect):
    headers: tuple[tuple[bytes, bytes], ...] = (
        (b"Content-Type", b"application/json"),
        (b"Content-Encoding", encoding.encode()),
    )
    if dialect == "navixy":
        request = Request("POST", f"/v2/{BIND}".encode(), headers, b"not compressed")
        answer = _send_checked(gateway, request, Intent("bind"))
        assert navixy_error(answer)["status"]["code"] == 5
    else:
        world = gateway.world()
        auth = f'Layer session-token="{world.hashes["alice"]}"'.encode()
        request = Request(
            "POST",
            b"/push_tokens",
            (*headers, (b"Accept", LAYER_ACCEPT), (b"Authorization", auth)),
            b"not compressed",
        )
        answer = _send_checked(gateway, request, Intent("register"))
        assert layer_error(answer)["id"] == "invalid_request"


# Requests aiohttp's HTTP layer refuses before any handler or middleware runs. It used to
# answer 400/417 itself, in text/plain, echoing the offending bytes; gateway.protocol replaces
# the two functions that wrote those answers. A request whose line could not be read has
# no path, so it gets Layer's error, the dialect of the root.
LOGOUT_LINE = b"GET /v2/user/logout HTTP/1.1\r\nHost: x\r\n"
POST_JSON = b"POST /v2/user/logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
PROTOCOL_ERRORS = {
    "unknown-method": b"BREW /v2/user/logout HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw-invalid-utf8-in-query": b"GET /v2/user/logout?hash=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw-invalid-utf8-in-path": b"DELETE /push_tokens/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "control-char-in-path": b"GET /v2/user/logout\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    "nul-in-header": LOGOUT_LINE + b"Authorization: NVX \x00\r\n\r\n",
    "del-in-header": LOGOUT_LINE + b"X-A: a\x7fb\r\n\r\n",
    "space-in-header-name": LOGOUT_LINE + b"Content-Type : text/plain\r\n\r\n",
    "request-line-over-8190": b"GET /v2/user/logout?hash=" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "header-over-8190": LOGOUT_LINE + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "too-many-headers": LOGOUT_LINE + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
    "bad-chunk-size": POST_JSON + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "duplicate-content-length": POST_JSON + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "negative-content-length": POST_JSON + b"Content-Length: -1\r\n\r\n",
    "brotli-content-encoding": POST_JSON + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
    "unknown-expect": POST_JSON + b"Expect: bogus\r\nContent-Length: 2\r\n\r\n{}",
    "tls-handshake": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32,
}


@pytest.mark.parametrize("raw", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
def test_requests_the_http_parser_refuses_get_a_json_error(gateway, raw):
    before = gateway.pristine()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = Answer(response.status, response.headers, response.read())
        response.close()
    assert gateway.snapshot() == before
    assert 400 <= answer.status < 500, answer.describe()
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    if "success" in body:
        navixy_error(answer)
    else:
        layer_error(answer)


@pytest.mark.parametrize(
    "name", [b"a\x01b", b"k" * 50_000], ids=["control-character", "line-over-8190"]
)
def test_multipart_part_header_the_reader_refuses_is_a_navixy_format_error(gateway, name):
    request = Request(
        "POST",
        f"/v2/{BIND}".encode(),
        ((b"Content-Type", MEDIA_TYPES["multipart"]),),
        multipart_body([(name, b"v")]),
    )
    before = gateway.pristine()
    answer = gateway.send(request)
    assert gateway.snapshot() == before
    assert navixy_error(answer)["status"]["code"] == 5


@pytest.mark.parametrize("form", ["query", "form"])
def test_invalid_utf8_escape_inside_a_value_is_refused_not_replaced(gateway, form):
    world = gateway.world()
    keys = json.dumps({"p256dh": P256DH[0], "auth": AUTH[0]})
    pairs = (
        ("hash", world.hashes["alice"]),
        ("application", "w3c_pushapi"),
        ("token", b"https%3A%2F%2Fpush.example%2Fa%FF"),  # https://push.example/a + byte 0xFF
        ("parameters", keys),
    )
    encoded = b"&".join(
        k.encode() + b"=" + (v if isinstance(v, bytes) else quote(v, safe="").encode())
        for k, v in pairs
    )
    if form == "query":
        request = Request("GET", f"/v2/{BIND}?".encode() + encoded)
    else:
        request = Request(
            "POST", f"/v2/{BIND}".encode(), ((b"Content-Type", MEDIA_TYPES["form"]),), encoded
        )
    before = gateway.pristine()
    answer = gateway.send(request)
    after = gateway.snapshot()
    if after != before:
        gateway.changed()
    assert after == before, f"stored: {[r['token'] for r in after.registrations.values()]}"
    assert navixy_error(answer)["status"]["code"] in {5, 7}


def test_duplicate_json_key_is_refused_naming_it(gateway):
    # As a repeated query or form parameter is: with a last-one rule a second
    # "hash" bound the request to another user (issue 9, item 8).
    world = gateway.world()
    body = (
        b'{"hash":"%s","application":"navixy_android_viewer",'
        b'"token":"first-token-1","token":"second-token-2"}' % world.hashes["alice"].encode()
    )
    request = Request(
        "POST", f"/v2/{BIND}".encode(), ((b"Content-Type", b"application/json"),), body
    )
    before = gateway.pristine()
    answer = gateway.send(request)
    assert answer.status == 400
    assert navixy_error(answer)["errors"] == [
        {"parameter": "token", "error": "is given more than once"}
    ]
    assert gateway.snapshot() == before
