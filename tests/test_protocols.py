"""The /v1 pipeline and its protocol adapters: attempts never leak, adapters are pure functions."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.protocols import ADAPTERS, DROP, Usage, parse_usage
from tests.clients import openai_client
from tests.conftest import write_config

MESSAGES = [{"role": "user", "content": "hello"}]


def in_flight(router, backend: str) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llm_router_requests_in_flight" and sample.labels.get("backend") == backend:
                return sample.value
    raise AssertionError(f"no in-flight sample for {backend}")


@pytest.mark.parametrize("stream", [False, True])
def test_an_attempt_that_raises_unexpectedly_leaves_nothing_in_flight(
    router_factory, upstream_factory, tmp_path, stream
):
    """A backend URL with credentials plus a key makes aiohttp's client raise ValueError, not UpstreamError
    (the default transport sends the key instead: aiohttp is chosen here for its unexpected exception)."""
    up = upstream_factory(name="creds", models=["m"])
    url = up.base_url.replace("http://", "http://user:pw@")
    config = write_config(tmp_path / "c.yaml", {"creds": {"url": url, "api_key": "k", "override": ["m"]}})
    router = router_factory(config=config, env={"UPSTREAM_TRANSPORT": "aiohttp"})
    key = router.add_user("alice")
    for _ in range(3):
        response = httpx.post(
            f"{router.v1}/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": stream},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code >= 500 and response.json()["error"]["message"]
    assert in_flight(router, "creds") == 0


# --- adapters (pure) ----------------------------------------------------------------------------


def test_usage_merges_stream_reports_and_sums_when_no_total():
    from router.protocols import Usage
    from router.usage import RequestRecord

    record = RequestRecord(request_id="r", endpoint="/v1/messages")
    record.add_usage(Usage(prompt=10, completion=1, cached=4, cache_write=2))
    record.add_usage(Usage(completion=20))
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (10, 20, 30)
    assert (record.cached_tokens, record.cache_write_tokens) == (4, 2)
    record.set_usage(Usage(prompt=1, completion=2, total=5))
    assert record.total_tokens == 5


def test_stream_wire_is_with_stream_usage_made_from_the_clients_bytes():
    import orjson

    from router.protocols import ADAPTERS

    bodies = [
        b'{"model": "m", "stream": true}',
        b'{"model":"m","stream":true,"messages":[{"role":"user","content":"}"}]}\n',
        b'{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1}}',
        b'{"model":"m","stream":true,"stream_options":{"include_usage":false}}',
        b'{"model":"m","stream":true,"stream_options":null}',
    ]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"):
        adapter = ADAPTERS[path]
        for raw in bodies:
            payload = orjson.loads(raw)
            wire = adapter.stream_wire(raw, payload)
            assert wire is None or orjson.loads(wire) == adapter.with_stream_usage(orjson.loads(raw)), (path, raw)
            assert wire is not None or b"stream_options" in raw, (path, raw)  # encoded again only when it must be
        as_sent = adapter.stream_wire(bodies[0], orjson.loads(bodies[0])) is bodies[0]
        assert as_sent == (path in ("/v1/messages", "/v1/responses"))  # nothing to ask: the client's bytes


def test_chat_adapter_asks_for_stream_usage_and_frames_events():
    from router.errors import bad_request
    from router.protocols import ADAPTERS
    from router.upstream import sse_event_name

    chat = ADAPTERS["/v1/chat/completions"]
    asked = chat.with_stream_usage({"model": "m", "stream_options": {"x": 1}})
    assert asked["stream_options"] == {"x": 1, "include_usage": True}
    assert not chat.client_wants_usage({"model": "m"}) and chat.client_wants_usage(asked)
    assert chat.frame_event(None, {"a": 1}) == b'data: {"a":1}\n\n'
    assert chat.frame_event("response.created", {"a": 1}) == b'event: response.created\ndata: {"a":1}\n\n'
    assert chat.stream_error(bad_request("no")).startswith(b'data: {"error":')
    assert sse_event_name(b"event: response.completed\ndata: {}\n\n") == "response.completed"
    assert sse_event_name(b"data: {}\n\n") is None
    assert chat.text_of_event(None, {"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert ADAPTERS["/v1/completions"].text_of_event(None, {"choices": [{"text": "yo"}]}) == "yo"
    assert not ADAPTERS["/v1/embeddings"].is_stream({"stream": True})


# --- usage details ------------------------------------------------------------------------------


def test_usage_details_reach_the_request_log_and_graphql(router_factory, upstream_factory, tmp_path):
    detailed = upstream_factory(name="detailed", models=["m"], cached_tokens=5, reasoning_tokens=2)
    silent = upstream_factory(name="silent", models=["quiet"], stream_usage=False)
    config = write_config(
        tmp_path / "c.yaml", {"detailed": {"url": detailed.base_url}, "silent": {"url": silent.base_url}}
    )
    router = router_factory(config=config)
    client = openai_client(router, router.add_user("alice"))

    plain = client.chat.completions.create(model="m", messages=MESSAGES)
    assert plain.usage.prompt_tokens_details.cached_tokens == 5
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)
    list(client.chat.completions.create(model="quiet", messages=MESSAGES, stream=True))

    rows = router.wait_for_logs(3)
    detailed_rows = [r for r in rows if r["backend_name"] == "detailed"]
    assert [(r["cached_tokens"], r["reasoning_tokens"], r["cache_write_tokens"]) for r in detailed_rows] == [
        (5, 2, 0),
        (5, 2, 0),
    ]
    quiet = next(r for r in rows if r["backend_name"] == "silent")
    # No usage from the upstream: zeros, never a guess.
    assert (quiet["prompt_tokens"], quiet["completion_tokens"], quiet["cached_tokens"]) == (0, 0, 0)

    data = router.gql_ok(
        "{ requestLogs(first: 10) { items { backendName cachedTokens cacheWriteTokens reasoningTokens } }"
        " usage(groupBy: [BACKEND]) { backendName cachedTokens reasoningTokens } }"
    )
    logged = sorted((i["backendName"], i["cachedTokens"], i["reasoningTokens"]) for i in data["requestLogs"]["items"])
    assert logged == [("detailed", 5, 2), ("detailed", 5, 2), ("silent", 0, 0)]
    sums = {u["backendName"]: (u["cachedTokens"], u["reasoningTokens"]) for u in data["usage"]}
    assert sums == {"detailed": (10, 4), "silent": (0, 0)}


def test_responses_adapter_reads_ids_and_usage_from_typed_events():
    from router.errors import upstream_failed
    from router.protocols import ADAPTERS, Usage

    responses = ADAPTERS["/v1/responses"]
    created = {"type": "response.created", "response": {"id": "resp_1", "object": "response", "usage": None}}
    usage = {"input_tokens": 7, "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 2}}
    completed = {"type": "response.completed", "response": {"id": "resp_1", "object": "response", "usage": usage}}
    assert responses.response_id_of_event("response.created", created) == "resp_1"
    assert responses.response_id_of_event("response.completed", completed) is None
    assert responses.usage_of_event("response.created", created) is None
    assert responses.usage_of_event(None, completed) == Usage(7, 3, 0, reasoning=2)  # the type names it too
    assert responses.response_id_of_body({"id": "resp_2", "object": "response"}) == "resp_2"
    assert responses.text_of_event("response.output_text.delta", {"delta": "hi"}) == "hi"
    assert responses.frame_event(None, {"type": "response.x"}).startswith(b"event: response.x\ndata: ")
    assert responses.stream_error(upstream_failed("gone")).startswith(b'event: error\ndata: {"type":"error"')
    assert responses.previous_response_id({"previous_response_id": "resp_1"}) == "resp_1"
    assert responses.wants_event(b'event: response.created\ndata: {"response": {}}\n\n')
    assert not responses.wants_event(b'event: response.output_text.delta\ndata: {"delta": "x"}\n\n')


def test_response_affinity_falls_back_from_memory_to_redis_to_the_log():
    import asyncio

    from router.affinity import Binding, ResponseAffinity

    class FakeRedis:
        def __init__(self) -> None:
            self.data: dict[str, bytes] = {}

        async def get_binding(self, key: str) -> bytes | None:
            return self.data.get(key)

        async def set_binding(self, key: str, value: bytes, ttl_s: float) -> None:
            self.data[key] = value

    async def from_log(response_id: str) -> Binding | None:
        return Binding(9, 9) if response_id == "resp_logged" else None

    async def run() -> None:
        redis = FakeRedis()
        writer = ResponseAffinity(max_entries=2, remote=redis, prefix="p", from_log=from_log)
        writer.bind("resp_a", 1, 2)
        await writer.close()
        assert redis.data == {"p:response:resp_a": b"1:2"}
        reader = ResponseAffinity(remote=redis, prefix="p", from_log=from_log)
        assert await reader.lookup("resp_a") == Binding(1, 2)
        assert await reader.lookup("resp_logged") == Binding(9, 9)
        assert await reader.lookup("resp_none") is None
        assert await reader.lookup("x" * 500) is None
        for i in range(3):  # bounded: the oldest is forgotten locally
            writer.bind(f"r{i}", 1, 1)
        assert list(writer._local) == ["r1", "r2"]

    asyncio.run(run())


def test_a_later_usage_report_wins_in_every_field_it_reports():
    from dataclasses import fields

    full = Usage(*range(1, len(fields(Usage)) + 1))
    assert Usage().merged(full) == full and full.merged(Usage()) == full
    assert full.merged(Usage(completion=9)) == Usage(1, 9, 3, 4, 5, 6)


def test_usage_parsing():
    chat = ADAPTERS["/v1/chat/completions"]
    usage_of = chat.usage_of_body
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}) == Usage(3, 4, 7)
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).total_tokens == 7
    assert usage_of({"usage": {"input_tokens": 2, "output_tokens": 1}}).total_tokens == 3
    assert usage_of({"usage": None}) is None and usage_of([1]) is None and usage_of(None) is None
    assert parse_usage(
        {
            "prompt_tokens": 9,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    ) == Usage(9, 5, 0, cached=4, reasoning=2)
    # Anthropic's input_tokens leaves the cached part out; the router's prompt counts it (OpenAI's convention).
    assert parse_usage({"input_tokens": 3, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 1}) == Usage(
        11, 0, 0, cached=7, cache_write=1
    )
    assert chat.without_usage(None, {"choices": [], "usage": {"total_tokens": 1}}) is DROP
    kept = {"choices": [{"delta": {}}], "usage": {"total_tokens": 1}}
    assert chat.without_usage(None, kept) is not DROP
