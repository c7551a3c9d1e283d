"""The oracle: what a well-formed answer of each dialect is, and which database change a
request may make; ``exchange`` sends a request and asserts both."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.hostile.harness import Answer, Intent, LiveGateway, Request, Snapshot, World

# --- the dialects' answers ------------------------------------------------------------

LAYER_ERRORS: dict[str, tuple[int, set[int]]] = {
    # id: (code, HTTP statuses); 5xx and rate limiting are never right here.
    "authentication_required": (4, {401}),
    "invalid_request": (10, {400, 413}),
    "not_found": (102, {404}),
    "missing_property": (104, {422}),
    "invalid_property": (105, {422}),
    "invalid_endpoint": (106, {404}),
    "invalid_header": (107, {406}),
    "method_not_allowed": (109, {405}),
}
NAVIXY_ERRORS: dict[int, int] = {3: 400, 4: 400, 5: 400, 7: 400, 9: 412, 111: 400, 112: 400}


def is_navixy_path(path: str) -> bool:
    return path.startswith(("/v2/", "/user/")) or path == "/v2"


# Outside the two dialects: the senders' API (its own error format) and the
# operational routes, whose GET answers are not errors of either dialect.
INTERNAL_PREFIX = "/internal"
OPERATIONAL = {"/health/live", "/health/ready", "/metrics", "/openapi.json"}


def internal_error(answer: Answer) -> None:
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    assert isinstance(body, dict) and set(body) == {"error"}, answer.describe()
    assert isinstance(body["error"]["code"], str), answer.describe()
    assert isinstance(body["error"]["message"], str), answer.describe()


def layer_error(answer: Answer) -> dict[str, Any]:
    """Assert a well-formed Layer error (not a 5xx); return its body."""
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    assert isinstance(body, dict), answer.describe()
    assert set(body) == {"id", "code", "message", "url", "data"}, answer.describe()
    assert body["id"] in LAYER_ERRORS, answer.describe()
    code, statuses = LAYER_ERRORS[body["id"]]
    assert body["code"] == code and answer.status in statuses, answer.describe()
    assert isinstance(body["message"], str) and body["message"], answer.describe()
    assert isinstance(body["url"], str) and body["url"].startswith("https://"), answer.describe()
    assert isinstance(body["data"], dict), answer.describe()
    if code in {104, 105}:
        assert set(body["data"]) == {"property"}, answer.describe()
        assert isinstance(body["data"]["property"], str), answer.describe()
    if code == 107:
        assert body["data"] == {"header": "Accept"}, answer.describe()
    return body


def navixy_error(answer: Answer) -> dict[str, Any]:
    """Assert a well-formed Navixy error envelope (not a 5xx); return its body."""
    assert answer.content_type == "application/json", answer.describe()
    body = json.loads(answer.body)
    assert isinstance(body, dict), answer.describe()
    assert body.get("success") is False, answer.describe()
    status = body.get("status")
    assert isinstance(status, dict) and set(status) == {"code", "description"}, answer.describe()
    code = status["code"]
    assert code in NAVIXY_ERRORS and answer.status == NAVIXY_ERRORS[code], answer.describe()
    assert isinstance(status["description"], str) and status["description"], answer.describe()
    if code == 7:
        assert set(body) == {"success", "status", "errors"}, answer.describe()
        errors = body["errors"]
        assert isinstance(errors, list) and errors, answer.describe()
        for error in errors:
            assert isinstance(error, dict) and set(error) == {"parameter", "error"}
            assert isinstance(error["parameter"], str) and isinstance(error["error"], str)
    else:
        assert set(body) == {"success", "status"}, answer.describe()
    return body


def show(request: Request) -> str:
    wire = request.wire()
    return repr(wire if len(wire) < 800 else wire[:800] + b"...")


def judge(request: Request, answer: Answer) -> bool:
    """Assert the answer is well formed in the path's dialect; True for a success."""
    assert answer.status < 500, answer.describe()
    head = request.method == "HEAD"
    if head:
        # No body to read: the status and the media type must still be the dialect's.
        assert answer.body == b""
        if answer.status >= 400:
            assert answer.content_type == "application/json", answer.describe()
        return False
    if request.path == INTERNAL_PREFIX or request.path.startswith(INTERNAL_PREFIX + "/"):
        if answer.status >= 400:
            internal_error(answer)
        return answer.status < 300
    if request.method == "GET" and request.path in OPERATIONAL:
        return False
    if is_navixy_path(request.path):
        if answer.status == 200:
            assert answer.content_type == "application/json", answer.describe()
            assert json.loads(answer.body) == {"success": True}, answer.describe()
            return True
        navixy_error(answer)
        return False
    if answer.status == 202:
        assert answer.body == b"", answer.describe()
        assert request.method in {"POST", "DELETE"}, answer.describe()
        return True
    if answer.status == 204:
        assert answer.body == b"" and request.method == "DELETE", answer.describe()
        return True
    if answer.status == 200:
        assert request.method == "GET", answer.describe()
        assert answer.content_type == "application/json", answer.describe()
        listing = json.loads(answer.body)
        assert isinstance(listing, list) and all(isinstance(e, dict) for e in listing)
        return True
    layer_error(answer)
    return False


# --- the database oracle --------------------------------------------------------------

# What an upsert may change on the row it keeps.
MUTABLE = {
    "session_id",
    "provider",
    "token",
    "apns_bundle_id",
    "gcm_sender_id",
    "ios_version",
    "webpush_p256dh",
    "webpush_auth",
    "category_filter",
    "registered_seq",
    "updated_at",
}


CATEGORY_NAMES = (
    "chat_message|history_rule|history_task|history_info|history_service_task|history_work_status"
)
STORED_SYNTAX = {
    "apns": re.compile(r"(?:[0-9a-f]{2}){16,100}"),
    "fcm": re.compile(r"[A-Za-z0-9_:-]{8,4096}"),
    "webpush": re.compile(r"https://[^\s@/?#]+[^\s]{0,2040}"),
}
STORED_FILTER = re.compile(rf"\*|-?(?:{CATEGORY_NAMES})(?:,(?:{CATEGORY_NAMES}))*")
BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def assert_storable(row: dict[str, Any], where: str) -> None:
    """A written row obeys the syntax rules, checked here independently of gateway.validation."""
    assert STORED_SYNTAX[row["provider"]].fullmatch(row["token"]), f"{where}: stored {row}"
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in row["token"]), where
    assert STORED_FILTER.fullmatch(row["category_filter"]), f"{where}: stored {row}"
    if row["device_id"] is not None:
        device = row["device_id"]
        assert 0 < len(device) <= 255, where
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in device), where
    if row["ios_version"] is not None:
        assert re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}", row["ios_version"]), where
    webpush = row["provider"] == "webpush"
    for key in ("webpush_p256dh", "webpush_auth"):
        assert (row[key] is not None) == webpush, where
        if webpush:
            assert BASE64URL.fullmatch(row[key]), where
    if row["provider"] != "apns":
        assert row["apns_bundle_id"] is None and row["ios_version"] is None, where
    if row["provider"] != "fcm":
        assert row["gcm_sender_id"] is None, where


def candidates(tokens: frozenset[str]) -> set[str]:
    return {t for token in tokens for t in (token, token.lower())}


def check_database(
    world: World,
    request: Request,
    intent: Intent,
    success: bool,
    before: Snapshot,
    after: Snapshot,
) -> None:
    where = f"{show(request)} {intent}"
    if not success or intent.action in {"list", "none"}:
        assert after == before, f"the database changed on {where}"
        return
    # A command acts for a session whose hash the request carries.
    carried = request.plaintext().lower()
    present = [h for h in world.live if h.encode() in carried]
    assert present, f"success without a live hash: {where}"
    users = {world.users[h] for h in present}
    session_ids = {world.session_ids[user] for user in users}
    removed = set(before.registrations) - set(after.registrations)
    added = set(after.registrations) - set(before.registrations)
    changed = {
        rid
        for rid in set(before.registrations) & set(after.registrations)
        if before.registrations[rid] != after.registrations[rid]
    }
    if intent.action in {"logout", "end_session"}:
        gone = set(before.sessions) - set(after.sessions)
        assert len(gone) == 1 and gone <= session_ids, f"{where}: sessions gone {gone}"
        assert set(after.sessions) <= set(before.sessions), where
        [ended] = gone
        assert not added and not changed, where
        assert removed == {
            rid for rid, row in before.registrations.items() if row["session_id"] == ended
        }, where
        return
    assert after.sessions == before.sessions, f"sessions changed on {where}"
    if intent.action == "delete":
        assert not added and not changed and len(removed) == 1, where
        [rid] = removed
        row = before.registrations[rid]
        assert row["device_id"] is None and row["session_id"] in session_ids, where
        return
    if intent.action == "unregister":
        assert not added and not changed and len(removed) <= 1, where
        for rid in removed:
            row = before.registrations[rid]
            assert row["user_id"] in users and row["device_id"] in intent.device_ids, where
        if len(users) == 1:
            left = {
                row["device_id"] for row in after.registrations.values() if row["user_id"] in users
            }
            assert not (left & intent.device_ids), f"{where}: the device is still registered"
        return
    assert intent.action in {"bind", "register"}, where
    written = added | changed
    assert len(written) == 1, f"{where}: rows written {written}"
    [rid] = written
    row = after.registrations[rid]
    assert row["session_id"] in session_ids, where
    assert row["user_id"] == before.sessions[row["session_id"]]["user_id"], where
    assert_storable(row, where)
    assert row["token"] in candidates(intent.tokens), f"{where}: stored token {row['token']!r}"
    if rid in changed:
        old = before.registrations[rid]
        assert {k for k in row if row[k] != old[k]} <= MUTABLE, where
    if intent.action == "bind":
        assert row["device_id"] is None, where
        # Every seeded session holds a binding, which the upsert keeps in place.
        assert rid in changed, f"{where}: a second binding for one session"
    else:
        assert row["device_id"] in intent.device_ids, where
    for gone_id in removed:  # a token moves: its other holders let it go
        old = before.registrations[gone_id]
        assert (old["provider"], old["token"]) == (row["provider"], row["token"]), where


def outcome(answer: Answer) -> str:
    """A label of the answer, for --hypothesis-show-statistics."""
    try:
        body = json.loads(answer.body) if answer.body else None
    except ValueError:
        return f"{answer.status} not JSON"
    if isinstance(body, dict) and isinstance(body.get("status"), dict):
        return f"{answer.status} navixy {body['status'].get('code')}"
    if isinstance(body, dict) and "id" in body:
        return f"{answer.status} layer {body['id']}"
    return f"{answer.status}"


def exchange(gateway: LiveGateway, world: World, request: Request, intent: Intent) -> Answer:
    """Send one request; assert the answer and the database change; return the answer."""
    before = gateway.pristine()
    answer = gateway.send(request)
    after = gateway.snapshot()
    if after != before:
        gateway.changed()
    try:
        success = judge(request, answer)
    except AssertionError as exc:
        raise AssertionError(f"{show(request)}\n  answered {exc}") from None
    check_database(world, request, intent, success, before, after)
    return answer
