"""Langfuse tracing: every finished /v1 request becomes a trace with one generation.

Imported only when the LANGFUSE_* variables are set. The event loop does one thing per request:
put the finished RequestRecord on a bounded in-memory queue (`record`, ~1 µs). A background
thread turns records into Langfuse generations with the request's real start/end times, and the
Langfuse SDK (OpenTelemetry based) exports them in batches from its own thread. Langfuse being
slow, wrong or down therefore never slows a /v1 request: at worst the queues fill and traces
are dropped (counted, logged). `close` drains both queues on a graceful stop, within a bound.

The thread still shares the GIL with the event loop (~0.2-0.9 ms of Python per trace, SDK and
OTLP encoding included): it yields between traces, but a burst of thousands of traces delays
loop wake-ups by a few ms at p99 while the backlog is worked off.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any

from router.config import Settings
from router.usage import RequestRecord

log = logging.getLogger("router.tracing")

TRACER_SCOPE = "llm-router"
_STOP = object()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LangfuseTracer:
    """The tracer interface of Runtime (`enabled`, `record`, `close`) backed by Langfuse."""

    enabled = True

    def __init__(self, settings: Settings, max_queue: int = 10_000, close_timeout_s: float = 10.0) -> None:
        from langfuse import Langfuse, LangfuseGeneration, propagate_attributes
        from opentelemetry.sdk.trace import TracerProvider

        self._generation_class = LangfuseGeneration
        self._propagate_attributes = propagate_attributes

        self.capture_content = settings.langfuse_capture_content
        self.max_queue = max_queue
        self.close_timeout_s = min(close_timeout_s, settings.shutdown_grace_s or close_timeout_s)
        # A provider of our own: the process-global OpenTelemetry provider is left alone.
        self._provider = TracerProvider(shutdown_on_exit=False)
        self._otel_tracer = self._provider.get_tracer(TRACER_SCOPE)
        self.client = Langfuse(
            public_key=settings.langfuse_public_key,
            secret_key=settings.langfuse_secret_key,
            base_url=(settings.langfuse_host or "").rstrip("/"),  # wins over LANGFUSE_BASE_URL
            tracer_provider=self._provider,
            should_export_span=_is_router_span,
        )
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.dropped = 0
        self.sent = 0
        self._warned_full = False
        self._thread = threading.Thread(target=self._run, name="langfuse-tracer", daemon=True)
        self._thread.start()
        log.info("Langfuse tracing on: sending to %s", settings.langfuse_host)

    # --- on the event loop ---

    def record(self, record: RequestRecord) -> None:
        """Queue a finished request for tracing. Never blocks, never raises."""
        if self._queue.qsize() >= self.max_queue:
            self.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                log.warning("Langfuse trace queue full (%d): dropping traces", self.max_queue)
            return
        self._queue.put(record)

    async def close(self) -> None:
        """Send what is pending (bounded by `close_timeout_s`); runs the blocking parts in a thread."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            self._thread.join()
            try:
                self.client.shutdown()  # flushes the exporter, stops the SDK's threads
            except Exception:
                log.exception("Langfuse shutdown failed")
            finally:
                loop.call_soon_threadsafe(_resolve, done)

        self._queue.put(_STOP)
        # A daemon thread (not asyncio.to_thread): a hung Langfuse must not hold up the process exit.
        threading.Thread(target=finish, name="langfuse-close", daemon=True).start()
        try:
            await asyncio.wait_for(done, self.close_timeout_s)
        except TimeoutError:
            log.warning(
                "Langfuse did not take the pending traces within %.0f s; they may be lost", self.close_timeout_s
            )
        if self.dropped:
            log.warning("%d Langfuse traces were dropped (queue full)", self.dropped)

    # --- on the tracer thread ---

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self.send(item)
                self.sent += 1
            except Exception:
                log.exception("building the Langfuse trace of request %s failed", item.request_id)
            if self._warned_full and self._queue.qsize() < self.max_queue // 2:
                self._warned_full = False
            time.sleep(0)  # hand the GIL back to the event loop between traces

    def send(self, record: RequestRecord) -> None:
        """One trace with one generation, timed by the request's own timestamps."""
        start_ns = int(record.started_at * 1e9)
        end_ns = start_ns + int(record.latency_ms * 1e6)
        completion_start = (
            datetime.fromtimestamp(record.started_at + record.ttft_ms / 1000.0, UTC)
            if record.ttft_ms is not None
            else None
        )
        failed = record.status_code >= 400 or record.error is not None
        name = record.endpoint.removeprefix("/v1/").replace("/", ".") or record.endpoint
        trace_metadata = {"request_id": record.request_id, "backend": record.backend_name or ""}
        usage = (
            {"input": record.prompt_tokens, "output": record.completion_tokens, "total": record.total_tokens}
            if record.total_tokens or record.prompt_tokens or record.completion_tokens
            else None
        )
        with self._propagate_attributes(
            user_id=record.user_name or None,
            trace_name=name,
            metadata=trace_metadata,
        ):
            span = self._otel_tracer.start_span(name, start_time=start_ns)
            generation = self._generation_class(
                otel_span=span,
                langfuse_client=self.client,
                input=record.input if self.capture_content else None,
                output=output_of(record) if self.capture_content else None,
                metadata={
                    **trace_metadata,
                    "endpoint": record.endpoint,
                    "status": record.status_code,
                    "stream": record.stream,
                    "attempts": record.attempts,
                },
                level="ERROR" if failed else None,
                status_message=(record.error or f"HTTP {record.status_code}") if failed else None,
                completion_start_time=completion_start,
                model=record.model,
                usage_details=usage,
            )
            generation.end(end_time=end_ns)


def _is_router_span(span: Any) -> bool:
    scope = span.instrumentation_scope
    return scope is not None and scope.name == TRACER_SCOPE


def output_of(record: RequestRecord) -> Any:
    """What the generation produced: the assistant message, the completion text, or the stream text."""
    output = record.output
    if not isinstance(output, dict):
        return output  # streams: the assembled text (or None)
    choices = output.get("choices")
    if isinstance(choices, list) and choices:
        picked = [c.get("message", c.get("text")) if isinstance(c, dict) else c for c in choices]
        return picked[0] if len(picked) == 1 else picked
    if record.endpoint.endswith("/embeddings"):
        data = output.get("data")
        return {"embeddings": len(data) if isinstance(data, list) else 0}
    return output
