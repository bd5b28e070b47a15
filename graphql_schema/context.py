"""Admin authentication and the per-request (or per-WebSocket) context of the admin API.

A client authenticates with `Authorization: Bearer <token>`, the token being ADMIN_PASSWORD or a
session token from `login`; over WebSocket the same header goes in the connection_init payload.
Failed attempts (a wrong login password or a wrong bearer token) are counted per client address;
after a few, that address must wait before trying again, twice as long after each new failure.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError
from starlette.requests import HTTPConnection
from strawberry.dataloader import DataLoader

from graphql_schema.errors import DISABLED_MESSAGE, FORBIDDEN, UNAUTHENTICATED, api_error
from router.auth import AdminTokens, bearer_token, hash_api_key
from router.catalog import UserEntry
from router.config import Settings
from router.models.core import Backend, User
from router.runtime import Runtime
from router.services import AdminService


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


class AdminSecurity:
    """The app's admin token checker and login throttle (one per app)."""

    def __init__(self, tokens: AdminTokens, throttle: LoginThrottle | None = None) -> None:
        self.tokens = tokens
        self.throttle = throttle or LoginThrottle()

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminSecurity:
        return cls(AdminTokens(settings.admin_password, settings.admin_session_ttl_s, settings.admin_session_secret))

    @property
    def enabled(self) -> bool:
        return self.tokens.enabled

    def authenticate(self, token: str | None, address: str) -> GraphQLError | None:
        """None when `token` is valid, else the error to answer with (and the failure is counted)."""
        if not self.enabled:
            return api_error(FORBIDDEN, DISABLED_MESSAGE)
        if not token:
            return api_error(UNAUTHENTICATED, "Admin authentication required: send Authorization: Bearer <token>.")
        blocked = self.throttle.retry_after(address) > 0
        if self.tokens.verify(token):
            # While an address is blocked only session tokens work, and the password gets the same
            # answer as a wrong one, so guessing it from there tells nothing.
            if not (blocked and self.tokens.check_password(token)):
                return None
        elif self.tokens.verify(token, now=1.0):
            # Genuine but expired (it would have been valid long ago): not a guess, not counted, so
            # a dashboard left open with an old session cannot lock its admin out of `login`.
            return api_error(UNAUTHENTICATED, "The admin session has expired: log in again.")
        self.throttle.failure(address)
        if blocked:
            return too_many_attempts(self.throttle.retry_after(address))
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


def token_from_params(params: Any) -> str | None:
    """The bearer token of a connection_init payload {"Authorization": "Bearer <token>"}."""
    if not isinstance(params, dict):
        return None
    for key, value in params.items():
        if isinstance(key, str) and key.lower() == "authorization" and isinstance(value, str):
            return bearer_token(value)
    return None
