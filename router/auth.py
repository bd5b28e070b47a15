"""API keys for /v1 users (and who a /v1 request is), and tokens for the admin API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router import errors

if TYPE_CHECKING:
    from router.catalog import Snapshot, UserEntry

API_KEY_PREFIX_LEN = 10  # "sk-" + 7 characters: enough to recognise a key, useless to guess it


def generate_api_key() -> str:
    """A new user key: `sk-` and 32 random bytes, URL-safe."""
    return "sk-" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The stored form of a key. Keys carry 256 random bits, so one SHA-256 is enough (no salt needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str:
    return key[:API_KEY_PREFIX_LEN]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(headers: Mapping[str, str], snapshot: Snapshot, local_user: UserEntry | None = None) -> UserEntry:
    """The user behind a /v1 request's API key (`local_user` when accounts are off), or an OpenAI 401."""
    if local_user is not None:
        return local_user
    authorization = headers.get("authorization")
    if authorization and authorization.startswith("Bearer "):  # bearer_token's answer, the usual way spelt
        token = authorization[7:].strip() or headers.get("x-api-key")
    else:
        token = bearer_token(authorization) or headers.get("x-api-key")
    if not token:
        raise errors.unauthorized(
            "Missing API key: send 'Authorization: Bearer <your router key>' (or 'x-api-key: <your router key>')."
        )
    user = snapshot.users_by_key_hash.get(hashlib.sha256(token.encode()).hexdigest())  # hash_api_key, inlined
    if user is None:
        raise errors.unauthorized("Invalid API key.")
    if not user.is_active:
        raise errors.unauthorized("This API key's user is deactivated.")
    return user


class AdminTokens:
    """Verifies the admin password and issues expiring session tokens signed with it.

    Tokens are `<expiry>.<nonce>.<signature>`, where the HMAC key is derived from the admin
    password and `session_secret`: changing the password revokes every session; so does a restart
    unless the operator pins ADMIN_SESSION_SECRET (needed when several processes must accept one
    session). The nonce makes every session distinct, so one can be revoked alone (`logout`).
    """

    def __init__(self, password: str | None, ttl_s: float, session_secret: str | None = None) -> None:
        self.password = password
        self.ttl_s = ttl_s
        secret = session_secret or secrets.token_hex(32)
        self._key = hashlib.sha256(f"{secret}\0{password or ''}".encode()).digest() if password else b""

    @property
    def enabled(self) -> bool:
        return bool(self.password)

    def check_password(self, candidate: str) -> bool:
        if not self.password:
            return False
        return hmac.compare_digest(_utf8(candidate), self.password.encode())

    def issue(self, now: float | None = None) -> tuple[str, float]:
        """A new session token and its expiry (unix seconds)."""
        expires = int((now or time.time()) + self.ttl_s)
        payload = f"{expires}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self.sign(payload)}", float(expires)

    def session_expiry(self, token: str | None) -> float | None:
        """The expiry of a genuine session token (expired or not); None for anything else."""
        if not token or not self.enabled:
            return None
        payload, _, signature = token.rpartition(".")
        expiry = payload.partition(".")[0]
        if not expiry.isdigit() or not hmac.compare_digest(_utf8(signature), self.sign(payload).encode()):
            return None
        return float(expiry)

    def verify(self, token: str | None, now: float | None = None) -> bool:
        """True for the admin password itself or a valid, unexpired session token."""
        if not token or not self.enabled:
            return False
        if self.check_password(token):
            return True
        expiry = self.session_expiry(token)
        return expiry is not None and expiry > (now or time.time())

    def sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_id(token: str) -> str:
    """A short, non-reversible name for a token (what revocation lists store)."""
    return hashlib.sha256(_utf8(token)).hexdigest()[:32]


def _utf8(text: str) -> bytes:
    """Bytes to compare in constant time; header values may hold any character (latin-1 decoded)."""
    return text.encode("utf-8", "surrogateescape")


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """True when `Authorization: Bearer <token>` carries `expected` (compared in constant time)."""
    return hmac.compare_digest(_utf8(bearer_token(authorization) or ""), _utf8(expected))
