"""Observability end to end: Langfuse traces (to a local OTLP receiver), /metrics, request ids, JSON logs.

The router runs in-process (a subprocess for the multi-process metrics); Langfuse's OTLP/HTTP export
(from the exporter child the router starts) goes to a small HTTP server
started here, which records every POST to /api/public/otel/v1/traces and decodes the gzip'd
protobuf with opentelemetry-proto.
"""

from __future__ import annotations

import base64
import gzip
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import openai_client
from tests.conftest import write_config
from tests.upstream import free_port

OTLP_PATH = "/api/public/otel/v1/traces"
PUBLIC_KEY, SECRET_KEY = "pk-lf-test", "sk-lf-test"


# --- a fake Langfuse: records OTLP exports ----------------------------------------------------


class OtlpReceiver:
    """Threaded HTTP server on loopback. mode="ok" answers; mode="hang" accepts and never answers."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.spans: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if receiver.mode == "hang":
                    with receiver.changed:
                        receiver.posts.append((self.path, dict(self.headers), b""))
                        receiver.changed.notify_all()
                    receiver.release.wait(60)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.add(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, headers: dict[str, str], body: bytes) -> None:
        raw = gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
        spans = decode_spans(raw) if path == OTLP_PATH else []
        with self.changed:
            self.posts.append((path, headers, body))
            self.spans.extend(spans)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise AssertionError(f"timed out; received {len(self.posts)} posts, {len(self.spans)} spans")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _value(any_value) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def decode_spans(raw: bytes) -> list[dict[str, Any]]:
    request = ExportTraceServiceRequest.FromString(raw)
    spans = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "name": span.name,
                        "scope": scope_spans.scope.name,
                        "trace_id": span.trace_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attrs": {a.key: _value(a.value) for a in span.attributes},
                    }
                )
    return spans


@pytest.fixture
def receiver():
    made: list[OtlpReceiver] = []

    def make(mode: str = "ok") -> OtlpReceiver:
        made.append(OtlpReceiver(mode))
        return made[-1]

    yield make
    for r in made:
        r.close()


def langfuse_env(host: str, **extra: str) -> dict[str, str]:
    return {"LANGFUSE_PUBLIC_KEY": PUBLIC_KEY, "LANGFUSE_SECRET_KEY": SECRET_KEY, "LANGFUSE_HOST": host, **extra}


def refused_url() -> str:
    """A loopback port nobody listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def backend_config(upstream, tmp_path):
    return write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})


@pytest.fixture
def start_router(router_factory, monkeypatch):
    """An in-process router with `env` and a user alice (`router.api_key`)."""

    def start(config, env: dict[str, str]):
        # Langfuse's exporter is a child of the router's process, given the router's settings on its input;
        # the SDK's own variables (LANGFUSE_FLUSH_AT, ...) it inherits from the router's environment: here ours.
        for name, value in env.items():
            if name.startswith("LANGFUSE_"):
                monkeypatch.setenv(name, value)
        router = router_factory(config=config, env=env)
        router.api_key = router.add_user("alice")
        return router

    return start


def stop_gracefully(router) -> None:
    """SIGTERM and wait; uvicorn re-raises the signal after a clean shutdown (exit status -15)."""
    assert router.stop() in (0, -signal.SIGTERM)
    assert "llm-router stopped" in router.log()


def attr_json(attrs: dict, key: str) -> Any:
    """Langfuse sends JSON-encoded attribute values, except plain strings for input/output."""
    value = attrs.get(key)
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value


# --- Langfuse ---------------------------------------------------------------------------------


def test_each_request_becomes_a_langfuse_trace(start_router, backend_config, upstream, receiver):
    lf = receiver("ok")
    router = start_router(backend_config, langfuse_env(lf.url))
    client = openai_client(router)
    messages = [{"role": "user", "content": "hello trace"}]

    plain = client.chat.completions.with_raw_response.create(
        model="test-model", messages=messages, extra_headers={"X-Request-ID": "req-plain-1"}
    )
    assert plain.headers["x-request-id"] == "req-plain-1"
    assert plain.parse().choices[0].message.content == "alpha says: hello trace"

    streamed = client.chat.completions.with_raw_response.create(
        model="test-model", messages=messages, stream=True, extra_headers={"X-Request-ID": "req-stream-1"}
    )
    assert streamed.headers["x-request-id"] == "req-stream-1"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices)
    assert text == "tok0 tok1 tok2 "

    # No X-Request-ID: the router makes one, and it is the same everywhere.
    generated = client.chat.completions.with_raw_response.create(model="test-model", messages=messages)
    generated_id = generated.headers["x-request-id"]
    assert len(generated_id) == 32

    stop_gracefully(router)  # SIGTERM: the graceful stop flushes pending traces
    lf.wait_for(lambda: len(lf.spans) >= 3, timeout=5)

    path, headers, _ = lf.posts[0]
    assert path == OTLP_PATH
    assert headers["authorization"] == "Basic " + base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
    by_id = {attr_json(s["attrs"], "langfuse.observation.metadata.request_id"): s for s in lf.spans}
    assert set(by_id) == {"req-plain-1", "req-stream-1", generated_id}
    assert len({s["trace_id"] for s in lf.spans}) == 3  # one trace per request
    for request_id, span in by_id.items():
        attrs = span["attrs"]
        assert span["scope"] == "llm-router" and span["parent"] == ""  # the generation is the trace root
        assert attrs["langfuse.observation.type"] == "generation"
        assert attrs["user.id"] == "alice"
        assert attrs["langfuse.trace.name"] == "chat.completions"
        assert attr_json(attrs, "langfuse.trace.metadata.request_id") == request_id
        assert attr_json(attrs, "langfuse.trace.metadata.backend") == "alpha"
        assert attr_json(attrs, "langfuse.observation.metadata.status") == 200
        assert attrs["langfuse.observation.model.name"] == "test-model"
        assert attr_json(attrs, "langfuse.observation.input") == messages
        usage = attr_json(attrs, "langfuse.observation.usage_details")
        assert usage["input"] > 0 and usage["output"] == 3 and usage["total"] == usage["input"] + 3
        assert "langfuse.observation.level" not in attrs
        assert 0 < span["end_ns"] - span["start_ns"] < 10e9
        # A first token is a stream's notion: the plain request has no completion start time.
        assert ("langfuse.observation.completion_start_time" in attrs) == (request_id == "req-stream-1")
    assert attr_json(by_id["req-plain-1"]["attrs"], "langfuse.observation.output") == {
        "role": "assistant",
        "content": "alpha says: hello trace",
    }
    assert attr_json(by_id["req-stream-1"]["attrs"], "langfuse.observation.output") == "tok0 tok1 tok2 "
    assert attr_json(by_id["req-stream-1"]["attrs"], "langfuse.observation.metadata.stream") is True

    # The request id went upstream, into the request log and into the server log.
    sent_upstream = [r.headers.get("X-Request-ID") for r in upstream.requests_to("/v1/chat/completions")]
    assert sent_upstream == ["req-plain-1", "req-stream-1", generated_id]
    rows = router.request_logs()
    assert [r["request_id"] for r in rows] == ["req-plain-1", "req-stream-1", generated_id]
    log = router.log()
    for request_id in by_id:
        assert f"id={request_id} " in log


def test_errors_are_traced_and_content_can_be_left_out(start_router, backend_config, receiver):
    lf = receiver("ok")
    env = langfuse_env(lf.url, LANGFUSE_CAPTURE_CONTENT="false", LANGFUSE_FLUSH_INTERVAL="0.05")
    router = start_router(backend_config, env)
    client = openai_client(router)
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "secret prompt"}])
    response = httpx.post(
        f"{router.v1}/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {router.api_key}", "X-Request-ID": "req-missing"},
    )
    assert response.status_code == 404
    lf.wait_for(lambda: len(lf.spans) >= 2)  # sent in the background, without a stop

    ok, failed = sorted(lf.spans, key=lambda s: s["start_ns"])
    assert "langfuse.observation.input" not in ok["attrs"]
    assert "langfuse.observation.output" not in ok["attrs"]
    assert attr_json(ok["attrs"], "langfuse.observation.usage_details")["output"] == 3
    assert attr_json(failed["attrs"], "langfuse.observation.metadata.request_id") == "req-missing"
    assert failed["attrs"]["langfuse.observation.level"] == "ERROR"
    assert "no-such-model" in failed["attrs"]["langfuse.observation.status_message"]
    assert attr_json(failed["attrs"], "langfuse.observation.metadata.status") == 404


@pytest.mark.parametrize("mode", ["hang", "refuse"])
def test_langfuse_down_does_not_slow_requests(start_router, backend_config, receiver, mode):
    lf = receiver("hang") if mode == "hang" else None
    # Export after every span, so that the exporter is stuck (up to 20 s per attempt) while the requests run.
    env = langfuse_env(
        lf.url if lf else refused_url(),
        LANGFUSE_FLUSH_AT="1",
        LANGFUSE_FLUSH_INTERVAL="0.01",
        LANGFUSE_TIMEOUT="20",
        SHUTDOWN_GRACE_S="1",  # how long the stop waits for the stuck exporter before ending it
    )
    router = start_router(backend_config, env)
    client = openai_client(router, timeout=10)
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "first"}])
    if lf is not None:
        lf.wait_for(lambda: lf.posts)  # the exporter now hangs on Langfuse
    slowest = 0.0
    for i in range(20):
        t0 = time.monotonic()
        stream = i % 2 == 1
        result = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": f"hi {i}"}], stream=stream
        )
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in result if c.choices) == "tok0 tok1 tok2 "
        else:
            assert result.choices[0].message.content == f"alpha says: hi {i}"
        slowest = max(slowest, time.monotonic() - t0)
    # The exporter waits up to 20 s per attempt on a hung Langfuse; requests never wait for it.
    assert slowest < 2.5, f"slowest /v1 request took {slowest:.2f} s with Langfuse {mode}"
    t0 = time.monotonic()
    stop_gracefully(router)
    assert time.monotonic() - t0 < 20  # the flush on stop is bounded


# --- Prometheus -------------------------------------------------------------------------------


def scrape(router) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    response = httpx.get(f"{router.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def labels(**kw: str) -> tuple:
    return tuple(sorted(kw.items()))


def test_metrics_count_the_requests_made(router_with_backend):
    router = router_with_backend
    client = openai_client(router)
    before = scrape(router)
    assert before[("llm_router_backend_healthy", labels(backend="alpha"))] == 1
    assert before[("llm_router_requests_in_flight", labels(backend="alpha"))] == 0
    assert ("llm_router_log_queue_depth", ()) in before
    ok = labels(backend="alpha", model="test-model", status="200")
    assert before.get(("llm_router_requests_total", ok), 0) == 0

    for _ in range(2):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "one two"}])
    stream = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "one two"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert httpx.post(f"{router.v1}/chat/completions", json={}, headers={"Authorization": "Bearer nope"}).status_code
    assert (
        httpx.post(
            f"{router.v1}/chat/completions",
            json={"model": "unknown-model", "messages": []},
            headers={"Authorization": f"Bearer {router.api_key}"},
        ).status_code
        == 404
    )

    after = scrape(router)
    assert after[("llm_router_requests_total", ok)] == 3
    # Unrouted requests carry no backend and no (client-chosen) model label.
    assert after[("llm_router_requests_total", labels(backend="", model="", status="401"))] == 1
    assert after[("llm_router_requests_total", labels(backend="", model="", status="404"))] == 1
    prompt = after[("llm_router_tokens_total", labels(backend="alpha", model="test-model", kind="prompt"))]
    completion = after[("llm_router_tokens_total", labels(backend="alpha", model="test-model", kind="completion"))]
    assert prompt > 0 and completion == 9  # the test upstream reports 3 completion tokens per request
    by_model = labels(backend="alpha", model="test-model")
    assert after[("llm_router_request_latency_seconds_count", by_model)] == 3
    assert after[("llm_router_request_latency_seconds_sum", by_model)] > 0
    assert after[("llm_router_time_to_first_token_seconds_count", by_model)] == 1  # streams only
    assert after[("llm_router_requests_in_flight", labels(backend="alpha"))] == 0
    assert not any("user" in dict(key[1]) for key in after)


def test_metrics_user_label_only_when_enabled(start_router, backend_config):
    router = start_router(backend_config, {"METRICS_USER_LABELS": "true"})
    client = openai_client(router)
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
    after = scrape(router)
    assert after[("llm_router_requests_total", labels(backend="alpha", model="test-model", status="200", user="alice"))]
    assert after[("llm_router_tokens_total", labels(backend="alpha", model="test-model", kind="prompt", user="alice"))]


def test_metrics_sum_over_workers_with_multiproc_dir(router_factory, backend_config, tmp_path):
    """--workers 2 with PROMETHEUS_MULTIPROC_DIR: any worker's /metrics shows every worker's counts."""
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    router = router_factory(
        config=backend_config, env={"PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}, start=False, process=True
    )
    router.start(timeout=120, extra_args=["--workers", "2"])  # two workers boot slowly on a busy machine
    router.api_key = router.add_user("alice")  # through one worker; the other polls for it
    router.wait_for_key(router.api_key, streak=10)
    for i in range(12):  # a new connection each: the kernel spreads them over the workers
        response = httpx.post(
            f"{router.v1}/chat/completions",
            json={"model": "test-model", "messages": [{"role": "user", "content": f"hi {i}"}]},
            headers={"Authorization": f"Bearer {router.api_key}"},
        )
        assert response.status_code == 200
    ok = labels(backend="alpha", model="test-model", status="200")
    for _ in range(4):  # whichever worker answers the scrape
        samples = scrape(router)
        assert samples[("llm_router_requests_total", ok)] == 12
        assert samples[("llm_router_request_latency_seconds_count", labels(backend="alpha", model="test-model"))] == 12
    assert list(prom_dir.glob("counter_*.db"))  # the values really live in the shared directory


# --- logs -------------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line(start_router, backend_config):
    router = start_router(backend_config, {"LOG_FORMAT": "json"})
    client = openai_client(router)
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Request-ID": "req-json-7"}
    )
    stop_gracefully(router)
    lines = [line for line in router.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is a JSON object
    assert all(isinstance(e, dict) and {"time", "level", "logger", "message"} <= e.keys() for e in entries)
    request_lines = [e for e in entries if e["logger"] == "router.requests" and "req-json-7" in e["message"]]
    assert len(request_lines) == 1
    assert "user=alice backend=alpha model=test-model status=200" in request_lines[0]["message"]


def test_responses_and_unknown_paths_are_traced_too(start_router, backend_config, receiver):
    lf = receiver("ok")
    router = start_router(backend_config, langfuse_env(lf.url))
    client = openai_client(router)
    client.responses.create(model="test-model", input="hello", extra_headers={"X-Request-ID": "req-resp-1"})
    events = list(client.responses.create(model="test-model", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    stored = events[-1].response.id
    client.responses.retrieve(stored, extra_headers={"X-Request-ID": "req-get-1"})
    httpx.get(f"{router.v1}/nowhere", headers={"X-Request-ID": "req-404-1"}, timeout=10)
    stop_gracefully(router)
    lf.wait_for(lambda: len(lf.spans) >= 4, timeout=5)
    by_id = {attr_json(s["attrs"], "langfuse.observation.metadata.request_id"): s for s in lf.spans}
    assert by_id["req-resp-1"]["attrs"]["langfuse.trace.name"] == "responses"
    assert attr_json(by_id["req-resp-1"]["attrs"], "langfuse.observation.input") == "hello"
    streamed = next(s for s in lf.spans if attr_json(s["attrs"], "langfuse.observation.metadata.stream") is True)
    assert attr_json(streamed["attrs"], "langfuse.observation.output") == "tok0 tok1 tok2 "
    assert attr_json(streamed["attrs"], "langfuse.observation.usage_details")["output"] == 3
    assert attr_json(by_id["req-get-1"]["attrs"], "langfuse.observation.metadata.status") == 200
    assert attr_json(by_id["req-404-1"]["attrs"], "langfuse.observation.metadata.status") == 404
