"""Which models each backend serves: upstream `/models` lists, cached and refreshed in the background."""

from __future__ import annotations

import asyncio
import logging

import orjson

from router.catalog import BackendEntry, Snapshot, resolve_models
from router.upstream import UpstreamClient, UpstreamError

log = logging.getLogger("router.models")


def parse_model_list(body: bytes) -> list[str]:
    """Model ids from an OpenAI `/models` response (`{"data": [{"id": ...}]}`)."""
    data = orjson.loads(body)
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("no 'data' list in /models response")
    return [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


class ModelDirectory:
    """Upstream model lists per backend and the resolved list (override/filter/append) of each.

    `/v1/models` and routing read `models_of()`; it never waits for an upstream. A backend whose
    list was never fetched (or is down) serves its `override`/`append` models only.
    """

    def __init__(self, client: UpstreamClient, fetch_timeout_s: float = 5.0) -> None:
        self._client = client
        self._fetch_timeout_s = fetch_timeout_s
        self._upstream: dict[int, tuple[str, ...]] = {}
        self._resolved: dict[int, frozenset[str]] = {}
        self._ordered: dict[int, tuple[str, ...]] = {}
        self._snapshot = Snapshot()
        self._refresh_tasks: set[asyncio.Task] = set()
        self._failing: dict[int, str] = {}  # backend id -> last error, so a failure streak is logged once

    def models_of(self, backend_id: int) -> frozenset[str]:
        return self._resolved.get(backend_id, frozenset())

    def ordered_models_of(self, backend_id: int) -> tuple[str, ...]:
        return self._ordered.get(backend_id, ())

    def use_snapshot(self, snapshot: Snapshot) -> None:
        """Re-resolve for a new catalog snapshot and fetch lists of new or changed backends."""
        previous = self._snapshot.backends_by_id
        self._snapshot = snapshot
        self._rebuild()
        for backend in snapshot.backends_by_id.values():
            old = previous.get(backend.id)
            changed = old is None or (old.base_url, old.api_key) != (backend.base_url, backend.api_key)
            if backend.asks_upstream_for_models and backend.is_active and changed:
                task = asyncio.get_running_loop().create_task(self.refresh_backend(backend))
                self._refresh_tasks.add(task)
                task.add_done_callback(self._refresh_tasks.discard)

    def _rebuild(self) -> None:
        ordered = {}
        for backend in self._snapshot.backends_by_id.values():
            ordered[backend.id] = resolve_models(
                self._upstream.get(backend.id),
                backend.model_filter,
                list(backend.model_override) if backend.model_override is not None else None,
                list(backend.model_append) if backend.model_append else None,
            )
        self._ordered = ordered
        self._resolved = {backend_id: frozenset(models) for backend_id, models in ordered.items()}

    async def refresh_backend(self, backend: BackendEntry) -> bool:
        """Fetch one backend's `/models`; keep the last good list on failure."""
        headers = {"Accept": "application/json"}
        if backend.api_key:
            headers["Authorization"] = f"Bearer {backend.api_key}"
        try:
            async with asyncio.timeout(self._fetch_timeout_s):
                response = await self._client.send("GET", f"{backend.base_url}/models", headers, None, False)
                body = await response.read()
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            models = tuple(parse_model_list(body))
        except (UpstreamError, TimeoutError, ValueError, KeyError, orjson.JSONDecodeError) as exc:
            error = str(exc) or exc.__class__.__name__
            if self._failing.get(backend.id) != error:
                self._failing[backend.id] = error
                log.warning("could not list models of backend %s: %s", backend.name, error)
            return False
        if self._failing.pop(backend.id, None) is not None:
            log.info("backend %s lists its models again (%d)", backend.name, len(models))
        if self._upstream.get(backend.id) != models:
            self._upstream[backend.id] = models
            self._rebuild()
        return True

    async def refresh_all(self) -> None:
        backends = [b for b in self._snapshot.backends_by_id.values() if b.asks_upstream_for_models and b.is_active]
        await asyncio.gather(*(self.refresh_backend(b) for b in backends))

    async def refresh_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh_all()
