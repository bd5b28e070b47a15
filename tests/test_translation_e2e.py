"""Translation through the real router: backends declare the APIs they speak (`apis`), and clients
of another API reach them through router.protocols.translate. The clients are the official SDKs;
the upstreams are tests/upstream.py servers restricted to one API, answering as vLLM / Anthropic do.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from router import protocols
from tests.clients import anthropic_client, openai_client
from tests.conftest import RouterProcess, router_for, write_config
from tests.test_graphql_api import fails, ok, unique
from tests.test_translate import ANTHROPIC_MESSAGE, FUNCTION_TOOL, WEATHER_TOOL, anthropic_stream_events
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

needs_messages = pytest.mark.skipif(protocols.adapter_for("/v1/messages") is None, reason="no /v1/messages yet")
needs_responses = pytest.mark.skipif(protocols.adapter_for("/v1/responses") is None, reason="no /v1/responses")


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

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic_client(self.router, auth_token=self.key, timeout=30)

    def openai(self) -> openai.OpenAI:
        return openai_client(self.router, self.key, timeout=30)


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
    router = router_for(tmp / "router", {}, write_config(tmp / "config.yaml", servers)).start()
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
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert completion_.usage is not None and completion_.usage.prompt_tokens == 28


@needs_messages
def test_chat_client_streams_from_messages_backend(env: Env) -> None:
    env.reply(Scripted(events=anthropic_stream_events()))
    with env.openai().chat.completions.stream(
        model=CLAUDE_MODEL, messages=[{"role": "user", "content": "hi"}], stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Checking."
    calls = final.choices[0].message.tool_calls
    assert calls is not None and json.loads(calls[0].function.arguments) == {"city": "Paris"}
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


# --- a Claude-style anthropic client on a chat-only upstream ------------------------------------


def log_of(env: Env, request_id: str) -> dict[str, Any]:
    """The request-log row of one request (the writer flushes in batches)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [r for r in env.router.request_logs() if r["request_id"] == request_id]
        if rows:
            return rows[-1]
        time.sleep(0.05)
    raise AssertionError(f"no request-log row for {request_id}")


@needs_messages
def test_anthropic_client_on_chat_backend_text(env: Env) -> None:
    env.reply(completion("Hello from a chat server.", stop_reason="END"))
    client = anthropic_client(env.router, api_key=env.key, timeout=30)  # x-api-key
    raw = client.messages.with_raw_response.create(
        model=CHAT_MODEL,
        max_tokens=200,
        system="Be brief.",
        stop_sequences=["END"],
        messages=[{"role": "user", "content": "Hi"}],
    )
    message = raw.parse()
    sent = env.chat.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (sent.body["max_tokens"], sent.body["stop"]) == (200, ["END"])
    assert message.content[0].type == "text" and message.content[0].text == "Hello from a chat server."
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        25,
        15,
        6,
    )
    request_id = raw.headers["x-request-id"]
    row = log_of(env, request_id)
    assert (row["endpoint"], row["translated_to"]) == ("/v1/messages", "/chat/completions")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (40, 6)  # as the upstream counted, once
    logs = ok(env.router, "{ requestLogs(first: 50) { items { requestId endpoint translatedTo } } }")["requestLogs"]
    logged = next(item for item in logs["items"] if item["requestId"] == request_id)
    assert (logged["endpoint"], logged["translatedTo"]) == ("/v1/messages", "/chat/completions")


@needs_messages
def test_anthropic_client_streams_multi_turn_tool_use_with_images(env: Env) -> None:
    client = env.anthropic()
    tools: Any = [WEATHER_TOOL]
    question: Any = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What city is this, and its weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ],
    }
    env.reply(
        streamed(
            {"reasoning_content": "Looks like Paris."},
            {"content": "Let me check."},
            tool_call(0, "call_1", "get_weather"),
            tool_call(0, args='{"city": '),
            tool_call(0, args='"Paris"}'),
            finish="tool_calls",
        )
    )
    with client.messages.stream(model=CHAT_MODEL, max_tokens=300, tools=tools, messages=[question]) as stream:
        first = stream.get_final_message()
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.stop_reason == "tool_use"
    tool_use = first.content[2]
    assert tool_use.type == "tool_use" and tool_use.input == {"city": "Paris"} and tool_use.id == "call_1"
    assert first.usage.output_tokens == 6 and first.usage.input_tokens == 25
    sent = env.chat.received[-1].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PNG}"},
    }

    env.reply(streamed({"content": "Sunny, "}, {"content": "22 C."}))
    follow_up: Any = [
        question,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 22 C"}]},
    ]
    with client.messages.stream(model=CHAT_MODEL, max_tokens=300, tools=tools, messages=follow_up) as stream:
        texts = list(stream.text_stream)
        second = stream.get_final_message()
    assert texts == ["Sunny, ", "22 C."]
    assert (
        second.content[0].type == "text"
        and second.content[0].text == "Sunny, 22 C."
        and second.stop_reason == "end_turn"
    )
    sent = env.chat.received[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 22 C"}


@needs_messages
def test_anthropic_client_max_tokens_stop_reason(env: Env) -> None:
    env.reply(streamed({"content": "Once upon"}, finish="length"))
    with env.anthropic().messages.stream(
        model=CHAT_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Tell"}]
    ) as s:
        assert s.get_final_message().stop_reason == "max_tokens"


@needs_messages
def test_chat_backend_error_reaches_anthropic_client_in_its_shape(env: Env) -> None:
    vllm_error = {
        "object": "error",
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    env.reply(Scripted(status=400, body=vllm_error))
    with pytest.raises(anthropic.BadRequestError, match="maximum context length is 8192") as caught:
        env.anthropic().messages.create(model=CHAT_MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": vllm_error["message"]},
    }


@needs_messages
def test_anthropic_request_a_chat_backend_cannot_serve_is_refused(env: Env) -> None:
    before = len(env.chat.received)
    with pytest.raises(anthropic.BadRequestError, match="web_search") as caught:
        env.anthropic().messages.create(
            model=CHAT_MODEL,
            max_tokens=5,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
            messages=[{"role": "user", "content": "x"}],
        )
    assert caught.value.status_code == 400
    assert len(env.chat.received) == before


@needs_messages
def test_chat_stream_cut_off_reaches_anthropic_client_as_an_error(env: Env) -> None:
    env.reply(streamed({"content": "Half an ans"}, cut=True))
    with (
        pytest.raises(anthropic.APIStatusError),
        env.anthropic().messages.stream(
            model=CHAT_MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        stream.get_final_message()
    deadline = time.monotonic() + 10
    while not [r for r in env.router.request_logs() if r["endpoint"] == "/v1/messages" and r["status_code"] == 502]:
        assert time.monotonic() < deadline, "the broken stream is logged as a 502"
        time.sleep(0.05)


# --- an OpenAI Responses client on a chat-only upstream -----------------------------------------


@needs_responses
def test_responses_client_on_chat_backend_text_and_json(env: Env) -> None:
    env.reply(completion('{"city": "Paris"}'))
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = env.openai().responses.create(
        model=CHAT_MODEL,
        instructions="Answer in JSON.",
        input="Capital of France?",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        store=False,
    )
    sent = env.chat.received[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }
    assert response.status == "completed" and response.output_text == '{"city": "Paris"}'
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 15


@needs_responses
def test_responses_client_streams_function_calls_and_continues_statelessly(env: Env) -> None:
    client = env.openai()
    env.reply(
        streamed(
            tool_call(0, "call_1", "get_weather", '{"city":'),
            tool_call(0, args='"Paris"}'),
            tool_call(1, "call_2", "get_weather", '{"city":"Rome"}'),
            finish="tool_calls",
        )
    )
    tools = [FUNCTION_TOOL]
    with client.responses.stream(model=CHAT_MODEL, input="Weather in Paris and Rome?", tools=tools) as stream:  # type: ignore[arg-type]
        first = stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_1", "get_weather", '{"city":"Paris"}'),
        ("call_2", "get_weather", '{"city":"Rome"}'),
    ]
    assert first.usage is not None and first.usage.output_tokens_details.reasoning_tokens == 2

    env.reply(streamed({"content": "Both sunny."}))
    follow_up: list[Any] = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        *[c.model_dump(exclude_none=True) for c in calls],
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "sunny"},
    ]
    with client.responses.stream(model=CHAT_MODEL, input=follow_up, tools=tools, store=False) as stream:  # type: ignore[arg-type]
        second = stream.get_final_response()
    assert second.output_text == "Both sunny."
    sent = env.chat.received[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_1", "call_2"]


@needs_responses
def test_previous_response_id_on_a_chat_backend_is_a_clear_400(env: Env) -> None:
    with pytest.raises(openai.BadRequestError, match="full conversation"):
        env.openai().responses.create(model=CHAT_MODEL, input="and then?", previous_response_id="resp_123")


@needs_responses
def test_chat_stream_cut_off_reaches_responses_client_as_failed(env: Env) -> None:
    env.reply(streamed({"content": "Half"}, cut=True))
    events = list(env.openai().responses.create(model=CHAT_MODEL, input="x", stream=True))
    assert events[-1].type == "response.failed"


# --- scripts see the client's side --------------------------------------------------------------

CLIENT_SIDE_SCRIPT = """
function onRequest(context) {
  context.request.headers['X-Saw'] = Object.keys(context.request.body).sort().join(',');
  return context;
}
function onStreamChunk(context) {
  const chunk = context.chunk;
  if (chunk.type === 'content_block_delta' && chunk.delta.type === 'text_delta') {
    chunk.delta.text = chunk.delta.text.toUpperCase();
  }
  return context;
}
"""


@needs_messages
def test_scripts_see_the_request_and_events_as_the_client_has_them(env: Env) -> None:
    router = env.router
    create_user = "mutation($n: String!) { createUser(input: {name: $n, allBackends: true}) { user { id } apiKey } }"
    created = router.gql_ok(create_user, {"n": unique("scripted")})["createUser"]
    script = {
        "name": unique("client-side"),
        "type": "PER_USER",
        "userId": created["user"]["id"],
        "code": CLIENT_SIDE_SCRIPT,
        "isActive": True,
    }
    router.gql_ok("mutation($i: CreateScriptInput!) { createScript(input: $i) { id } }", {"i": script})
    client = anthropic_client(router, auth_token=created["apiKey"], timeout=30)
    env.reply(streamed({"content": "quiet "}, {"content": "words"}))
    with client.messages.stream(model=CHAT_MODEL, max_tokens=9, messages=[{"role": "user", "content": "x"}]) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == "QUIET WORDS"
    received = env.chat.received[-1]
    assert received.headers["X-Saw"] == "max_tokens,messages,model,stream"  # the Messages request, not chat's
    assert "stream_options" in received.body


@needs_responses
def test_responses_input_tokens_is_not_sent_to_a_chat_backend(env: Env) -> None:
    before = len(env.chat.received)
    with pytest.raises(openai.BadRequestError, match="speaks this API or one the router translates it to"):
        env.openai().post("/responses/input_tokens", body={"model": CHAT_MODEL, "input": "hi"}, cast_to=object)
    assert len(env.chat.received) == before


# --- Codex CLI on a chat-only upstream ----------------------------------------------------------

CODEX = os.environ.get("CODEX_BIN") or shutil.which("codex")


@needs_responses
@pytest.mark.skipif(CODEX is None, reason="Codex CLI not installed (npm install @openai/codex; CODEX_BIN=path)")
def test_codex_exec_on_a_chat_only_backend(env: Env, tmp_path: Path) -> None:
    """`codex exec` (Responses API, hosted and namespaced tools, store: false) answered by a chat-only server."""
    assert CODEX is not None
    env.reply(streamed({"content": "Hello from "}, {"content": "a chat-only server."}))
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(
        f'model = "{CHAT_MODEL}"\nmodel_provider = "router"\n[model_providers.router]\nname = "router"\n'
        f'base_url = "{env.router.v1}"\nenv_key = "ROUTER_KEY"\nwire_api = "responses"\n'
    )
    codex_env = {**os.environ, "HOME": str(home), "CODEX_HOME": str(home / ".codex"), "ROUTER_KEY": env.key}
    result = subprocess.run(
        [CODEX, "exec", "--skip-git-repo-check", "say hi"],
        env=codex_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hello from a chat-only server." in result.stdout
    sent = env.chat.received[-1]
    assert sent.path == "/v1/chat/completions" and sent.body["stream"] is True
    assert sent.body["messages"][0]["role"] == "system"
    assert {tool["type"] for tool in sent.body["tools"]} == {"function"}


# --- Claude Code on a chat-only upstream --------------------------------------------------------

CLAUDE = os.environ.get("CLAUDE_BIN") or shutil.which("claude")


@needs_messages
@pytest.mark.skipif(
    CLAUDE is None, reason="Claude Code not installed (npm install @anthropic-ai/claude-code; CLAUDE_BIN)"
)
def test_claude_code_on_a_chat_only_backend(env: Env, tmp_path: Path) -> None:
    """`claude -p` (Messages API, streamed, its tools and system messages) answered by a chat-only server."""
    assert CLAUDE is not None
    env.reply(*[streamed({"content": "Hello from "}, {"content": "a chat-only server."}) for _ in range(3)])
    claude_env = {
        **os.environ,
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": env.router.url,
        "ANTHROPIC_AUTH_TOKEN": env.key,
        "ANTHROPIC_SMALL_FAST_MODEL": CHAT_MODEL,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    result = subprocess.run(
        [CLAUDE, "-p", "say hi", "--model", CHAT_MODEL],
        env=claude_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert "Hello from a chat-only server." in result.stdout
    sent = env.chat.received[-1]
    assert sent.path == "/v1/chat/completions" and sent.body["stream"] is True
    assert sent.body["messages"][0]["role"] == "system" and sent.body["tools"]
