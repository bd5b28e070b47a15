"""Prometheus metrics: one registry per Runtime, observed once per finished /v1 request.

Counters and histograms are updated in `Runtime.finish` (a cached tuple of label children per
(backend, model, status[, user]): a dict lookup and a handful of lock-protected adds). The live
gauges (requests in flight, backend health, log-writer queue depth) are not touched on the
request path at all: a collector reads the Runtime's own state when /metrics is scraped.

Several worker processes (`--workers N`): without `PROMETHEUS_MULTIPROC_DIR` each worker has its
own counters and a scrape sees whichever worker answered. With `PROMETHEUS_MULTIPROC_DIR` set (an
empty directory, wiped before start), prometheus-client keeps the values in files there and
/metrics sums counters and histograms over all workers; the live gauges are then copied into
file-backed gauges once a second by each worker (`livesum`, `livemin`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from router.runtime import Runtime
    from router.usage import RequestRecord

PREFIX = "llm_router"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Beyond this many distinct label combinations, children are no longer cached (still counted).
_MAX_CACHED = 10_000


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class Metrics:
    """The router's Prometheus metrics, in a registry of their own (not the process-global one)."""

    def __init__(self, runtime: Runtime, user_labels: bool = False) -> None:
        self.runtime = runtime
        self.user_labels = user_labels
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        by_user = ("user",) if user_labels else ()
        reg = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Finished /v1 requests by backend, model and HTTP status.",
            ("backend", "model", "status", *by_user),
            registry=reg,
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens reported by the upstreams' usage, by kind (prompt or completion).",
            ("backend", "model", "kind", *by_user),
            registry=reg,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "Time from receiving a /v1 request to its last byte sent.",
            ("backend", "model"),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Streamed requests: time from receiving the request to relaying the first event.",
            ("backend", "model"),
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self._children: dict[tuple, tuple[Any, Any, Any, Any, Any]] = {}
        self._live_gauges: tuple[Gauge, Gauge, Gauge] | None = None
        if self.multiprocess:
            # Live values go through files so that every worker's share is visible.
            self._live_gauges = (
                Gauge(f"{PREFIX}_requests_in_flight", "", ("backend",), multiprocess_mode="livesum", registry=None),
                Gauge(f"{PREFIX}_backend_healthy", "", ("backend",), multiprocess_mode="livemin", registry=None),
                Gauge(f"{PREFIX}_log_queue_depth", "", multiprocess_mode="livesum", registry=None),
            )
        else:
            reg.register(_LiveCollector(runtime))

    # --- the request path ---

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request. Called once per request from Runtime.finish."""
        backend = record.backend_name
        # Only a routed request has a model label: unroutable model names are client-chosen.
        model = (record.model or "") if backend is not None else ""
        status = record.status_code
        key = (backend, model, status, record.user_name) if self.user_labels else (backend, model, status)
        children = self._children.get(key)
        if children is None:
            children = self._make_children(backend or "", model, str(status), record.user_name or "")
            if len(self._children) < _MAX_CACHED:
                self._children[key] = children
        requests, prompt, completion, latency, ttft = children
        requests.inc()
        if record.prompt_tokens:
            prompt.inc(record.prompt_tokens)
        if record.completion_tokens:
            completion.inc(record.completion_tokens)
        latency.observe(record.latency_ms / 1000.0)
        if record.stream and record.ttft_ms is not None:
            ttft.observe(record.ttft_ms / 1000.0)

    def _make_children(self, backend: str, model: str, status: str, user: str) -> tuple[Any, Any, Any, Any, Any]:
        by_user = (user,) if self.user_labels else ()
        return (
            self.requests.labels(backend, model, status, *by_user),
            self.tokens.labels(backend, model, "prompt", *by_user),
            self.tokens.labels(backend, model, "completion", *by_user),
            self.latency.labels(backend, model),
            self.ttft.labels(backend, model),
        )

    # --- scraping ---

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    async def refresh_forever(self, interval_s: float = 1.0) -> None:
        """Multiprocess mode only: copy this worker's live state into the file-backed gauges."""
        while True:
            self.refresh_live()
            await asyncio.sleep(interval_s)

    def refresh_live(self) -> None:
        if self._live_gauges is None:
            return
        in_flight, healthy, queue_depth = self._live_gauges
        for name, value in _in_flight(self.runtime):
            in_flight.labels(name).set(value)
        for name, value in _healthy(self.runtime):
            healthy.labels(name).set(value)
        queue_depth.set(self.runtime.writer.queue_depth)

    def close(self) -> None:
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def _in_flight(rt: Runtime) -> Iterator[tuple[str, int]]:
    for backend in rt.catalog.snapshot.backends_by_id.values():
        yield backend.name, rt.in_flight.get(backend.id)


def _healthy(rt: Runtime) -> Iterator[tuple[str, int]]:
    for backend in rt.catalog.snapshot.backends_by_id.values():
        yield backend.name, int(rt.health.is_healthy(backend.id))


class _LiveCollector(Collector):
    """Reads the Runtime's in-flight counts, backend health and log queue at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rt = self.runtime
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight", "Requests being forwarded to each backend now.", labels=["backend"]
        )
        for name, value in _in_flight(rt):
            in_flight.add_metric([name], value)
        yield in_flight
        healthy = GaugeMetricFamily(
            f"{PREFIX}_backend_healthy",
            "1 when the backend is in rotation, 0 while it cools down after failures.",
            labels=["backend"],
        )
        for name, value in _healthy(rt):
            healthy.add_metric([name], value)
        yield healthy
        yield GaugeMetricFamily(
            f"{PREFIX}_log_queue_depth", "Request-log rows waiting to be written.", value=rt.writer.queue_depth
        )


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics in the Prometheus text format."""
    rt: Runtime = request.app.state.runtime
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)
