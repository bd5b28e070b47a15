"""Langfuse tracing: every finished /v1 request becomes a trace with one generation.

Imported only when the LANGFUSE_* variables are set. The Langfuse SDK (OpenTelemetry based,
~0.2-0.9 ms of Python per trace) runs in a child process (`python -m router.tracing`), so it
never holds the router's GIL. The event loop does one small thing per request (`record`): the
fields of the finished RequestRecord as one JSON line (orjson) into a buffer, written to the
child's stdin once per loop iteration with a non-blocking write. Langfuse being slow, wrong or
down therefore never slows a /v1 request: at worst the pipe and the buffer (bounded) fill and
traces are dropped (counted, logged). `close` hands the child what is pending and waits for it
to flush, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson

from router.config import Settings, settings_from_json, settings_to_json
from router.usage import RequestRecord

log = logging.getLogger("router.tracing")

TRACER_SCOPE = "llm-router"
# What a trace needs of a RequestRecord (the child rebuilds a record-like object from these).
TRACED_FIELDS = (
    "request_id",
    "endpoint",
    "started_at",
    "user_name",
    "backend_name",
    "model",
    "status_code",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "error",
)


class LangfuseTracer:
    """The tracer interface of Runtime (`enabled`, `record`, `close`), exporting through a child process."""

    enabled = True

    def __init__(
        self, settings: Settings, max_buffer_bytes: int = 64 * 1024 * 1024, close_timeout_s: float = 10.0
    ) -> None:
        self.capture_content = settings.langfuse_capture_content
        self.max_buffer_bytes = max_buffer_bytes
        self.close_timeout_s = min(close_timeout_s, settings.shutdown_grace_s or close_timeout_s)
        self.dropped = 0
        self._warned_full = False
        self._buffer = bytearray()
        self._flush_scheduled = False
        self._writer_registered = False
        self._loop = asyncio.get_running_loop()
        self._child = subprocess.Popen([sys.executable, "-m", "router.tracing"], stdin=subprocess.PIPE)
        assert self._child.stdin is not None
        # The exporter's settings are these, handed over as its input's first line (not its environment's).
        self._child.stdin.write(settings_to_json(settings).encode() + b"\n")
        self._child.stdin.flush()
        self._fd = self._child.stdin.fileno()
        os.set_blocking(self._fd, False)
        log.info("Langfuse tracing on: sending to %s (exporter process %d)", settings.langfuse_host, self._child.pid)

    # --- on the event loop ---

    def record(self, record: RequestRecord) -> None:
        """Queue a finished request for tracing. Never blocks, never raises."""
        if len(self._buffer) >= self.max_buffer_bytes or self._fd < 0:
            self.dropped += 1
            if not self._warned_full:
                self._warned_full = True
                log.warning("Langfuse exporter is not keeping up (%d bytes queued): dropping traces", len(self._buffer))
            return
        fields = {name: getattr(record, name) for name in TRACED_FIELDS}
        if self.capture_content:
            fields["input"], fields["output"] = record.input, record.output
        try:
            self._buffer += orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # content orjson cannot encode (never expected: it came from JSON)
            self.dropped += 1
            return
        if not self._flush_scheduled and not self._writer_registered:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what the pipe takes now; wait for it to drain before writing the rest."""
        self._flush_scheduled = False
        while self._buffer and self._fd >= 0:
            try:
                written = os.write(self._fd, self._buffer)
            except BlockingIOError:
                break
            except OSError:  # the exporter died: stop tracing rather than fail requests
                log.exception("Langfuse exporter process is gone; traces are dropped from now on")
                self._stop_writing()
                self._buffer.clear()
                return
            del self._buffer[:written]
        want_writer = bool(self._buffer) and self._fd >= 0
        if want_writer and not self._writer_registered:
            self._loop.add_writer(self._fd, self._flush)
        elif not want_writer and self._writer_registered:
            self._loop.remove_writer(self._fd)
        self._writer_registered = want_writer
        if self._warned_full and len(self._buffer) < self.max_buffer_bytes // 2:
            self._warned_full = False

    def _stop_writing(self) -> None:
        if self._writer_registered:
            self._loop.remove_writer(self._fd)
            self._writer_registered = False
        if self._fd >= 0:
            assert self._child.stdin is not None
            with contextlib.suppress(OSError):
                self._child.stdin.close()
            self._fd = -1

    async def close(self) -> None:
        """Hand the exporter what is pending and let it flush (bounded by `close_timeout_s`)."""
        deadline = time.monotonic() + self.close_timeout_s
        while self._buffer and self._fd >= 0 and time.monotonic() < deadline:
            self._flush()
            if self._buffer:
                await asyncio.sleep(0.01)
        if self._buffer:
            self.dropped += len(self._buffer.splitlines())
        self._stop_writing()  # end of input: the exporter flushes and exits
        while self._child.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._child.poll() is None:
            log.warning(
                "Langfuse did not take the pending traces within %.0f s; they may be lost", self.close_timeout_s
            )
            self._child.kill()
            await asyncio.to_thread(self._child.wait)
        if self.dropped:
            log.warning("%d Langfuse traces were dropped (exporter not keeping up)", self.dropped)


# --- in the exporter process ------------------------------------------------------------------


class LangfuseExporter:
    """The Langfuse SDK side: one trace with one generation per record."""

    def __init__(self, settings: Settings) -> None:
        from langfuse import Langfuse, LangfuseGeneration, propagate_attributes
        from opentelemetry.sdk.trace import TracerProvider

        self._generation_class = LangfuseGeneration
        self._propagate_attributes = propagate_attributes
        self.capture_content = settings.langfuse_capture_content
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

    def run(self, lines: Any) -> None:
        """Trace every line until the router closes the pipe, then flush."""
        for line in lines:
            try:
                fields = orjson.loads(line)
                fields.setdefault("input", None)
                fields.setdefault("output", None)
                self.send(SimpleNamespace(**fields))  # type: ignore[arg-type]
            except Exception:
                log.exception("building a Langfuse trace failed")
        self.client.shutdown()  # flushes the exporter, stops the SDK's threads

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


def main() -> None:
    """`python -m router.tracing`: the exporter process the router starts.

    Its input: the router's settings (one JSON line, as `LangfuseTracer` hands them over), then the records.
    """
    from router.logging_setup import setup_logging

    settings = settings_from_json(sys.stdin.buffer.readline().decode())
    setup_logging(settings)
    LangfuseExporter(settings).run(sys.stdin.buffer)


if __name__ == "__main__":
    main()
