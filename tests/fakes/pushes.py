"""Push objects as the delivery workers hand them to a provider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.commands import Provider
from gateway.delivery.providers import Push


def make_push(provider: Provider, token: str, **fields: Any) -> Push:
    """A push with a one-hour TTL and a small message; ``fields`` override any of it."""
    values: dict[str, Any] = {
        "delivery_id": 1,
        "provider": provider,
        "token": token,
        "apns_bundle_id": None,
        "gcm_sender_id": None,
        "webpush_p256dh": None,
        "webpush_auth": None,
        "expires_at": datetime.now(UTC) + timedelta(hours=1),
        "priority": "high",
        "collapse_key": None,
        "notification_id": "5f0c7a43-0d9e-4a53-9a57-3c1d2e9e4b11",
        "category": "chat_message",
        "title": "Bob",
        "body": "Are we still on for 7?",
        "data": {"conversation": "c-42"},
        "override": None,
    }
    values.update(fields)
    return Push(**values)
