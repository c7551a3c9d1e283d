"""Layer's identity tokens: the provider's keys, and the checks a token must pass for a session.

The app's backend vouches for a user by signing an identity token (a JWS,
RS256 only) over a nonce this gateway issued. Verification is PyJWT's; this
module only decides which key, which algorithm and which claims.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import validation
from gateway.errors import IdentityRejected

if TYPE_CHECKING:
    from gateway.config import Settings

ALGORITHM = "RS256"
CONTENT_TYPE = "layer-eit;v=1"
TOKEN_TYPES = frozenset({"JWS", "JWT"})
# Clocks of the app's backend and the gateway disagree a little; more than a
# minute is a token minted for later or kept too long.
CLOCK_SKEW_SECONDS = 60
REQUIRED_CLAIMS = ("iss", "prn", "iat", "exp", "nce")
# What `gateway layer identity-token` signs for: long enough to paste into curl.
DEFAULT_TOKEN_LIFETIME = 600


class IdentityKeyError(ValueError):
    """The identity keys file cannot be used; the message says why."""


def load_identity_keys(path: Path) -> tuple[str, ...]:
    """The RSA public keys of a JWKS file (RFC 7517) as JWK JSON texts, each with a unique kid."""
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise IdentityKeyError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise IdentityKeyError(f"{path} is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise IdentityKeyError(f'{path} must be a JWK Set: {{"keys": [...]}} with at least one key')
    seen: set[str] = set()
    texts = []
    for number, key in enumerate(keys):
        where = f"{path}, key {number}"
        if not isinstance(key, dict):
            raise IdentityKeyError(f"{where} is not a JSON object")
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid:
            raise IdentityKeyError(f"{where} has no kid")
        if kid in seen:
            raise IdentityKeyError(f"{where}: kid {kid!r} appears twice")
        if key.get("kty") != "RSA":
            raise IdentityKeyError(f"{where} ({kid}) must be an RSA key (kty RSA)")
        if "d" in key:
            raise IdentityKeyError(f"{where} ({kid}) holds a private key; publish the public half")
        try:
            jwt.PyJWK(key, ALGORITHM)
        except jwt.PyJWTError as exc:
            raise IdentityKeyError(f"{where} ({kid}) is not a usable RSA key: {exc}") from None
        seen.add(kid)
        texts.append(orjson.dumps(key).decode())
    return tuple(texts)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an identity token vouches for, and the nonce it was signed over."""

    user_id: str
    nonce: str


class IdentityVerifier:
    """Checks identity tokens against one provider's keys, issuer and app id."""

    def __init__(self, keys: tuple[str, ...], provider_id: str, app_id: str) -> None:
        self._keys = {
            jwk.key_id: jwk
            for jwk in (jwt.PyJWK(orjson.loads(text), ALGORITHM) for text in keys)
        }
        self._provider_id = provider_id
        self._app_id = app_id

    def verify(self, token: str, app_id: str) -> Identity:
        if app_id != self._app_id:
            raise IdentityRejected("app_id is not this gateway's app")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise IdentityRejected("the identity token is not a well-formed JWS") from None
        # Checked before any key is touched: the algorithm is ours to choose,
        # never the token's (no "none", no HS256 keyed with the public key).
        if header.get("alg") != ALGORITHM:
            raise IdentityRejected(f"the identity token's alg must be {ALGORITHM}")
        if header.get("cty") != CONTENT_TYPE:
            raise IdentityRejected(f"the identity token's cty must be {CONTENT_TYPE}")
        if "typ" in header and header["typ"] not in TOKEN_TYPES:
            raise IdentityRejected("the identity token's typ must be JWS or JWT")
        key = self._keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
        if key is None:
            raise IdentityRejected("the identity token's kid names no configured key")
        claims = self._claims(token, key)
        user_id, nonce = claims["prn"], claims["nce"]
        if not isinstance(user_id, str):
            raise IdentityRejected("prn (the user id) must be a string")
        try:
            validation.check_identifier(user_id)
        except ValueError as exc:
            raise IdentityRejected(f"prn (the user id) {exc}") from None
        if not isinstance(nonce, str) or not nonce:
            raise IdentityRejected("nce must be a nonce this gateway issued")
        return Identity(user_id, nonce)

    def _claims(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        options: jwt.types.Options = {"require": list(REQUIRED_CLAIMS), "verify_aud": False}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                issuer=self._provider_id,
                leeway=CLOCK_SKEW_SECONDS,
                options=options,
            )
        except jwt.InvalidSignatureError:
            raise IdentityRejected("the identity token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise IdentityRejected(f"the identity token has no {exc.claim} claim") from None
        except jwt.ExpiredSignatureError:
            raise IdentityRejected("the identity token has expired (exp)") from None
        except jwt.ImmatureSignatureError:
            raise IdentityRejected(
                f"the identity token's iat (or nbf) is more than {CLOCK_SKEW_SECONDS} s ahead"
            ) from None
        except jwt.InvalidIssuerError:
            raise IdentityRejected(
                "the identity token's iss is not the configured provider"
            ) from None
        except jwt.PyJWTError as exc:
            # Malformed claims: iat or exp not numbers, a payload that is not JSON.
            raise IdentityRejected(f"the identity token is malformed: {_describe(exc)}") from None
        return claims


def _describe(exc: jwt.PyJWTError) -> str:
    # PyJWT's messages name the claim, never echo the token.
    return str(exc).rstrip(".")


# ------------------------------------------------------ for development: what Layer's dashboard did


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 thumbprint, so the same key always gets the same kid."""
    jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
    members = {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}
    canonical = orjson.dumps(members, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def generate_key_pair(directory: Path) -> tuple[Path, Path]:
    """Writes identity-key.pem (private, mode 0600) and identity-keys.json (the JWKS)."""
    directory.mkdir(parents=True, exist_ok=True)
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_path = directory / "identity-key.pem"
    jwks_path = directory / "identity-keys.json"
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem_path.touch(mode=0o600, exist_ok=False)
    pem_path.write_bytes(pem)
    public = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    public |= {"kid": key_id(private_key.public_key()), "alg": ALGORITHM, "use": "sig"}
    jwks_path.write_bytes(orjson.dumps({"keys": [public]}, option=orjson.OPT_INDENT_2) + b"\n")
    return pem_path, jwks_path


def sign_identity_token(
    private_pem: bytes,
    user_id: str,
    nonce: str,
    provider_id: str,
    lifetime: int = DEFAULT_TOKEN_LIFETIME,
) -> str:
    """An identity token as an app's backend signs it, keyed by the private key's kid."""
    private_key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise IdentityKeyError("the key must be an RSA private key")
    issued = int(time.time())
    return jwt.encode(
        {"iss": provider_id, "prn": user_id, "iat": issued, "exp": issued + lifetime, "nce": nonce},
        private_key,
        algorithm=ALGORITHM,
        headers={"typ": "JWS", "cty": CONTENT_TYPE, "kid": key_id(private_key.public_key())},
    )


def identity_verifier(settings: Settings) -> IdentityVerifier | None:
    """The settings' verifier, or None when the handshake is not configured."""
    if not settings.layer_auth_configured:
        return None
    return IdentityVerifier(
        settings.layer_identity_keys, settings.layer_provider_id or "", settings.layer_app_id or ""
    )
