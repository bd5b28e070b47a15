"""Translation through the real router: backends declare the APIs they speak (`apis`), and clients
of another API reach them through router.protocols.translate. The clients are the official SDKs;
the upstreams are tests/upstream.py servers restricted to one API, answering as vLLM / Anthropic do.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from router import protocols
from tests.conftest import RouterProcess, write_config
from tests.test_graphql_api import fails, ok, unique
from tests.test_translate import ANTHROPIC_MESSAGE, WEATHER_TOOL, anthropic_stream_events
from tests.upstream import Scripted, UpstreamServer

CHAT_MODEL = "chat-model"
CLAUDE_MODEL = "claude-model"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
USAGE = {
    "prompt_tokens": 40,
    "completion_tokens": 6,
    "total_tokens": 46,
    "prompt_tokens_details": {"cached_tokens": 15},
    "completion_tokens_details": {"reasoning_tokens": 2},
}

needs_messages = pytest.mark.skipif(protocols.adapter_named("messages") is None, reason="no Messages adapter yet")
needs_responses = pytest.mark.skipif(protocols.adapter_named("responses") is None, reason="no Responses adapter yet")


# --- scripted upstream answers ------------------------------------------------------------------


def completion(
    content: str | None = "Hi there.", finish: str = "stop", tool_calls: list[Any] | None = None, **extra: Any
) -> Scripted:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message, "finish_reason": finish, **extra}
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": CHAT_MODEL, "choices": [choice]}
    return Scripted(body={**body, "usage": USAGE})


def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, dict[str, Any]]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return None, {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": CHAT_MODEL,
        "choices": [choice],
    }


def usage_chunk() -> tuple[None, dict[str, Any]]:
    return None, {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": CHAT_MODEL,
        "choices": [],
        "usage": USAGE,
    }


def streamed(*deltas: dict[str, Any], finish: str = "stop", cut: bool = False) -> Scripted:
    events = [chunk({"role": "assistant", "content": ""}), *(chunk(d) for d in deltas)]
    if cut:
        return Scripted(events=events, abort=True)
    return Scripted(events=[*events, chunk({}, finish), usage_chunk(), (None, b"[DONE]")])


def tool_call(index: int, call_id: str | None = None, name: str | None = None, args: str = "") -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


@dataclass
class Env:
    router: RouterProcess
    chat: UpstreamServer  # speaks chat completions only
    messages: UpstreamServer  # speaks Anthropic Messages only
    key: str
    replies: list[Scripted]

    def reply(self, *answers: Scripted) -> None:
        self.replies[:] = list(answers)

    def last(self, upstream: UpstreamServer) -> dict[str, Any]:
        return upstream.received[-1].body

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.router.url, auth_token=self.key, max_retries=0, timeout=30)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.router.v1, api_key=self.key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("translation")
    replies: list[Scripted] = []

    def script(path: str, body: Any) -> Scripted | None:
        return replies.pop(0) if replies else None

    chat = UpstreamServer(name="chat-only", models=[CHAT_MODEL], apis=("/chat/completions",), script=script).start()
    messages = UpstreamServer(name="messages-only", models=[CLAUDE_MODEL], apis=("/messages",), script=script).start()
    servers = {
        "chat": {"url": chat.base_url, "apis": ["chat_completions"]},
        "anthropic": {"url": messages.base_url, "apis": ["messages"]},
    }
    router = RouterProcess(tmp / "router", {}, write_config(tmp / "config.yaml", servers)).start()
    yield Env(router, chat, messages, router.add_user("translated"), replies)
    router.stop()
    chat.stop()
    messages.stop()


# --- the backends' APIs -------------------------------------------------------------------------


def test_backend_apis_from_config_and_graphql(env: Env) -> None:
    router = env.router
    backends = {b["name"]: b for b in ok(router, "{ backends { id name apis } }")["backends"]}
    assert backends["chat"]["apis"] == ["CHAT_COMPLETIONS"]
    assert backends["anthropic"]["apis"] == ["MESSAGES"]

    create = "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id apis } }"
    created = ok(router, create, {"i": {"name": unique("be"), "baseUrl": env.chat.base_url, "isActive": False}})
    created = created["createBackend"]
    assert created["apis"] == ["CHAT_COMPLETIONS", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "MESSAGES"]  # default

    update = "mutation($id: ID!, $i: UpdateBackendInput!) { updateBackend(id: $id, input: $i) { id apis } }"
    changed = ok(router, update, {"id": created["id"], "i": {"apis": ["MESSAGES", "CHAT_COMPLETIONS", "MESSAGES"]}})
    assert changed["updateBackend"]["apis"] == ["CHAT_COMPLETIONS", "MESSAGES"]
    unchanged = ok(router, update, {"id": created["id"], "i": {"weight": 2}})
    assert unchanged["updateBackend"]["apis"] == ["CHAT_COMPLETIONS", "MESSAGES"]
    error = fails(router, update, {"id": created["id"], "i": {"apis": []}})
    assert error["code"] == "BAD_USER_INPUT" and error["field"] == "apis"
    reset = ok(router, update, {"id": created["id"], "i": {"apis": None}})
    assert len(reset["updateBackend"]["apis"]) == 5


def test_an_api_no_backend_can_be_reached_in_is_refused(env: Env) -> None:
    with pytest.raises(openai.BadRequestError, match="speaks this API or one the router translates it to"):
        env.openai().embeddings.create(model=CHAT_MODEL, input="x")
    assert env.chat.requests_to("/v1/embeddings") == []


# --- an OpenAI chat client on a Messages-only upstream ------------------------------------------


@needs_messages
def test_chat_client_on_messages_backend(env: Env) -> None:
    env.reply(Scripted(body=ANTHROPIC_MESSAGE))
    completion_ = env.openai().chat.completions.create(
        model=CLAUDE_MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}],
    )
    sent = env.messages.received[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers.get("anthropic-version") == "2023-06-01"
    assert sent.body["system"] == "Be brief." and sent.body["max_tokens"] == 4096
    assert sent.body["tools"][0]["input_schema"] == WEATHER_TOOL["input_schema"]
    choice = completion_.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking the weather."
    assert choice.message.tool_calls is not None and choice.message.tool_calls[0].function.name == "get_weather"
    assert completion_.usage is not None and completion_.usage.prompt_tokens == 28


@needs_messages
def test_chat_client_streams_from_messages_backend(env: Env) -> None:
    env.reply(Scripted(events=anthropic_stream_events()))
    with env.openai().chat.completions.stream(
        model=CLAUDE_MODEL, messages=[{"role": "user", "content": "hi"}], stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Checking."
    assert final.choices[0].message.tool_calls[0].function.parsed_arguments == {"city": "Paris"}  # type: ignore[index]
    assert final.usage is not None and (final.usage.prompt_tokens, final.usage.completion_tokens) == (28, 9)


@needs_messages
def test_messages_backend_error_reaches_chat_client_in_openai_shape(env: Env) -> None:
    error = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long: 300000 tokens"},
    }
    env.reply(Scripted(status=400, body=error))
    with pytest.raises(openai.BadRequestError, match="prompt is too long") as caught:
        env.openai().chat.completions.create(model=CLAUDE_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "invalid_request_error"
