"""Anthropic's Messages API through the router, driven by the official anthropic SDK.

The local upstream answers /v1/messages as Anthropic's API does (typed events, a thinking block
with its signature, usage in message_start and message_delta, cache read/creation counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import anthropic
import httpx
import pytest

from router.protocols import ADAPTERS
from router.upstream_auth import upstream_key_header
from tests.clients import anthropic_client
from tests.conftest import write_config
from tests.upstream import UpstreamServer

MODEL = "claude-test"
ASK = [{"role": "user", "content": "hello there"}]


@dataclass
class Env:
    router: object
    upstream: UpstreamServer
    key: str


@pytest.fixture
def env(router_factory, upstream_factory, tmp_path):
    upstream = upstream_factory(name="claude", models=[MODEL], cached_tokens=7, cache_write_tokens=3)
    config = write_config(tmp_path / "c.yaml", {"claude": {"url": upstream.base_url, "api_key": "upstream-key"}})
    router = router_factory(config=config)
    return Env(router, upstream, router.add_user("alice"))


def client(env: Env, **kwargs) -> anthropic.Anthropic:
    auth = kwargs or {"api_key": env.key}
    return anthropic_client(env.router, timeout=30, **auth)


def test_plain_message_with_the_key_as_api_key(env: Env) -> None:
    message = client(env).messages.create(
        model=MODEL, max_tokens=50, messages=ASK, extra_headers={"anthropic-version": "2023-06-01"}
    )
    assert message.content[0].text == "claude says: hello there"
    assert message.stop_reason == "end_turn"
    sent = env.upstream.requests_to("/v1/messages")[-1]
    assert "x-api-key" not in {k.lower() for k in sent.headers if sent.headers[k] == env.key}  # never the user's key
    assert sent.headers["Authorization"] == "Bearer upstream-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"  # the client's version reaches the upstream


def test_streamed_message_with_auth_token_is_rebuilt_by_the_sdk_stream_helper(env: Env) -> None:
    with client(env, auth_token=env.key).messages.stream(
        model=MODEL, max_tokens=50, messages=ASK, extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "claude says: hello there"
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].signature == "c2lnbmF0dXJl+/="  # thinking signatures survive the relay
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3 and final.usage.cache_read_input_tokens == 7
    sent = env.upstream.requests_to("/v1/messages")[-1]
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    [row] = env.router.wait_for_logs(1)
    assert row["endpoint"] == "/v1/messages" and row["status_code"] == 200 and row["stream"]
    assert (row["completion_tokens"], row["cached_tokens"], row["cache_write_tokens"]) == (3, 7, 3)
    assert row["prompt_tokens"] > 0


def test_stream_bytes_reach_the_client_unchanged(env: Env) -> None:
    body = {"model": MODEL, "max_tokens": 50, "messages": ASK, "stream": True}
    direct = httpx.post(f"{env.upstream.base_url}/messages", json=body, timeout=30).content
    routed = httpx.post(f"{env.router.v1}/messages", json=body, headers={"x-api-key": env.key}, timeout=30)
    assert routed.status_code == 200 and routed.headers["content-type"].startswith("text/event-stream")
    assert routed.content == direct


def test_count_tokens_is_routed_by_model(env: Env) -> None:
    counted = client(env).messages.count_tokens(model=MODEL, messages=ASK)
    assert counted.input_tokens > 0
    assert env.upstream.requests_to("/v1/messages/count_tokens")


def test_errors_have_anthropics_shape(env: Env) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(env, api_key="wrong").messages.create(model=MODEL, max_tokens=5, messages=ASK)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(env).messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    assert caught.value.body["error"]["type"] == "not_found_error"
    raw = httpx.post(f"{env.router.v1}/messages", content=b"{not json", headers={"x-api-key": env.key}, timeout=10)
    assert raw.status_code == 400
    assert raw.json()["type"] == "error" and raw.json()["error"]["type"] == "invalid_request_error"


def test_an_upstream_error_body_passes_through_unchanged(router_factory, upstream_factory, tmp_path) -> None:
    upstream = upstream_factory(name="claude", models=[MODEL], fail_status=400)
    servers = {"claude": {"url": upstream.base_url, "override": [MODEL]}}  # its model list fails too
    router = router_factory(config=write_config(tmp_path / "c.yaml", servers))
    key = router.add_user("bob")
    answer = httpx.post(
        f"{router.v1}/messages",
        json={"model": MODEL, "max_tokens": 5, "messages": ASK},
        headers={"x-api-key": key},
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json() == {"type": "error", "error": {"type": "api_error", "message": "claude failing"}}


def test_models_list_in_anthropics_shape_when_asked_with_anthropic_version(env: Env) -> None:
    page = client(env).models.list()
    assert [m.id for m in page.data] == [MODEL]
    assert page.data[0].type == "model"
    plain = httpx.get(f"{env.router.v1}/models", headers={"Authorization": f"Bearer {env.key}"}, timeout=10).json()
    assert plain["object"] == "list" and plain["data"][0]["object"] == "model"


def test_messages_adapter_reads_usage_from_both_events() -> None:
    messages = ADAPTERS["/v1/messages"]
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 9, "cache_read_input_tokens": 4}}}
    first = messages.usage_of_event("message_start", start)
    last = messages.usage_of_event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 12}})
    assert first is not None and last is not None
    merged = first.merged(last)
    # The prompt counts cache reads too (Anthropic's input_tokens leaves them out; OpenAI's includes them).
    assert (merged.prompt, merged.completion, merged.cached, merged.total_tokens) == (13, 12, 4, 25)
    assert messages.usage_of_event("ping", {"type": "ping"}) is None
    assert messages.text_of_event(None, {"type": "content_block_delta", "delta": {"text": "hi"}}) == "hi"
    assert messages.passed_headers({"anthropic-version": "v", "cookie": "c"}) == {"anthropic-version": "v"}


def test_anthropics_own_api_takes_the_key_as_x_api_key() -> None:
    assert upstream_key_header("https://api.anthropic.com/v1") == "x-api-key"
    assert upstream_key_header("http://vllm:8000/v1") == "Authorization"
    assert upstream_key_header("https://anthropic.com.evil.example/v1") == "Authorization"
