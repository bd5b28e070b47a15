"""Admin authentication and the per-request (or per-WebSocket) context of the admin API.

A client authenticates with `Authorization: Bearer <token>`, the token being ADMIN_PASSWORD or a
session token from `login`; over WebSocket the same header goes in the connection_init payload.
Failed attempts (a wrong login password or a wrong bearer token) are counted per client address,
or per browser for one holding a device cookie from an earlier successful login; after a few,
that address (or browser) must wait before trying again, twice as long after each new failure.
Session tokens can be revoked before they expire (`logout`), in every process through Redis.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from graphql import DocumentNode, FieldNode, GraphQLError, get_operation_ast
from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader

from graphql_schema.errors import DISABLED_MESSAGE, FORBIDDEN, UNAUTHENTICATED, api_error
from router.auth import AdminTokens, bearer_token, hash_api_key, token_id
from router.catalog import UserEntry
from router.config import Settings
from router.models.core import Backend, User
from router.runtime import Runtime
from router.services import AdminService

log = logging.getLogger("router.graphql")


class LoginThrottle:
    """Per-address failure counter with an increasing, bounded wait.

    The first `free_attempts` failures cost nothing; each later one blocks the address for
    `base_delay_s * 2**n` seconds (at most `max_delay_s`). A success, or `forget_after_s` without
    failures, resets the address. At most `max_clients` addresses are tracked (oldest forgotten).
    """

    def __init__(
        self,
        free_attempts: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        forget_after_s: float = 900.0,
        max_clients: int = 10_000,
    ) -> None:
        self.free_attempts = free_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_clients = max_clients
        # address -> [failures, blocked until (monotonic), last failure (monotonic)]
        self._clients: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds this address must still wait (0: it may try now)."""
        now = time.monotonic() if now is None else now
        state = self._clients.get(address)
        if state is None:
            return 0.0
        if now - state[2] > self.forget_after_s:
            del self._clients[address]
            return 0.0
        return max(state[1] - now, 0.0)

    def failure(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.retry_after(address, now)  # forgets a stale entry
        state = self._clients.pop(address, None) or [0, 0.0, now]
        state[0] += 1
        state[2] = now
        excess = int(state[0]) - self.free_attempts
        if excess > 0:
            state[1] = now + min(self.base_delay_s * 2 ** (excess - 1), self.max_delay_s)
        self._clients[address] = state
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)

    def success(self, address: str) -> None:
        self._clients.pop(address, None)


class Revocations:
    """Session tokens revoked before they expire (`logout`), by token id until their expiry.

    Kept in this process and, with REDIS_URL, in Redis (`<prefix>:revoked:<id>`, expiring with the
    token) so that every process refuses a revoked session. If Redis cannot be reached, a warning
    is logged and this process's own list still applies.
    """

    MAX_LOCAL = 100_000

    def __init__(self, redis_url: str | None = None, prefix: str = "llm-router") -> None:
        self._local: dict[str, float] = {}
        self._redis_url = redis_url
        self._prefix = prefix
        self._redis: Any = None

    def _client(self) -> Any:
        if self._redis is None and self._redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self._redis_url, socket_connect_timeout=2, socket_timeout=2)
        return self._redis

    async def revoke(self, token: str, expires_at: float) -> None:
        now = time.time()
        self._local = {k: v for k, v in self._local.items() if v > now} if len(self._local) > 1000 else self._local
        if len(self._local) >= self.MAX_LOCAL:  # bounded: forget the sessions closest to expiring anyway
            del self._local[min(self._local, key=self._local.__getitem__)]
        self._local[token_id(token)] = expires_at
        client = self._client()
        if client is not None and expires_at > now:
            try:
                await client.set(f"{self._prefix}:revoked:{token_id(token)}", b"1", exat=int(expires_at) + 1)
            except Exception as exc:
                log.warning("could not share a session revocation through Redis: %s", exc)

    async def is_revoked(self, token: str) -> bool:
        tid = token_id(token)
        if tid in self._local:
            return True
        client = self._client()
        if client is None:
            return False
        try:
            return bool(await client.exists(f"{self._prefix}:revoked:{tid}"))
        except Exception as exc:
            log.warning("could not check session revocations in Redis: %s", exc)
            return False

    async def close(self) -> None:
        """Close the Redis client (its connections), if one was made."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()


DEVICE_COOKIE = "llm_router_device"
DEVICE_COOKIE_MAX_AGE_S = 30 * 24 * 3600


class AdminSecurity:
    """The app's admin token checker, session revocations and login throttle (one per app).

    The throttle counts failures per client address, except for a browser holding a device
    cookie (set by a successful `login`): its failures count against that device only, so
    someone guessing from the same address (a shared NAT or proxy) cannot lock it out.
    """

    def __init__(
        self, tokens: AdminTokens, throttle: LoginThrottle | None = None, revocations: Revocations | None = None
    ) -> None:
        self.tokens = tokens
        self.throttle = throttle or LoginThrottle()
        self.revocations = revocations or Revocations()

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminSecurity:
        return cls(
            AdminTokens(settings.admin_password, settings.admin_session_ttl_s, settings.admin_session_secret),
            revocations=Revocations(settings.redis_url, settings.redis_prefix),
        )

    @property
    def enabled(self) -> bool:
        return self.tokens.enabled

    async def close(self) -> None:
        await self.revocations.close()

    def issue_device(self) -> str:
        nonce = secrets.token_urlsafe(12)
        return f"{nonce}.{self.tokens.sign('device:' + nonce)}"

    def device_key(self, cookie: str | None) -> str | None:
        """The throttle key of a genuine device cookie, else None."""
        if not cookie or not self.enabled:
            return None
        nonce, _, signature = cookie.partition(".")
        expected = self.tokens.sign("device:" + nonce).encode()
        if not nonce or not hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), expected):
            return None
        return f"device:{nonce}"

    async def authenticate(self, token: str | None, who: str) -> GraphQLError | None:
        """None when `token` is valid, else the error to answer with (a failure is counted for `who`)."""
        if not self.enabled:
            return api_error(FORBIDDEN, DISABLED_MESSAGE)
        if not token:
            return api_error(UNAUTHENTICATED, "Admin authentication required: send Authorization: Bearer <token>.")
        blocked = self.throttle.retry_after(who) > 0
        if self.tokens.verify(token):
            if await self.revocations.is_revoked(token):
                return api_error(UNAUTHENTICATED, "The admin session has ended (logged out): log in again.")
            # While `who` is blocked only session tokens work, and the password gets the same
            # answer as a wrong one, so guessing it from there tells nothing.
            if not (blocked and self.tokens.check_password(token)):
                return None
        elif self.tokens.session_expiry(token) is not None:
            # Genuine but expired: not a guess, not counted, so a dashboard left open with an old
            # session cannot lock its admin out of `login`.
            return api_error(UNAUTHENTICATED, "The admin session has expired: log in again.")
        self.throttle.failure(who)
        if blocked:
            return too_many_attempts(self.throttle.retry_after(who))
        return api_error(UNAUTHENTICATED, "Invalid admin token.")


def too_many_attempts(wait_s: float) -> GraphQLError:
    seconds = max(math.ceil(wait_s), 1)
    return api_error(
        UNAUTHENTICATED,
        f"Too many failed attempts from this address: try again in {seconds} s.",
        retryAfterSeconds=seconds,
    )


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


class Loaders:
    """Batched look-ups of users and backends by id for one request (or WebSocket connection)."""

    def __init__(self, admin: AdminService, cache: bool) -> None:
        self.users: DataLoader[int, User | None] = DataLoader(self._load_users, cache=cache)
        self.backends: DataLoader[int, Backend | None] = DataLoader(self._load_backends, cache=cache)
        self._admin = admin

    async def _load_users(self, ids: list[int]) -> list[User | None]:
        found = await self._admin.users_by_id(ids)
        return [found.get(i) for i in ids]

    async def _load_backends(self, ids: list[int]) -> list[Backend | None]:
        found = await self._admin.backends_by_id(ids)
        return [found.get(i) for i in ids]


@dataclass
class AdminContext:
    """What every resolver gets as `info.context`."""

    request: HTTPConnection
    response: Any
    runtime: Runtime
    admin: AdminService
    security: AdminSecurity
    settings: Settings
    address: str
    loaders: Loaders
    # The throttle key of this client: its device cookie's, else its address.
    who: str = ""
    # The bearer token this request or connection authenticated with (None if none or invalid).
    token: str | None = None
    # None once authenticated; otherwise the error every operation but `login` answers with.
    auth_error: GraphQLError | None = None
    # The connection_init payload (WebSocket only); strawberry sets it.
    connection_params: dict[str, Any] | None = field(default=None)
    # Set when the bearer token is a user's own API key: then only `me` may be asked.
    viewer: UserEntry | None = None

    @property
    def authenticated(self) -> bool:
        return self.auth_error is None

    def require_admin(self) -> None:
        if self.auth_error is not None:
            raise self.auth_error


USER_KEY_REFUSED = "A user's API key may only query `me`; everything else needs the admin token."


def viewer_for(runtime: Runtime, token: str | None) -> UserEntry | None:
    """The active user whose API key `token` is (from the in-memory catalog), else None."""
    if not token or not token.startswith("sk-"):
        return None
    user = runtime.catalog.snapshot.users_by_key_hash.get(hash_api_key(token))
    return user if user is not None and user.is_active else None


# Root fields anyone may ask for (everything else needs an admin token).
PUBLIC_ROOT_FIELDS = frozenset({"login", "__typename"})
# Root fields a user's own API key may ask for.
VIEWER_ROOT_FIELDS = frozenset({"me", "__typename"})


def public_only(
    document: DocumentNode | None, operation_name: str | None, allowed: frozenset[str] = PUBLIC_ROOT_FIELDS
) -> bool:
    """True when the operation selects nothing but `allowed` root fields."""
    operation = get_operation_ast(document, operation_name) if document is not None else None
    if operation is None:
        return False
    return all(
        isinstance(selection, FieldNode) and selection.name.value in allowed
        for selection in operation.selection_set.selections
    )


def allowed_roots(context: Any) -> frozenset[str]:
    """The root fields this caller may use without an admin token."""
    return VIEWER_ROOT_FIELDS if getattr(context, "viewer", None) is not None else PUBLIC_ROOT_FIELDS


def token_from_params(params: Any) -> str | None:
    """The bearer token of a connection_init payload {"Authorization": "Bearer <token>"}."""
    if not isinstance(params, dict):
        return None
    for key, value in params.items():
        if isinstance(key, str) and key.lower() == "authorization" and isinstance(value, str):
            return bearer_token(value)
    return None
