"""FCM HTTP v1: one ``messages:send`` per push, with an OAuth2 token from a service account.

The access token comes from the service account's own ``token_uri`` by a
JWT-bearer grant (RFC 7523) signed RS256 with PyJWT, and is fetched over the
same guarded httpx client as the sends. google-auth would do the grant too,
but its refresh goes through a synchronous transport (requests or urllib3)
that would block the event loop for a whole round trip to Google; signing a
JWT is a millisecond of CPU once an hour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.commands import Provider
from gateway.config import ConfigError, Settings
from gateway.delivery import net
from gateway.delivery.providers import Outcome, Push, Verdict

log = logging.getLogger("gateway.delivery.fcm")

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# FCM refuses a message whose data payload is over 4096 bytes.
FCM_DATA_LIMIT = 4096
# An access token is renewed this long before Google says it expires, so a
# send never goes out with a token that dies on the way.
TOKEN_MARGIN = 300.0
# After the token endpoint refuses our grant, sends fail at once for this long
# instead of each asking Google again with the same bad credential.
REFUSAL_HOLD = 30.0
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True)
class ServiceAccount:
    """The fields of a Google service-account JSON that the grant needs."""

    project_id: str
    client_email: str
    private_key_id: str | None
    private_key: RSAPrivateKey
    token_uri: str

    @classmethod
    def load(cls, path: Path) -> ServiceAccount:
        name = "GATEWAY_FCM_CREDENTIALS"
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{name}: {path} is not a readable JSON file: {exc}") from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ConfigError(f"{name}: {path} is not a service-account JSON (type)")
        missing = [
            key
            for key in ("project_id", "client_email", "private_key", "token_uri")
            if not isinstance(info.get(key), str) or not info[key]
        ]
        if missing:
            raise ConfigError(f"{name}: {path} lacks {', '.join(missing)}")
        if not info["token_uri"].startswith("https://"):
            raise ConfigError(f"{name}: token_uri must be an https:// URL")
        try:
            key = load_pem_private_key(info["private_key"].encode(), password=None)
        except ValueError:
            raise ConfigError(f"{name}: private_key is not a PEM private key") from None
        if not isinstance(key, RSAPrivateKey):
            raise ConfigError(f"{name}: private_key must be an RSA key (the grant is RS256)")
        return cls(
            project_id=info["project_id"],
            client_email=info["client_email"],
            private_key_id=info.get("private_key_id") or None,
            private_key=key,
            token_uri=info["token_uri"],
        )


class TokenRefused(Exception):
    """The token endpoint refused the grant: a credential an operator must fix."""


class AccessTokens:
    """The OAuth2 access token, fetched once for every send waiting on it and cached."""

    def __init__(self, account: ServiceAccount, client: httpx.AsyncClient) -> None:
        self._account = account
        self._client = client
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._refused: tuple[float, str] | None = None
        self.fetched = 0

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self._account.client_email,
            "scope": SCOPE,
            "aud": self._account.token_uri,
            "iat": now,
            "exp": now + 3600,
        }
        headers = {"kid": self._account.private_key_id} if self._account.private_key_id else None
        return jwt.encode(claims, self._account.private_key, algorithm="RS256", headers=headers)

    async def get(self, stale: str | None = None) -> str:
        """A valid token; ``stale`` is one the service refused, so not to be returned again."""
        async with self._lock:
            cached = self._token
            if cached is not None and cached != stale and time.monotonic() < self._expires:
                return cached
            if self._refused is not None and time.monotonic() < self._refused[0]:
                raise TokenRefused(self._refused[1])
            try:
                return await self._fetch()
            except TokenRefused as exc:
                # Logged once per hold, not once per push that it fails.
                log.error("fcm credentials refused", extra={"reason": str(exc)})
                self._refused = (time.monotonic() + REFUSAL_HOLD, str(exc))
                raise

    async def _fetch(self) -> str:
        """One grant at the token endpoint; the caller holds the lock."""
        response = await self._client.post(
            self._account.token_uri,
            data={"grant_type": GRANT_TYPE, "assertion": self._assertion()},
        )
        if response.status_code >= 500 or response.status_code == 429:
            response.raise_for_status()  # transient: the send is retried
        try:
            answer = response.json()
            token, lifetime = answer["access_token"], float(answer.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise TokenRefused(
                f"token endpoint answered {response.status_code}: {response.text[:200]}"
            ) from None
        if response.status_code != 200 or not isinstance(token, str):
            raise TokenRefused(f"token endpoint answered {response.status_code}")
        self._token = token
        self._expires = time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN)
        self.fetched += 1
        return token


def message_data(push: Push) -> dict[str, str]:
    """The data map FCM receives: the ``fcm`` override's ``data``, else the message's;
    FCM takes strings only, so any other JSON value goes as its JSON text."""
    override = (push.override or {}).get("data")
    data: dict[str, Any] = override if isinstance(override, dict) else push.data
    return {
        str(key): value if isinstance(value, str) else orjson.dumps(value).decode()
        for key, value in data.items()
    }


def data_size(push: Push) -> int:
    """Bytes FCM counts against FCM_DATA_LIMIT: UTF-8 keys plus values of the data map."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in message_data(push).items())


def build_message(push: Push, now: datetime | None = None) -> dict[str, Any]:
    """The v1 ``message`` for one push; the ``fcm`` override's ``android`` keys win."""
    remaining = (push.expires_at - (now or datetime.now(UTC))).total_seconds()
    android: dict[str, Any] = {
        "priority": "HIGH" if push.priority == "high" else "NORMAL",
        "ttl": f"{max(0, math.ceil(remaining))}s",
    }
    if push.collapse_key is not None:
        android["collapse_key"] = push.collapse_key
    override_android = (push.override or {}).get("android")
    if isinstance(override_android, dict):
        android.update(override_android)
    message: dict[str, Any] = {"token": push.token, "android": android}
    notification = {k: v for k, v in (("title", push.title), ("body", push.body)) if v is not None}
    if notification:
        message["notification"] = notification
    data = message_data(push)
    if data:
        message["data"] = data
    return message


def _error(response: httpx.Response) -> tuple[str, str, bool]:
    """(errorCode or status, message, whether a field violation names the token)."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return "", response.text[:200], False
    if not isinstance(error, dict):
        return "", str(error)[:200], False
    code = str(error.get("status") or "")
    token_field = False
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == _FCM_ERROR and detail.get("errorCode"):
            code = str(detail["errorCode"])
        if detail.get("@type") == _BAD_REQUEST:
            fields = [
                v.get("field") for v in detail.get("fieldViolations") or [] if isinstance(v, dict)
            ]
            token_field = token_field or "message.token" in fields
    return code, str(error.get("message") or "")[:200], token_field


def classify(response: httpx.Response) -> Outcome:
    """DELIVERY.md's FCM rows. A 401 reaching here has already had its one refresh."""
    status = response.status_code
    if status == 200:
        return Outcome(Verdict.DELIVERED, status=status)
    code, message, token_field = _error(response)
    reason = f"{code}: {message}" if code else message
    if status == 404 and code == "UNREGISTERED":
        return Outcome(Verdict.PRUNE, status=status, reason=reason)
    if status == 403 and code == "SENDER_ID_MISMATCH":
        return Outcome(Verdict.PRUNE, status=status, reason=reason)
    if status == 400 and code == "INVALID_ARGUMENT":
        # FCM says which argument: a token it cannot parse is dead; anything
        # else is a message we built wrong.
        if token_field or "registration token" in message.lower():
            return Outcome(Verdict.PRUNE, status=status, reason=reason)
        return Outcome(Verdict.FAILED, status=status, reason=reason, alarm=True)
    retry = net.http_retry(response, reason)
    if retry is not None:
        return retry
    # 401 after a refresh, 403 PERMISSION_DENIED, a 404 for a wrong project...
    return Outcome(Verdict.FAILED, status=status, reason=reason, alarm=True)


class FcmProvider:
    """FCM HTTP v1 behind the PushProvider interface."""

    provider = Provider.FCM

    def __init__(
        self,
        account: ServiceAccount,
        client: httpx.AsyncClient,
        base_url: str = "https://fcm.googleapis.com",
        concurrency: int = 256,
    ) -> None:
        self.concurrency = concurrency
        self._client = client
        self._url = f"{base_url.rstrip('/')}/v1/projects/{account.project_id}/messages:send"
        self.tokens = AccessTokens(account, client)

    @classmethod
    def from_settings(cls, settings: Settings) -> FcmProvider | None:
        """The provider, or None when GATEWAY_FCM_CREDENTIALS is not set."""
        if settings.fcm_credentials is None:
            return None
        account = ServiceAccount.load(settings.fcm_credentials)
        client = net.build_client(settings, purpose="fcm")
        return cls(account, client, settings.fcm_url, settings.delivery_concurrency)

    async def send(self, push: Push) -> Outcome:
        body = orjson.dumps({"message": build_message(push)})
        refused: str | None = None
        try:
            for _ in range(2):
                token = await self.tokens.get(stale=refused)
                response = await self._client.post(
                    self._url,
                    content=body,
                    headers={
                        "authorization": f"Bearer {token}",
                        "content-type": "application/json; charset=UTF-8",
                    },
                )
                if response.status_code != 401 or refused is not None:
                    break
                refused = token
        except TokenRefused as exc:
            return Outcome(Verdict.FAILED, reason=f"OAuth: {exc}", alarm=True)
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            return Outcome(
                Verdict.RETRY,
                status=status,
                reason=f"OAuth token endpoint answered {status}",
                retry_after=net.retry_after(exc.response.headers),
            )
        except httpx.HTTPError as exc:
            return net.transport_outcome(exc)
        return classify(response)

    async def close(self) -> None:
        await self._client.aclose()
