"""Which backend (and user) a stored Responses-API response belongs to.

A response id is known only to the backend that created it, so `previous_response_id` and
`GET/DELETE /v1/responses/{id}` (and `/cancel`, `/input_items`) must go there, and only the user
who created it may use it. Bindings live in three places, each a fallback for the one before:
this process's memory (bounded LRU), Redis when `REDIS_URL` is set (other processes, restarts;
expiring after `RESPONSE_AFFINITY_TTL_S`), and the request log (`request_logs.response_id`),
read only when both miss, i.e. never on the path of a request that names no stored response.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tortoise import connections

from router.models.analytics import RequestLog

log = logging.getLogger("router.affinity")

MAX_RESPONSE_ID = 128  # request_logs.response_id's size; longer ids are not bound (and never match)


@dataclass(frozen=True, slots=True)
class Binding:
    backend_id: int
    user_id: int

    def encode(self) -> bytes:
        return f"{self.backend_id}:{self.user_id}".encode()

    @classmethod
    def decode(cls, raw: bytes | str | None) -> Binding | None:
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        backend, _, user = text.partition(":")
        if not backend.isdigit() or not user.isdigit():
            return None
        return cls(int(backend), int(user))


class RemoteStore(Protocol):
    """What the Redis side offers (router.shared.SharedState)."""

    async def get_binding(self, key: str) -> bytes | None: ...

    async def set_binding(self, key: str, value: bytes, ttl_s: float) -> None: ...


async def binding_from_log(response_id: str) -> Binding | None:
    """The newest request-log row that created `response_id` (the last resort, after a restart)."""
    conn = connections.get("analytics")
    mark = "?" if conn.capabilities.dialect == "sqlite" else "$1"
    table = RequestLog._meta.db_table
    sql = (
        f"SELECT backend_id, user_id FROM {table} WHERE response_id = {mark} "
        "AND backend_id IS NOT NULL AND user_id IS NOT NULL ORDER BY id DESC LIMIT 1"
    )
    _count, rows = await conn.execute_query(sql, [response_id])
    if not rows:
        return None
    row: Any = rows[0]
    return Binding(int(row["backend_id"]), int(row["user_id"]))


class ResponseAffinity:
    """response id -> Binding, in memory, in Redis (when configured) and in the request log."""

    def __init__(
        self,
        max_entries: int = 100_000,
        ttl_s: float = 30 * 86400,
        remote: RemoteStore | None = None,
        prefix: str = "llm-router",
        from_log: Callable[[str], Awaitable[Binding | None]] = binding_from_log,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.remote = remote
        self.prefix = prefix
        self.from_log = from_log
        self._local: OrderedDict[str, Binding] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}:response:{response_id}"

    def _remember(self, response_id: str, binding: Binding) -> None:
        self._local[response_id] = binding
        self._local.move_to_end(response_id)
        while len(self._local) > self.max_entries:
            self._local.popitem(last=False)

    def bind(self, response_id: str, backend_id: int, user_id: int) -> None:
        """Record who owns a new response; Redis is told in the background (never waits)."""
        if not response_id or len(response_id) > MAX_RESPONSE_ID:
            return
        binding = Binding(backend_id, user_id)
        self._remember(response_id, binding)
        if self.remote is not None:
            task = asyncio.get_running_loop().create_task(self._share(response_id, binding))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _share(self, response_id: str, binding: Binding) -> None:
        assert self.remote is not None
        try:
            await self.remote.set_binding(self._key(response_id), binding.encode(), self.ttl_s)
        except Exception as exc:  # memory and the request log still hold it
            log.warning("sharing the binding of a response through Redis failed: %s", exc)

    async def lookup(self, response_id: str) -> Binding | None:
        """The binding of `response_id`, or None when no process and no log row knows it."""
        if not response_id or len(response_id) > MAX_RESPONSE_ID:
            return None
        binding = self._local.get(response_id)
        if binding is not None:
            return binding
        if self.remote is not None:
            try:
                binding = Binding.decode(await self.remote.get_binding(self._key(response_id)))
            except Exception as exc:
                log.warning("reading a response binding from Redis failed: %s", exc)
        if binding is None:
            try:
                binding = await self.from_log(response_id)
            except Exception as exc:
                log.warning("reading a response binding from the request log failed: %s", exc)
        if binding is not None:
            self._remember(response_id, binding)
        return binding

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
