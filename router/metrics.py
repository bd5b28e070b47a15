"""Prometheus metrics: one registry per Runtime, observed once per finished /v1 request.

Counters and histograms are updated in `Runtime.finish` (a cached tuple of label children per
(backend, model, status[, user]): a dict lookup and a handful of lock-protected adds). The live
gauges (requests in flight, backend health, log-writer queue depth) are not touched on the
request path at all: a collector asks for them (`LiveValues`, from the Runtime) when /metrics is scraped.

Several worker processes (`--workers N`): without `PROMETHEUS_MULTIPROC_DIR` each worker has its
own counters and a scrape sees whichever worker answered. With `PROMETHEUS_MULTIPROC_DIR` set (an
empty directory, wiped before start), prometheus-client keeps the values in files there and
/metrics sums counters and histograms over all workers; the live gauges are then copied into
file-backed gauges once a second by each worker (`livesum`, `livemin`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from router.catalog import split_alias

log = logging.getLogger("router.metrics")

if TYPE_CHECKING:
    from router.usage import RequestRecord

T = TypeVar("T")

PREFIX = "llm_router"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Beyond this many distinct label combinations, new ones are counted under OTHER (a cardinality guard).
_MAX_SERIES = 10_000
# The label of a model (or backend) the catalog does not know: client-chosen names never become labels.
OTHER = "other"
# backend id -> the models the catalog says it serves
KnownModels = Callable[[int], frozenset[str]]
# (backend, model, status[, user]); a series: [requests, prompt tokens, completion tokens, latency h, ttft h]
SeriesKey = tuple[Any, ...]
Series = list[Any]
# (backend, model) -> non-cumulative bucket counts (+Inf last), then the sum
Histograms = dict[tuple[str, str], list[Any]]


@dataclass(frozen=True, slots=True)
class LiveValues:
    """The gauges read at scrape time: per backend name, and the log writer's queue."""

    in_flight: list[tuple[str, int]]  # requests being forwarded now
    healthy: list[tuple[str, int]]  # 1 in rotation, 0 cooling down
    queued: list[tuple[str, int]]  # requests waiting for a slot at the backend's maxConcurrent
    log_queue_depth: int


def model_label(record: RequestRecord, known_models: KnownModels) -> str | None:
    """The model label: the name when the catalog lists it for the backend that served it, else OTHER.

    An unrouted request has no model label (None). `[alias]model` names count as `model`'s.
    """
    if record.backend_name is None or record.model is None:
        return None
    if record.backend_id is not None and split_alias(record.model)[1] in known_models(record.backend_id):
        return record.model
    return OTHER


def series_key(record: RequestRecord, user_labels: bool, known_models: KnownModels) -> SeriesKey:
    """(backend, model, status[, user]) of a finished request, every part from a bounded set."""
    backend = record.backend_name
    model = model_label(record, known_models)
    if user_labels:
        return (backend, model, record.status_code, record.user_name)
    return (backend, model, record.status_code)


def overflow_key(key: SeriesKey) -> SeriesKey:
    """Where a request goes once _MAX_SERIES combinations exist: its status kept, the rest OTHER."""
    return (OTHER, OTHER, key[2], *((OTHER,) if len(key) > 3 else ()))


class Metrics:
    """The router's Prometheus metrics, in a registry of their own (not the process-global one)."""

    content_type = CONTENT_TYPE_LATEST  # of `render()`

    def __init__(
        self,
        known_models: KnownModels,
        live_values: Callable[[], LiveValues],
        user_labels: bool = False,
        multiprocess: bool = False,
    ) -> None:
        """`multiprocess`: PROMETHEUS_MULTIPROC_DIR is set (prometheus-client reads it too, at import)."""
        self.live_values = live_values
        self.user_labels = user_labels
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry(auto_describe=True)
        self._live_gauges: tuple[Gauge, Gauge, Gauge, Gauge] | None = None
        if self.multiprocess:
            self._sink: _FileBackedMetrics | _InMemoryMetrics = _FileBackedMetrics(
                self.registry, user_labels, known_models
            )
            # Live values go through files so that every worker's share is visible.
            self._live_gauges = (
                Gauge(f"{PREFIX}_requests_in_flight", "", ("backend",), multiprocess_mode="livesum", registry=None),
                Gauge(f"{PREFIX}_backend_healthy", "", ("backend",), multiprocess_mode="livemin", registry=None),
                Gauge(f"{PREFIX}_log_queue_depth", "", multiprocess_mode="livesum", registry=None),
                Gauge(f"{PREFIX}_backend_queue_depth", "", ("backend",), multiprocess_mode="livesum", registry=None),
            )
        else:
            self._sink = _InMemoryMetrics(user_labels, known_models)
            self.registry.register(self._sink)
            self.registry.register(_LiveCollector(live_values))

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request. Called once per request from Runtime.finish."""
        self._sink.observe(record)

    # --- scraping ---

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def refresh_forever(self, interval_s: float = 1.0) -> None:
        """Multiprocess mode only: copy this worker's live state into the file-backed gauges."""
        while True:
            self.refresh_live()
            await asyncio.sleep(interval_s)

    def refresh_live(self) -> None:
        if self._live_gauges is None:
            return
        in_flight, healthy, queue_depth, backend_queue = self._live_gauges
        live = self.live_values()
        for name, value in live.in_flight:
            in_flight.labels(name).set(value)
        for name, value in live.healthy:
            healthy.labels(name).set(value)
        queue_depth.set(live.log_queue_depth)
        for name, value in live.queued:
            backend_queue.labels(name).set(value)

    def close(self) -> None:
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _entry(store: dict[SeriesKey, T], key: SeriesKey, new: Callable[[SeriesKey], T]) -> T:
    """The store's entry for `key` (or its overflow key once the store is full), made by `new` if missing."""
    entry = store.get(key)
    if entry is None:
        key = _bounded_key(store, key)
        entry = store.get(key) or new(key)
    return entry


def _bounded_key(store: dict[SeriesKey, Any], key: SeriesKey) -> SeriesKey:
    """`key`, or its overflow key when the store already holds _MAX_SERIES combinations (warned once)."""
    if key in store or len(store) < _MAX_SERIES:
        return key
    if not _warned_full:
        _warn_full()
    return overflow_key(key)


_warned_full = False


def _warn_full() -> None:
    global _warned_full
    _warned_full = True
    log.warning("more than %d metric label combinations: new ones are counted as %r", _MAX_SERIES, OTHER)


_HELP = {
    "requests": "Finished /v1 requests by backend, model and HTTP status.",
    "tokens": "Tokens reported in the upstreams' usage, by kind (prompt or completion).",
    "latency": "Time from receiving a /v1 request to its last byte sent.",
    "ttft": "Streamed requests: time from receiving the request to relaying the first event.",
}


class _InMemoryMetrics(Collector):
    """One process: plain Python numbers updated on the event loop, turned into samples on scrape.

    The scrape (GET /metrics) runs on the same event loop, so no locks are needed. An observation
    is one dict lookup, a few integer adds and one bisect (~1 µs; prometheus-client's locked
    Counter/Histogram objects took ~10 µs for the same six updates).
    """

    def __init__(self, user_labels: bool, known_models: KnownModels) -> None:
        self.user_labels = user_labels
        self.known_models = known_models
        # (backend, model, status[, user]) -> [requests, prompt tokens, completion tokens, latency h, ttft h]
        self._series: dict[SeriesKey, Series] = {}
        # (backend, model) -> histogram: non-cumulative bucket counts (+Inf last), then the sum
        self._latency: Histograms = {}
        self._ttft: Histograms = {}

    def observe(self, record: RequestRecord) -> None:
        series = _entry(self._series, series_key(record, self.user_labels, self.known_models), self._new_series)
        series[0] += 1
        series[1] += record.prompt_tokens
        series[2] += record.completion_tokens
        latency = series[3]
        seconds = record.latency_ms / 1000.0
        latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds
        if record.stream and record.ttft_ms is not None:
            ttft = series[4]
            seconds = record.ttft_ms / 1000.0
            ttft[bisect_left(TTFT_BUCKETS, seconds)] += 1
            ttft[-1] += seconds

    def _new_series(self, key: SeriesKey) -> Series:
        labels = (key[0] or "", key[1] or "")
        latency = self._latency.setdefault(labels, [0] * (len(LATENCY_BUCKETS) + 1) + [0.0])
        ttft = self._ttft.setdefault(labels, [0] * (len(TTFT_BUCKETS) + 1) + [0.0])
        series = [0, 0, 0, latency, ttft]
        self._series[key] = series
        return series

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        by_user = ["user"] if self.user_labels else []
        requests = CounterMetricFamily(
            f"{PREFIX}_requests", _HELP["requests"], labels=["backend", "model", "status", *by_user]
        )
        tokens = CounterMetricFamily(f"{PREFIX}_tokens", _HELP["tokens"], labels=["backend", "model", "kind", *by_user])
        token_totals: dict[SeriesKey, list[int]] = {}
        for key, (count, prompt, completion, _, _) in self._series.items():
            backend, model = key[0] or "", key[1] or ""
            user = [key[3] or ""] if self.user_labels else []
            requests.add_metric([backend, model, str(key[2]), *user], count)
            sums = token_totals.setdefault((backend, model, *user), [0, 0])
            sums[0] += prompt
            sums[1] += completion
        for (backend, model, *user), (prompt, completion) in token_totals.items():
            tokens.add_metric([backend, model, "prompt", *user], prompt)
            tokens.add_metric([backend, model, "completion", *user], completion)
        yield requests
        yield tokens
        yield _histogram(f"{PREFIX}_request_latency_seconds", _HELP["latency"], LATENCY_BUCKETS, self._latency)
        yield _histogram(f"{PREFIX}_time_to_first_token_seconds", _HELP["ttft"], TTFT_BUCKETS, self._ttft)


def _histogram(name: str, documentation: str, bounds: tuple[float, ...], data: Histograms) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["backend", "model"])
    for labels, counts in data.items():
        cumulative, buckets = 0, []
        for bound, count in zip((*bounds, math.inf), counts, strict=False):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        if cumulative:
            family.add_metric(list(labels), buckets, sum_value=counts[-1])
    return family


class _FileBackedMetrics:
    """Several workers (PROMETHEUS_MULTIPROC_DIR): prometheus-client metrics whose values live in files."""

    def __init__(self, registry: CollectorRegistry, user_labels: bool, known_models: KnownModels) -> None:
        self.user_labels = user_labels
        self.known_models = known_models
        by_user = ("user",) if user_labels else ()
        self.requests = Counter(
            f"{PREFIX}_requests", _HELP["requests"], ("backend", "model", "status", *by_user), registry=registry
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens", _HELP["tokens"], ("backend", "model", "kind", *by_user), registry=registry
        )

        def histogram(name: str, key: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", _HELP[key], ("backend", "model"), buckets=buckets, registry=registry)

        self.latency = histogram("request_latency_seconds", "latency", LATENCY_BUCKETS)
        self.ttft = histogram("time_to_first_token_seconds", "ttft", TTFT_BUCKETS)
        self._children: dict[SeriesKey, tuple[Any, Any, Any, Any, Any]] = {}

    def observe(self, record: RequestRecord) -> None:
        key = series_key(record, self.user_labels, self.known_models)
        requests, prompt, completion, latency, ttft = _entry(self._children, key, self._new_children)
        requests.inc()
        if record.prompt_tokens:
            prompt.inc(record.prompt_tokens)
        if record.completion_tokens:
            completion.inc(record.completion_tokens)
        latency.observe(record.latency_ms / 1000.0)
        if record.stream and record.ttft_ms is not None:
            ttft.observe(record.ttft_ms / 1000.0)

    def _new_children(self, key: SeriesKey) -> tuple[Any, Any, Any, Any, Any]:
        backend, model, status = key[0] or "", key[1] or "", str(key[2])
        by_user = (key[3] or "",) if self.user_labels else ()
        children = (
            self.requests.labels(backend, model, status, *by_user),
            self.tokens.labels(backend, model, "prompt", *by_user),
            self.tokens.labels(backend, model, "completion", *by_user),
            self.latency.labels(backend, model),
            self.ttft.labels(backend, model),
        )
        self._children[key] = children
        return children


class _LiveCollector(Collector):
    """Reads the in-flight counts, backend health and queues at scrape time."""

    def __init__(self, live_values: Callable[[], LiveValues]) -> None:
        self.live_values = live_values

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        live = self.live_values()
        yield _per_backend("requests_in_flight", "Requests being forwarded to each backend now.", live.in_flight)
        yield _per_backend(
            "backend_healthy", "1 when the backend is in rotation, 0 while it cools down after failures.", live.healthy
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_log_queue_depth", "Request-log rows waiting to be written.", value=live.log_queue_depth
        )
        yield _per_backend(
            "backend_queue_depth", "Requests waiting for a slot of a backend at its maxConcurrent.", live.queued
        )


def _per_backend(name: str, documentation: str, values: list[tuple[str, int]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=["backend"])
    for backend, value in values:
        family.add_metric([backend], value)
    return family
