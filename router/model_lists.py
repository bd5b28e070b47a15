"""Which models each backend serves: upstream `/models` lists, cached and refreshed in the background."""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from router.catalog import BackendEntry, Snapshot, resolve_models
from router.upstream import UpstreamClient, UpstreamError
from router.upstream_auth import upstream_auth
from router.urls import redact_text, redact_url

log = logging.getLogger("router.model_lists")


def parse_model_list(body: bytes) -> list[str]:
    """Model ids from an OpenAI `/models` response (`{"data": [{"id": ...}]}`)."""
    data = orjson.loads(body)
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("no 'data' list in /models response")
    return [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


def close_model_names(wanted: str, available: Iterable[str], limit: int = 5) -> list[str]:
    """Up to `limit` of `available` that look like `wanted`: a typo, another casing or version, a prefix.

    Best first: same name in another case, then names containing it (or contained in it), then
    difflib's close matches.
    """
    names = list(dict.fromkeys(available))
    if not wanted or not names:
        return []
    folded = wanted.casefold().split("]")[-1]  # "[alias]model": compare the model part
    by_fold: dict[str, list[str]] = {}
    for name in names:
        by_fold.setdefault(name.casefold(), []).append(name)
    ranked: list[str] = list(by_fold.get(folded, []))
    if len(folded) >= 3:
        ranked += sorted((n for n in names if folded in n.casefold() or n.casefold() in folded), key=len)
    ranked += [n for f in difflib.get_close_matches(folded, list(by_fold), n=limit, cutoff=0.6) for n in by_fold[f]]
    return list(dict.fromkeys(ranked))[:limit]


@dataclass(frozen=True)
class Probe:
    """What one `GET {base_url}/models` found: the status (None: no answer), time taken, models."""

    status: int | None
    latency_ms: float
    models: tuple[str, ...] | None = None  # None unless a 200 with a readable list
    error: str | None = None  # why there is no list, in words


async def probe_models(client: UpstreamClient, backend: BackendEntry, timeout_s: float) -> Probe:
    """Ask a backend for its models, with its own key, within `timeout_s`. Never raises."""
    headers = {"Accept": "application/json"}
    auth = upstream_auth(backend.base_url, backend.auth_header, backend.api_key)
    if auth is not None:
        headers[auth[0]] = auth[1]
    started = time.perf_counter()
    status: int | None = None

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        async with asyncio.timeout(timeout_s):
            response = await client.send("GET", f"{backend.base_url}/models", headers, None, False)
            status = response.status
            body = await response.read()
    except TimeoutError:
        return Probe(status, elapsed(), error=f"no answer within {timeout_s:g} s")
    except UpstreamError as exc:
        return Probe(status, elapsed(), error=redact_text(str(exc)))
    latency = elapsed()
    if status != 200:
        return Probe(status, latency, error=f"HTTP {status} from {redact_url(backend.base_url)}/models")
    try:
        return Probe(status, latency, tuple(parse_model_list(body)))
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        return Probe(status, latency, error=f"unreadable /models answer: {exc}")


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
        self._refresh_tasks: set[asyncio.Task[bool]] = set()
        self._failing: dict[int, str] = {}  # backend id -> last error, so a failure streak is logged once
        self.version = 0  # moves whenever the resolved lists may have changed (what routes cached from them check)

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
            was = (old.base_url, old.api_key, old.auth_header) if old is not None else None
            changed = was != (backend.base_url, backend.api_key, backend.auth_header)
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
        self.version += 1

    async def refresh_backend(self, backend: BackendEntry) -> bool:
        """Fetch one backend's `/models`; keep the last good list on failure."""
        probe = await probe_models(self._client, backend, self._fetch_timeout_s)
        if probe.models is None:
            error = probe.error or "no model list"
            if self._failing.get(backend.id) != error:
                self._failing[backend.id] = error
                log.warning("could not list models of backend %s: %s", backend.name, error)
            return False
        self.accept(backend, probe.models)
        return True

    def accept(self, backend: BackendEntry, models: tuple[str, ...]) -> None:
        """Use a freshly fetched upstream list (from a refresh or an active health check)."""
        if self._failing.pop(backend.id, None) is not None:
            log.info("backend %s lists its models again (%d)", backend.name, len(models))
        if self._upstream.get(backend.id) != models:
            self._upstream[backend.id] = models
            self._rebuild()

    async def refresh_all(self) -> None:
        backends = [b for b in self._snapshot.backends_by_id.values() if b.asks_upstream_for_models and b.is_active]
        await asyncio.gather(*(self.refresh_backend(b) for b in backends))

    async def refresh_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh_all()
