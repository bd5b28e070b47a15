"""Active health checks: a cheap `GET {base_url}/models` per active backend, in the background.

Every `HEALTH_CHECK_INTERVAL_S` (default 10) one round checks every active backend, each within
`HEALTH_CHECK_TIMEOUT_S` (default 5). `CHECK_FAILURES_TO_DOWN` failed checks in a row mark a
backend down; one passing check brings it back (see `HealthTracker.record_check`). So with the
defaults a backend that dies shows unhealthy within 25 s, and one that comes back shows healthy
within 10 s of its cooldown, without any traffic.

With Redis, one process per round does the checking: the first to take the
`<prefix>:health-check` lock (expiring before the next round). It shares the results, and the
up/down changes go out through the usual health channel. If Redis is away, each process checks
for itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from router.catalog import BackendEntry, Catalog
from router.model_lists import ModelDirectory, Probe, probe_models
from router.routing import CheckResult, HealthTracker
from router.upstream import UpstreamClient

log = logging.getLogger("router.health")

MAX_PARALLEL_CHECKS = 16


def check_verdict(probe: Probe) -> str | None:
    """Why a probe says the backend cannot serve (None: it can).

    Reachable and answering is healthy, even a 404 (a server without /models still serves
    completions) or a 429 (busy, not dead); no answer, a 5xx, or a refused key (401/403, every
    request would fail the same way) is not.
    """
    if probe.status is None:
        return probe.error or "no answer"
    if probe.status >= 500:
        return f"HTTP {probe.status} from /models"
    if probe.status in (401, 403):
        return f"HTTP {probe.status} from /models: the backend refuses its configured API key"
    return None


@dataclass(frozen=True)
class ConnectionTest:
    """The result of testing one backend now (the admin API's `testBackendConnection`)."""

    backend: BackendEntry
    probe: Probe
    problem: str | None
    result: CheckResult

    @property
    def ok(self) -> bool:
        return self.problem is None


class HealthChecker:
    """Runs the check rounds of one process; `lead` decides whether this process checks this round."""

    def __init__(
        self,
        catalog: Catalog,
        models: ModelDirectory,
        health: HealthTracker,
        client: UpstreamClient,
        timeout_s: float,
        lead: Callable[[], Awaitable[bool]] | None = None,
        share: Callable[[dict[int, CheckResult]], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.models = models
        self.health = health
        self.client = client
        self.timeout_s = timeout_s
        self._lead = lead
        self._share = share
        self.rounds = 0  # rounds this process checked (tests and metrics)

    async def test(self, backend: BackendEntry) -> ConnectionTest:
        """Check one backend now; the result counts as a health check."""
        return await self._check(backend)

    async def run_forever(self, interval_s: float) -> None:
        """A round every `interval_s` (start to start, so slow answers do not stretch the period), the first
        one interval after start-up (start-up lists models anyway)."""
        next_round = time.monotonic() + interval_s
        while True:
            await asyncio.sleep(max(0.0, next_round - time.monotonic()))
            next_round = max(next_round + interval_s, time.monotonic())
            try:
                if self._lead is None or await self._lead():
                    await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health check round failed")

    async def round(self) -> dict[int, CheckResult]:
        snapshot = self.catalog.snapshot
        self.health.forget(snapshot.backends_by_id)
        backends = [b for b in snapshot.backends_by_id.values() if b.is_active]
        limit = asyncio.Semaphore(MAX_PARALLEL_CHECKS)

        async def one(backend: BackendEntry) -> ConnectionTest:
            async with limit:
                return await self._check(backend)

        tests = await asyncio.gather(*(one(b) for b in backends))
        self.rounds += 1
        results = {t.backend.id: t.result for t in tests}
        if self._share is not None and results:
            self._share(results)
        return results

    async def _check(self, backend: BackendEntry) -> ConnectionTest:
        probe = await probe_models(self.client, backend, self.timeout_s)
        problem = check_verdict(probe)
        result = CheckResult(time.time(), problem is None, probe.latency_ms, problem)
        change = self.health.record_check(backend.id, result)
        if change is True:
            log.warning("backend %s marked unhealthy: health check failed: %s", backend.name, problem)
        elif change is False:
            log.warning("backend %s is healthy again (health check passed in %.0f ms)", backend.name, probe.latency_ms)
        if probe.models is not None and backend.asks_upstream_for_models:
            self.models.accept(backend, probe.models)
        return ConnectionTest(backend, probe, problem, result)
