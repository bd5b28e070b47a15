"""The one object that owns the router's live state: created at start-up, closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from router.affinity import ResponseAffinity
from router.analytics_queries import spent_by_user
from router.catalog import BackendEntry, Catalog, UserEntry, split_alias
from router.config import Settings
from router.crypto import SecretBox
from router.health import HealthChecker
from router.hooks import retain_scripts
from router.limits import Admission, Limiter, RedisStore, make_store
from router.live import HealthFeed, UsageTicker
from router.logging_setup import direct_handler
from router.metrics import LiveValues, Metrics
from router.model_lists import ModelDirectory
from router.quota_events import QuotaEventFeed
from router.routing import HealthTracker, InFlight, WeightedRoundRobin, order_least_busy
from router.scripts import script_engine
from router.upstream import UpstreamClient, make_upstream_client
from router.usage import EventBus, LogWriter, RequestRecord

if TYPE_CHECKING:
    from router.shared import SharedState
    from router.tracing import LangfuseTracer

log = logging.getLogger("router.requests")
# The per-request INFO line (its arguments: `Runtime.finish`).
ACCESS_LINE = "request id=%s %s %s user=%s backend=%s model=%s status=%d tokens=%d/%d latency_ms=%.1f%s"

LOCAL_USER_NAME = "local"


def access_args(record: RequestRecord) -> tuple[object, ...]:
    """ACCESS_LINE's arguments for a finished request."""
    return (
        record.request_id,
        record.method,
        record.endpoint,
        record.user_name,
        record.backend_name,
        record.model,
        record.status_code,
        record.prompt_tokens,
        record.completion_tokens,
        record.latency_ms,
        f" error={record.error[:200]!r}" if record.error else "",
    )


class NullTracer:
    """Tracing off: nothing collected, nothing sent."""

    enabled = False

    def record(self, record: RequestRecord) -> None:
        pass

    async def close(self) -> None:
        pass


class Runtime:
    """Caches, counters, clients and background tasks shared by every request of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = Catalog(SecretBox(settings.secrets_key))
        self.upstream: UpstreamClient = make_upstream_client(
            settings.upstream_transport,
            settings.upstream_connect_timeout_s,
            settings.upstream_timeout_s,
            settings.max_upstream_answer_bytes,
        )
        self.models = ModelDirectory(self.upstream)
        self.health = HealthTracker(settings.health_failure_threshold, settings.health_cooldown_s)
        self.health_feed = HealthFeed()  # backendHealthChanged subscribers
        self.quota_events = QuotaEventFeed()  # quotaEvents subscribers
        self.in_flight = InFlight()
        self.round_robin = WeightedRoundRobin()
        self.bus = EventBus(settings.subscriber_queue_size)
        self.writer = LogWriter(
            settings.log_batch_size,
            settings.log_flush_interval_s,
            settings.log_buffer_max,
        )
        self.tracer: NullTracer | LangfuseTracer = NullTracer()
        if settings.langfuse_enabled:
            from router.tracing import LangfuseTracer  # langfuse is imported only when configured

            self.tracer = LangfuseTracer(settings)
        self.metrics = Metrics(
            self.models.models_of,
            self.live_values,
            settings.metrics_user_labels,
            multiprocess=settings.prometheus_multiproc_dir is not None,
        )
        # Extra upstream response headers clients may see (UPSTREAM_RESPONSE_HEADERS), lower-case.
        self.passed_headers = tuple(h.strip().lower() for h in settings.upstream_response_headers if h.strip())
        self.scripts = script_engine(
            settings.script_isolation, settings.script_timeout_ms, settings.script_max_memory_mb
        )
        # Rate limits, budgets and backend queues: shared through Redis when REDIS_URL is set.
        self.limiter = Limiter(
            make_store(settings.redis_url, f"{settings.redis_prefix}"),
            settings.limits_default_max_tokens,
            settings.queue_timeout_s,
        )
        # Personal mode (ENABLE_ACCOUNT_MANAGEMENT=false): every request acts as this user.
        self.local_user_id: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # REDIS_URL: catalog changes, request-log rows, backend health and in-flight counts are shared.
        self.shared: SharedState | None = None
        if settings.redis_url:
            from router.shared import SharedState

            self.shared = SharedState(settings, self.catalog, self.health, self.in_flight, self.bus)
        self.affinity = ResponseAffinity(
            settings.response_affinity_max, settings.response_affinity_ttl_s, self.shared, settings.redis_prefix
        )
        # usageTicks: per-second aggregates, summed across processes in Redis when shared.
        self.ticker = UsageTicker(self.shared.redis if self.shared is not None else None, settings.redis_prefix)
        self.checker = HealthChecker(
            self.catalog,
            self.models,
            self.health,
            self.upstream,
            settings.health_check_timeout_s,
            lead=self.shared.lead_health_round if self.shared is not None else None,
            share=self.shared.share_checks if self.shared is not None else None,
        )
        self._connect()

    def _connect(self) -> None:
        """Every event one component passes to others (router.signals), in one place."""
        self.catalog.on_reload.connect(self.models.use_snapshot)
        self.catalog.on_reload.connect(lambda snapshot: retain_scripts(self.scripts, snapshot))  # free what went
        self.health.on_transition.connect(self.health_feed)
        self.writer.on_written.connect(self.bus.publish)  # this process's subscribers get its own rows, once
        self.limiter.on_limit.connect(self.quota_events.local)
        if self.shared is not None:  # and the other processes, through Redis
            self.catalog.on_change.connect(self.shared.catalog_changed)
            self.health.on_change.connect(self.shared.health_changed)
            self.writer.on_written.connect(self.shared.records_written)
            self.quota_events.on_share.connect(self.shared.quota_event)
            self.shared.on_quota_event.connect(self.quota_events.remote)

    # --- lifecycle ---

    async def start(self) -> None:
        await self.catalog.reload()
        # Give the upstream model lists a moment so the first requests can be routed by model.
        try:
            await asyncio.wait_for(self.models.refresh_all(), timeout=3.0)
        except TimeoutError:
            log.warning("some backends did not list their models within 3 s; continuing")
        self.writer.start()
        self.ticker.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.catalog.poll_forever(self.settings.catalog_poll_interval_s)),
            loop.create_task(self.models.refresh_forever(self.settings.model_refresh_interval_s)),
        ]
        if self.metrics.multiprocess:
            self._tasks.append(loop.create_task(self.metrics.refresh_forever()))
        if self.settings.health_check_interval_s > 0:
            interval = self.settings.health_check_interval_s
            self._tasks.append(loop.create_task(self.checker.run_forever(interval), name="health-checks"))
        if self.shared is not None:
            await self.shared.start()
        if isinstance(self.limiter.store, RedisStore):
            await self.limiter.store.start()
        try:  # spend so far this period, before the first request is admitted
            await asyncio.wait_for(self.sync_budgets(), timeout=5.0)
        except Exception as exc:
            log.warning("could not read this period's spend from the rollups yet: %s", exc)
        self._tasks.append(loop.create_task(self._sync_budgets_forever(), name="budget-sync"))

    async def sync_budgets(self) -> None:
        """Raise budgeted users' spend counters to what the rollups hold (other processes' spend too)."""
        await self.limiter.seed_budgets(self.catalog.snapshot.users_by_id.values(), spent_by_user)

    async def _sync_budgets_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.budget_sync_interval_s)
            try:
                await self.sync_budgets()
            except Exception as exc:  # the database may be briefly away
                log.warning("budget sync failed: %s", exc)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ticker.stop()
        await self.writer.close(self.settings.shutdown_grace_s)
        await self.affinity.close()
        if self.shared is not None:
            await self.shared.stop()  # after the writer: its last rows still reach the other processes
        if isinstance(self.limiter.store, RedisStore):
            await self.limiter.store.stop()
        await self.tracer.close()
        await self.scripts.close()
        self.metrics.close()
        await self.upstream.aclose()

    @property
    def local_user(self) -> UserEntry | None:
        if self.local_user_id is None:
            return None
        return self.catalog.snapshot.users_by_id.get(self.local_user_id)

    def live_values(self) -> LiveValues:
        """The live gauges of /metrics, per backend the catalog knows."""
        backends = self.catalog.snapshot.backends_by_id.values()
        queues = self.limiter.queues
        return LiveValues(
            in_flight=[(b.name, self.in_flight.get(b.id)) for b in backends],
            healthy=[(b.name, int(self.health.is_healthy(b.id))) for b in backends],
            queued=[(b.name, q.depth if (q := queues.get(b.id)) is not None else 0) for b in backends],
            log_queue_depth=self.writer.queue_depth,
        )

    # --- routing state ---

    def order_backends(self, candidates: Sequence[BackendEntry]) -> list[BackendEntry]:
        if self.settings.routing_strategy == "least_busy":
            return order_least_busy(candidates, self.in_flight.cluster)  # local + other processes (Redis)
        return self.round_robin.order(candidates)

    def record_failure(self, backend: BackendEntry | None, reason: str | None = None) -> None:
        if backend is not None and self.health.record_failure(backend.id, reason):
            log.warning(
                "backend %s marked unhealthy for %.0f s: %s",
                backend.name,
                self.settings.health_cooldown_s,
                self.health.status(backend.id).reason,
            )

    # --- accounting ---

    def finish(self, record: RequestRecord, status: int, error: str | None = None) -> None:
        """A request is over: log it, queue its row, trace it. Never raises, never waits."""
        record.finish(status, error)
        prices = self.catalog.snapshot.prices
        if prices and record.model:
            record.cost_usd = prices.cost(
                split_alias(record.model)[1],
                record.backend_id,
                record.prompt_tokens,
                record.completion_tokens,
                record.cached_tokens,
                record.cache_write_tokens,
            )
        self.writer.submit(record)
        self.ticker.add(record)
        if record.admission is not None:
            self.settle(record.admission, record)
        self.tracer.record(record)
        self.metrics.observe(record)
        handler = direct_handler(log)  # None also when the line is not logged (log level above INFO)
        if handler is not None:  # the served set-up: the same line, without a LogRecord (~3 µs)
            handler.info(log.name, ACCESS_LINE % access_args(record))
        elif log.isEnabledFor(logging.INFO):
            log.info(ACCESS_LINE, *access_args(record))

    def settle(self, admission: Admission, record: RequestRecord) -> None:
        """In `finish`: the request's real tokens and cost replace its reservation; slots are freed."""
        # An error answer used no tokens (its reservation goes back); a stream the client cut (499)
        # without usage keeps its reservation: its tokens were probably spent.
        failed = record.status_code >= 400 and record.status_code != 499
        self.limiter.settle(admission, record.total_tokens, record.cost_usd, failed=failed)
