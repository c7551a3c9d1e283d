"""APNs over HTTP/2 with token-based auth: an ES256 JWT from the team's .p8 key.

One httpx client (HTTP/2, through net.py's guarded backend) multiplexes every
push on one connection, up to the server's stream limit. A GOAWAY or a
connection the server closed fails the streams it did not process; they are
sent once more at once, on a fresh connection, before the worker's backoff
takes over.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.commands import Provider
from gateway.config import ConfigError, Settings
from gateway.delivery import net
from gateway.delivery.providers import Outcome, Push, Verdict

# Apple accepts a provider token for an hour and refuses a new one more often
# than every 20 minutes: renew somewhere in 40-50, so that several gateways
# sharing a key do not renew in step.
TOKEN_RENEW_MIN = 40 * 60
TOKEN_RENEW_MAX = 50 * 60

# DELIVERY.md: APNs takes at most 4096 bytes of JSON.
PAYLOAD_LIMIT = 4096

# The aps keys that make a push visible; without them it is a background push.
_VISIBLE_APS_KEYS = frozenset({"alert", "sound", "badge"})

# The 410/400 reasons that say the token is dead.
DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "TopicDisallowed"})
# ...of which this one, seen at all, is our configuration (the key's team has no such topic).
CONFIGURATION_REASONS = frozenset({"TopicDisallowed"})
# 403/429 answers about our credentials rather than the push.
CREDENTIAL_REASONS = frozenset(
    {"InvalidProviderToken", "MissingProviderToken", "TooManyProviderTokenUpdates"}
)

# apns-id is derived from the delivery, so every attempt at one delivery
# carries the same id: a duplicate after a crash is recognisable.
_APNS_ID_NAMESPACE = uuid.UUID("4c4cb0d4-3a8d-4e38-9c1c-3e0b8f1f7a52")


def aps(push: Push) -> dict[str, Any]:
    """The override's ``aps``, else an alert from the title and body, else a background push."""
    override = (push.override or {}).get("aps")
    if isinstance(override, dict):
        return override
    alert = {name: value for name, value in (("title", push.title), ("body", push.body)) if value}
    return {"alert": alert} if alert else {"content-available": 1}


def payload(push: Push) -> bytes:
    """The JSON APNs receives: ``aps`` and the message's data as custom top-level keys."""
    return orjson.dumps({**push.data, "aps": aps(push)})


def payload_size(push: Push) -> int:
    return len(payload(push))


def push_type(push: Push) -> str:
    explicit = ((push.override or {}).get("headers") or {}).get("apns-push-type")
    if isinstance(explicit, str):
        return explicit
    return "alert" if _VISIBLE_APS_KEYS & aps(push).keys() else "background"


@dataclass
class ProviderToken:
    """The signed JWT and when this process renews it."""

    value: str
    renew_at: float


class TokenSigner:
    """Makes the ES256 provider token (header kid, claims iss and iat) and caches it."""

    def __init__(self, key: EllipticCurvePrivateKey, key_id: str, team_id: str) -> None:
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._token: ProviderToken | None = None

    @classmethod
    def from_file(cls, path: str, key_id: str, team_id: str) -> TokenSigner:
        refusal = f"GATEWAY_APNS_KEY_FILE: {path} is not an APNs .p8 key (a P-256 key in PEM)"
        try:
            with open(path, "rb") as file:
                key = load_pem_private_key(file.read(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(f"{refusal}: {exc}") from None
        if not isinstance(key, EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError(refusal)
        return cls(key, key_id, team_id)

    def current(self) -> str:
        now = time.time()
        if self._token is None or now >= self._token.renew_at:
            self._token = self._sign(now)
        return self._token.value

    def renew(self, rejected: str) -> str:
        """A new token after APNs said ``rejected`` had expired.

        Renewed once however many sends in flight saw the same token refused.
        """
        if self._token is not None and self._token.value == rejected:
            self._token = self._sign(time.time())
        return self.current()

    def _sign(self, now: float) -> ProviderToken:
        value = jwt.encode(
            {"iss": self._team_id, "iat": int(now)},
            self._key,
            algorithm="ES256",
            headers={"kid": self._key_id},
        )
        renew = now + random.uniform(TOKEN_RENEW_MIN, TOKEN_RENEW_MAX)  # noqa: S311
        return ProviderToken(value, renew)


def _reason(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    try:
        body = orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    reason = body.get("reason")
    return (reason if isinstance(reason, str) else str(response.status_code)), body


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


def classify(response: httpx.Response) -> Outcome:
    """An APNs answer as DELIVERY.md's table says (ExpiredProviderToken is the caller's)."""
    status = response.status_code
    if status == 200:
        return Outcome(Verdict.DELIVERED, status=200)
    reason, body = _reason(response)
    if status == 410:
        observed = None
        timestamp = body.get("timestamp")
        if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
            observed = datetime.fromtimestamp(timestamp / 1000, UTC)
        return Outcome(Verdict.PRUNE, status=410, reason=reason, observed_at=observed)
    if status == 400 and reason in DEAD_TOKEN_REASONS:
        return Outcome(
            Verdict.PRUNE, status=400, reason=reason, alarm=reason in CONFIGURATION_REASONS
        )
    if status == 429 and reason not in CREDENTIAL_REASONS:
        return Outcome(
            Verdict.RETRY, status=429, reason=reason, retry_after=_retry_after(response), quota=True
        )
    if status >= 500:
        return Outcome(
            Verdict.RETRY, status=status, reason=reason, retry_after=_retry_after(response)
        )
    # 400 other reasons, 403 credentials, 404/405 (our request), 413 (our payload).
    return Outcome(Verdict.FAILED, status=status, reason=reason, alarm=True)


class ApnsProvider:
    """PushProvider for APNs."""

    provider = Provider.APNS

    def __init__(
        self,
        signer: TokenSigner,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        default_topic: str | None,
        concurrency: int = 256,
    ) -> None:
        self._signer = signer
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._default_topic = default_topic
        self.concurrency = concurrency

    @classmethod
    def from_settings(cls, settings: Settings) -> ApnsProvider | None:
        if settings.apns_key_file is None or not settings.apns_key_id or not settings.apns_team_id:
            return None
        signer = TokenSigner.from_file(
            str(settings.apns_key_file), settings.apns_key_id, settings.apns_team_id
        )
        client = net.build_client(
            settings,
            purpose="apns",
            http2=True,
            # One connection carries every push, up to the stream limit the
            # server announces (APNs: 1,000, above our default 256 in flight);
            # past it httpcore queues a push for a stream rather than opening a
            # connection. The second is for the one that replaces a connection
            # closing after a GOAWAY while it drains.
            max_connections=2,
        )
        return cls(
            signer,
            client,
            base_url=settings.apns_url,
            default_topic=settings.apns_topic,
            concurrency=settings.delivery_concurrency,
        )

    def headers(self, push: Push, topic: str, token: str) -> dict[str, str]:
        kind = push_type(push)
        # Apple requires priority 5 for background pushes.
        priority = "10" if push.priority == "high" and kind != "background" else "5"
        headers = {
            "authorization": f"bearer {token}",
            "apns-topic": topic,
            "apns-push-type": kind,
            "apns-expiration": str(int(push.expires_at.timestamp())),
            "apns-priority": priority,
            "apns-id": str(uuid.uuid5(_APNS_ID_NAMESPACE, f"{push.delivery_id}")),
        }
        if push.collapse_key:
            headers["apns-collapse-id"] = push.collapse_key
        overrides = (push.override or {}).get("headers") or {}
        headers.update({name.lower(): value for name, value in overrides.items()})
        return headers

    async def send(self, push: Push) -> Outcome:
        topic = push.apns_bundle_id or self._default_topic
        if not topic:
            return Outcome(
                Verdict.FAILED,
                reason="no apns-topic: the registration has no bundle id and"
                " GATEWAY_APNS_TOPIC is unset",
                alarm=True,
            )
        url = f"{self._base_url}/3/device/{push.token}"
        body = payload(push)
        token = self._signer.current()
        refreshed = False
        fresh_connection = False
        while True:
            try:
                response = await self._client.post(
                    url, content=body, headers=self.headers(push, topic, token)
                )
            except httpx.RemoteProtocolError as exc:
                # A GOAWAY, or the server closing the connection: the stream was
                # not processed. Once more at once, on a new connection.
                if fresh_connection:
                    return net.transport_outcome(exc)
                fresh_connection = True
                await asyncio.sleep(0)
                continue
            except httpx.HTTPError as exc:
                return net.transport_outcome(exc)
            if response.status_code == 403 and _reason(response)[0] == "ExpiredProviderToken":
                if refreshed:
                    return Outcome(Verdict.RETRY, status=403, reason="ExpiredProviderToken")
                refreshed = True
                token = self._signer.renew(token)
                continue
            return classify(response)

    async def close(self) -> None:
        await self._client.aclose()
