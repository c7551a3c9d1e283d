"""What each provider carries for a notification, as bytes: one home for the size limits.

The POST checks sizes with the same functions the providers build their
requests with, so a notification accepted is one every provider can send.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.delivery.providers import Push, webpush_plaintext

# DELIVERY.md's limits.
APNS_MAX_PAYLOAD = 4096
FCM_MAX_DATA = 4096
WEBPUSH_MAX_PLAINTEXT = 3993

# The aps keys that make a push visible; without them it is a background push.
_VISIBLE_APS_KEYS = frozenset({"alert", "sound", "badge"})


def apns_aps(push: Push) -> dict[str, Any]:
    override = push.override or {}
    aps = override.get("aps")
    if isinstance(aps, dict):
        return aps
    alert = {name: value for name, value in (("title", push.title), ("body", push.body)) if value}
    return {"alert": alert} if alert else {"content-available": 1}


def apns_payload(push: Push) -> bytes:
    """The JSON APNs receives: ``aps`` and the message's data as custom top-level keys."""
    return orjson.dumps({**push.data, "aps": apns_aps(push)})


def apns_payload_bytes(push: Push) -> int:
    return len(apns_payload(push))


def apns_push_type(push: Push) -> str:
    headers = (push.override or {}).get("headers") or {}
    explicit = headers.get("apns-push-type")
    if isinstance(explicit, str):
        return explicit
    return "alert" if _VISIBLE_APS_KEYS & apns_aps(push).keys() else "background"


def fcm_data(push: Push) -> dict[str, str]:
    """The FCM message's ``data`` map: the override's, else the message's."""
    data = (push.override or {}).get("data")
    return data if isinstance(data, dict) else push.data


def fcm_data_bytes(push: Push) -> int:
    """FCM's own count: the UTF-8 bytes of the data map's keys and values."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in fcm_data(push).items())


def webpush_plaintext_bytes(push: Push) -> int:
    return len(webpush_plaintext(push))
