"""Translation between Messages, Responses and chat completions, without servers.

The official SDKs are the oracles: request bodies are captured from what the SDKs send, translated
answers are served to the SDKs over an httpx MockTransport, and their stream helpers must rebuild
the final message/response from the translated events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anthropic
import openai
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from router.protocols import translate as t

try:
    import httpx2 as httpx  # the SDKs' HTTP client since openai 3 / anthropic 2
except ImportError:  # older SDKs use httpx
    import httpx  # type: ignore[no-redef]

JSON = dict[str, Any]
SSE = {"content-type": "text/event-stream"}
# The SDKs' stream event unions as validators (built once: building one takes long).
ANTHROPIC_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)

# --- helpers ------------------------------------------------------------------------------------


def sse_bytes(events: Iterable[t.Event]) -> bytes:
    out = b""
    for name, data in events:
        if name:
            out += b"event: " + name.encode() + b"\n"
        out += b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"
    return out


def anthropic_client(handler: Callable[[httpx.Request], httpx.Response]) -> anthropic.Anthropic:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return anthropic.Anthropic(api_key="k", base_url="http://upstream", http_client=http, max_retries=0)


def openai_client(handler: Callable[[httpx.Request], httpx.Response]) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(api_key="k", base_url="http://upstream/v1", http_client=http, max_retries=0)


def serve(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Callable[..., httpx.Response]:
    return lambda request: httpx.Response(status, content=body, headers=headers or {"content-type": "application/json"})


MESSAGE_STUB: JSON = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}
CHAT_STUB: JSON = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
}


def sent_by_anthropic(**kwargs: Any) -> JSON:
    """The JSON body the anthropic SDK sends for messages.create(**kwargs)."""
    captured: JSON = {}

    def handler(request: httpx.Request) -> httpx.Response:
        captured.update(orjson.loads(request.content))
        return httpx.Response(200, json=MESSAGE_STUB)

    anthropic_client(handler).messages.create(**kwargs)
    return captured


def sent_by_openai(method: str, **kwargs: Any) -> JSON:
    """The JSON body the openai SDK sends for chat.completions.create / responses.create."""
    captured: JSON = {}

    def handler(request: httpx.Request) -> httpx.Response:
        captured.update(orjson.loads(request.content))
        stub = CHAT_STUB if method == "chat" else t.chat_response_to_responses(CHAT_STUB, {"model": "m"})
        return httpx.Response(200, json=stub)

    client = openai_client(handler)
    (client.chat.completions.create if method == "chat" else client.responses.create)(**kwargs)
    return captured


def chunk(
    content: str | None = None,
    *,
    reasoning: str | None = None,
    tool_calls: list[JSON] | None = None,
    finish: str | None = None,
    usage: JSON | None = None,
    no_choices: bool = False,
    **choice_extra: Any,
) -> JSON:
    delta: JSON = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    out: JSON = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1, "model": "up-model"}
    out["choices"] = [] if no_choices else [{"index": 0, "delta": delta, "finish_reason": finish, **choice_extra}]
    if usage is not None:
        out["usage"] = usage
    return out


def run(stream: Any, items: Iterable[Any], end: bool = True) -> list[t.Event]:
    events: list[t.Event] = []
    for item in items:
        name, data = item if isinstance(item, tuple) else (None, item)
        events += stream.feed(name, data)
    if end:
        events += stream.end()
    return events


USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 7,
    "total_tokens": 37,
    "prompt_tokens_details": {"cached_tokens": 10},
}


def call_delta(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None) -> JSON:
    call: JSON = {"index": index}
    if id:
        call.update(id=id, type="function")
    function: JSON = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    call["function"] = function
    return call


# --- Messages -> chat: request ------------------------------------------------------------------

PNG = "iVBORw0KGgo="
WEATHER_TOOL: JSON = {
    "name": "get_weather",
    "description": "Weather by city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_messages_request_to_chat_text_system_and_sampling() -> None:
    body = sent_by_anthropic(
        model="claude-x",
        max_tokens=300,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[{"role": "user", "content": "Hi"}],
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        output_config={"effort": "max", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5},  # older models' sampling settings
    )
    chat = t.messages_request_to_chat(body)
    assert chat == {
        "model": "claude-x",
        "messages": [{"role": "system", "content": "Be brief.\nBe kind."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "user": "u-1",
        "reasoning_effort": "high",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
        },
    }


def test_messages_request_to_chat_images_and_multi_turn_tools() -> None:
    body = sent_by_anthropic(
        model="m",
        max_tokens=100,
        stream=False,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in it, and the weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": [
                            {"type": "text", "text": "rainy"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                        ],
                        "is_error": False,
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    chat = t.messages_request_to_chat(body)
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Weather by city",
            },
        }
    ]
    assert chat["tool_choice"] == "required"
    assert chat["parallel_tool_calls"] is False
    assert "stream" not in chat
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in it, and the weather?"},
                image,
                {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rainy"},
        {"role": "user", "content": [image, {"type": "text", "text": "Thanks"}]},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_messages_tool_choice_to_chat(choice: JSON, expected: Any) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [], "tools": [WEATHER_TOOL], "tool_choice": choice}
    assert t.messages_request_to_chat(body)["tool_choice"] == expected


def test_messages_stream_request_asks_for_usage() -> None:
    chat = t.messages_request_to_chat({"model": "m", "max_tokens": 5, "stream": True, "messages": []})
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
        ({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]}, "search_result"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role 'tool'"),
        ({"messages": "hi"}, "'messages' must be an array"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}, "file"),
    ],
)
def test_messages_request_that_chat_cannot_express_is_refused(body: JSON, message: str) -> None:
    with pytest.raises(t.TranslationError, match=message):
        t.messages_request_to_chat({"model": "m", "max_tokens": 5, "messages": [], **body})


# --- chat -> Messages: response -----------------------------------------------------------------


def chat_completion(message: JSON, finish: str = "stop", usage: JSON | None = None, **choice: Any) -> JSON:
    body = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 5,
        "model": "up-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def test_chat_response_to_messages_text_and_usage_through_the_sdk() -> None:
    body = t.chat_response_to_messages(chat_completion({"content": "Hello!"}, usage=USAGE), "claude-x")
    message = anthropic_client(serve(orjson.dumps(body))).messages.create(
        model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert isinstance(message, Message)
    assert message.content[0].type == "text" and message.content[0].text == "Hello!"
    assert message.stop_reason == "end_turn"
    assert message.model == "up-model"
    assert message.id.startswith("msg_")
    # Anthropic counts cached prompt tokens apart from input_tokens.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        20,
        10,
        7,
    )


def test_chat_response_to_messages_thinking_and_tool_calls() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "noop", "arguments": ""}},
    ]
    body = chat_completion({"content": None, "reasoning_content": "think", "tool_calls": calls}, "tool_calls")
    message = Message.model_validate(t.chat_response_to_messages(body, "m"))
    assert [b.type for b in message.content] == ["thinking", "tool_use", "tool_use"]
    assert message.content[0].thinking == "think"  # type: ignore[union-attr]
    assert message.content[1].input == {"city": "Paris"} and message.content[1].id == "call_a"  # type: ignore[union-attr]
    assert message.content[2].input == {}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 0  # no usage reported: zeros, never a guess


@pytest.mark.parametrize(
    ("finish", "extra", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the stop string it matched
        ("stop", {"stop_reason": 128001}, "end_turn", None),  # ... or the stop token id
    ],
)
def test_finish_reason_to_stop_reason(finish: str, extra: JSON, stop_reason: str, stop_sequence: str | None) -> None:
    message = t.chat_response_to_messages(chat_completion({"content": "x"}, finish, **extra), "m")
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)


def test_tool_calls_with_finish_stop_still_say_tool_use() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert (
        t.chat_response_to_messages(chat_completion({"tool_calls": [call]}, "stop"), "m")["stop_reason"] == "tool_use"
    )


# --- chat stream -> Messages stream -------------------------------------------------------------


def anthropic_final(events: list[t.Event]) -> Message:
    """What the anthropic SDK's stream helper rebuilds from the translated events."""
    for name, data in events:
        assert data["type"] == name
        if name != "error":  # error events are not part of the SDK's event union
            ANTHROPIC_EVENT.validate_python(data)
    client = anthropic_client(serve(sse_bytes(events), headers=SSE))
    with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]) as stream:
        return stream.get_final_message()


def test_chat_stream_to_messages_text() -> None:
    translator = t.ChatToMessagesStream("claude-x")
    first = translator.feed(None, chunk("", role="assistant"))
    assert [name for name, _ in first] == ["message_start"]
    # The first text reaches the client with the chunk that carried it (no buffering).
    assert translator.feed(None, chunk("Hel"))[-1][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    events = [*first, block_start(0, {"type": "text", "text": ""}), block_delta(0, type="text_delta", text="Hel")]
    events += run(translator, [chunk("lo"), chunk(finish="stop"), chunk(no_choices=True, usage=USAGE)])
    assert [name for name, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    message = anthropic_final(events)
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        20,
        10,
        7,
    )


def test_chat_stream_to_messages_thinking_then_tool_calls() -> None:
    chunks = [
        chunk(reasoning="Let me "),
        chunk(reasoning="check."),
        chunk("On it."),
        chunk(tool_calls=[call_delta(0, id="call_1", name="get_weather", args="")]),
        chunk(tool_calls=[call_delta(0, args='{"ci')]),
        chunk(tool_calls=[call_delta(0, args='ty": "Paris"}')]),
        chunk(tool_calls=[call_delta(1, id="call_2", name="get_weather", args='{"city": "Rome"}')]),
        chunk(finish="tool_calls", usage=USAGE),  # usage on the finish chunk, as LiteLLM sends it
    ]
    events = run(t.ChatToMessagesStream("m"), chunks, end=False)
    assert events[-1][0] == "message_stop"  # finish + usage seen: the message ends without waiting for [DONE]
    message = anthropic_final(events)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "Let me check."  # type: ignore[union-attr]
    assert message.content[2].input == {"city": "Paris"} and message.content[2].id == "call_1"  # type: ignore[union-attr]
    assert message.content[3].input == {"city": "Rome"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_chat_stream_to_messages_without_usage_ends_at_end() -> None:
    translator = t.ChatToMessagesStream("m")
    events = run(translator, [chunk("a"), chunk(finish="length")], end=False)
    assert events[-1][0] == "content_block_stop"
    events += translator.end()
    assert translator.complete
    message = anthropic_final(events)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 0
    assert translator.end() == []


def test_chat_stream_to_messages_stop_sequence() -> None:
    message = anthropic_final(run(t.ChatToMessagesStream("m"), [chunk("a"), chunk(finish="stop", stop_reason="END")]))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_chat_stream_cut_off_reaches_the_anthropic_client_as_an_error() -> None:
    translator = t.ChatToMessagesStream("m")
    events = run(translator, [chunk("Hel"), chunk("lo")])
    assert not translator.complete
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": t.STREAM_CUT_OFF}})
    with pytest.raises(anthropic.APIStatusError, match="ended before the answer was complete"):
        anthropic_final(events)


def test_chat_stream_error_chunk_becomes_an_anthropic_error_event() -> None:
    events = run(t.ChatToMessagesStream("m"), [chunk("a"), {"error": {"message": "CUDA out of memory", "code": 500}}])
    assert events[-1][1]["error"]["message"] == "CUDA out of memory"
    with pytest.raises(anthropic.APIStatusError, match="CUDA out of memory"):
        anthropic_final(events)


# --- chat -> Messages: request ------------------------------------------------------------------


def test_chat_request_to_messages() -> None:
    body = sent_by_openai(
        "chat",
        model="claude-x",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
            {"role": "user", "content": "And tomorrow?"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}],
        tool_choice="required",
        parallel_tool_calls=False,
        stop="END",
        temperature=1.5,
        top_p=0.5,
        max_completion_tokens=200,
        user="u-1",
        stream=True,
        stream_options={"include_usage": True},
    )
    messages = t.chat_request_to_messages(body)
    assert messages == {
        "model": "claude-x",
        "system": "Be brief.\nUse tools.",
        "max_tokens": 200,
        "temperature": 1.0,
        "top_p": 0.5,
        "stop_sequences": ["END"],
        "tools": [{"name": "get_weather", "input_schema": WEATHER_TOOL["input_schema"]}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u-1"},
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "rainy"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    }


def test_chat_request_to_messages_defaults_json_schema_and_reasoning() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        "reasoning_effort": "medium",
    }
    messages = t.chat_request_to_messages(body)
    assert messages["max_tokens"] == t.DEFAULT_MAX_TOKENS
    assert messages["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert messages["thinking"] == {"type": "enabled", "budget_tokens": 4096 - 1}  # budget below max_tokens
    small = t.chat_request_to_messages({**body, "max_tokens": 500})
    assert "thinking" not in small  # no room for Anthropic's minimum budget


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": 2}, "n > 1"),
        ({"messages": [{"role": "function", "content": "x"}]}, "role 'function'"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input_audio"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "custom"),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{oops"}}]}
                ]
            },
            "not valid JSON",
        ),
    ],
)
def test_chat_request_that_messages_cannot_express_is_refused(body: JSON, message: str) -> None:
    with pytest.raises(t.TranslationError, match=message):
        t.chat_request_to_messages({"model": "m", "messages": [], **body})


# --- Messages -> chat: response and stream ------------------------------------------------------


ANTHROPIC_MESSAGE: JSON = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "thinking", "thinking": "Paris it is.", "signature": "c2ln"},
        {"type": "text", "text": "Checking the weather.", "citations": None},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 9, "cache_read_input_tokens": 20, "cache_creation_input_tokens": 3},
}


def test_messages_response_to_chat_through_the_sdk() -> None:
    Message.model_validate(ANTHROPIC_MESSAGE)
    body = t.messages_response_to_chat(ANTHROPIC_MESSAGE, "claude-x")
    completion = openai_client(serve(orjson.dumps(body))).chat.completions.create(model="claude-x", messages=[])
    assert isinstance(completion, ChatCompletion)
    choice = completion.choices[0]
    assert choice.message.content == "Checking the weather."
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert (call.id, call.function.name, orjson.loads(call.function.arguments)) == (
        "toolu_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        28,
        9,
        37,
    )
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 20
    assert choice.message.model_extra == {"reasoning_content": "Paris it is."}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reason_to_finish_reason(stop_reason: str, finish: str) -> None:
    body = t.messages_response_to_chat({**ANTHROPIC_MESSAGE, "stop_reason": stop_reason}, "m")
    assert ChatCompletion.model_validate(body).choices[0].finish_reason == finish


def block_start(index: int, block: JSON) -> tuple[str, JSON]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, **delta: Any) -> tuple[str, JSON]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> tuple[str, JSON]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def anthropic_stream_events() -> list[tuple[str, JSON]]:
    """A Messages stream as Anthropic sends it (ping, thinking with signature, text, tool use)."""
    usage = {**ANTHROPIC_MESSAGE["usage"], "output_tokens": 1}
    start = {**ANTHROPIC_MESSAGE, "content": [], "stop_reason": None, "usage": usage}
    tool = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    end = {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}}
    return [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        block_delta(0, type="thinking_delta", thinking="Paris."),
        block_delta(0, type="signature_delta", signature="c2ln"),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        block_delta(1, type="text_delta", text="Check"),
        block_delta(1, type="text_delta", text="ing."),
        block_stop(1),
        block_start(2, tool),
        block_delta(2, type="input_json_delta", partial_json=""),
        block_delta(2, type="input_json_delta", partial_json='{"city": '),
        block_delta(2, type="input_json_delta", partial_json='"Paris"}'),
        block_stop(2),
        ("message_delta", {**end, "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def openai_chat_final(events: list[t.Event]) -> Any:
    """What the openai SDK's chat stream helper rebuilds from the translated chunks."""
    client = openai_client(serve(sse_bytes(events), headers=SSE))
    with client.chat.completions.stream(model="m", messages=[], stream_options={"include_usage": True}) as stream:
        for _ in stream:
            pass
        return stream.get_final_completion()


def test_messages_stream_to_chat_through_the_sdk() -> None:
    for name, data in anthropic_stream_events():
        if name != "ping":
            ANTHROPIC_EVENT.validate_python(data)
    translator = t.MessagesToChatStream("claude-x", include_usage=True)
    events = run(translator, anthropic_stream_events())
    assert translator.complete
    assert events[-2][1]["choices"] == [] and events[-1] == (None, b"[DONE]")
    completion = openai_chat_final(events)
    message = completion.choices[0].message
    assert message.content == "Checking."
    assert message.tool_calls[0].function.name == "get_weather"
    assert orjson.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert message.tool_calls[0].id == "toolu_1"
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (28, 9)
    assert completion.usage.prompt_tokens_details.cached_tokens == 20
    reasoning = "".join(
        str(data["choices"][0]["delta"].get("reasoning_content", "")) for _, data in events[:-1] if data.get("choices")
    )
    assert reasoning == "Paris."


def test_messages_stream_to_chat_without_usage_unless_asked() -> None:
    events = run(t.MessagesToChatStream("m", include_usage=False), anthropic_stream_events())
    assert all(data.get("choices") for _, data in events[:-1]) and events[-1][1] == t.DONE
    assert "usage" not in str(events)


def test_messages_stream_cut_off_reaches_the_chat_client_as_an_error() -> None:
    translator = t.MessagesToChatStream("m", include_usage=False)
    events = run(translator, anthropic_stream_events()[:9])
    assert events[-1][1]["error"]["message"] == t.STREAM_CUT_OFF
    assert not translator.complete
    with pytest.raises(openai.APIError, match="ended before the answer was complete"):
        openai_chat_final(events)


def test_messages_stream_error_event_reaches_the_chat_client() -> None:
    error = ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    events = run(t.MessagesToChatStream("m", include_usage=False), [*anthropic_stream_events()[:3], error])
    assert events[-1][1]["error"]["code"] == "overloaded_error"
    with pytest.raises(openai.APIError, match="Overloaded"):
        openai_chat_final(events)


# --- Responses -> chat: request -----------------------------------------------------------------

FUNCTION_TOOL: JSON = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def test_responses_request_to_chat_codex_style() -> None:
    body = sent_by_openai(
        "responses",
        model="gpt-x",
        instructions="You are a coding agent.",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none."}]},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather and this picture?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "high"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rainy"}]},
            {"role": "user", "content": "Thanks"},
        ],
        tools=[FUNCTION_TOOL],
        tool_choice="auto",
        parallel_tool_calls=True,
        reasoning={"effort": "high", "summary": "auto"},
        store=False,
        stream=True,
        include=["reasoning.encrypted_content"],
        max_output_tokens=1000,
        temperature=0.3,
        top_p=0.8,
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
    )
    chat = t.responses_request_to_chat(body)
    assert chat == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "You are a coding agent.\n\nSandbox: none."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather and this picture?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rainy"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "parameters": FUNCTION_TOOL["parameters"],
                    "strict": True,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning_effort": "high",
        "max_tokens": 1000,
        "temperature": 0.3,
        "top_p": 0.8,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_responses_request_plain_string_input_and_json_object() -> None:
    chat = t.responses_request_to_chat(
        {
            "model": "m",
            "input": "hi",
            "text": {"format": {"type": "json_object"}},
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": "f"},
        }
    )
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert chat["response_format"] == {"type": "json_object"}
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"previous_response_id": "resp_1"}, "needs|full conversation"),
        ({"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}, "cannot run"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "file_id"),
        ({"background": True}, "background"),
    ],
)
def test_responses_request_that_chat_cannot_express_is_refused(body: JSON, message: str) -> None:
    with pytest.raises(t.TranslationError, match=message):
        t.responses_request_to_chat({"model": "m", "input": [], **body})


def test_previous_response_id_error_says_what_to_do() -> None:
    assert "full conversation" in t.PREVIOUS_RESPONSE_UNSUPPORTED


# --- chat -> Responses: response and stream -----------------------------------------------------


def test_chat_response_to_responses_through_the_sdk() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    usage = {**USAGE, "completion_tokens_details": {"reasoning_tokens": 3}}
    body = chat_completion(
        {"content": "Checking.", "reasoning_content": "hmm", "tool_calls": calls}, "tool_calls", usage
    )
    request = {"model": "gpt-x", "input": "hi", "tools": [FUNCTION_TOOL], "instructions": "Be brief."}
    translated = t.chat_response_to_responses(body, request)
    response = openai_client(serve(orjson.dumps(translated))).responses.create(model="gpt-x", input="hi")
    assert isinstance(response, Response)
    assert response.status == "completed"
    assert response.output_text == "Checking."
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    call = response.output[2]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_1", "get_weather", '{"city":"Paris"}')
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (30, 7, 37)
    assert response.usage.input_tokens_details.cached_tokens == 10
    assert response.usage.output_tokens_details.reasoning_tokens == 3
    assert response.instructions == "Be brief." and response.tools[0].name == "get_weather"  # type: ignore[union-attr]
    assert response.id.startswith("resp_")


def test_chat_response_cut_by_length_is_incomplete() -> None:
    response = Response.model_validate(
        t.chat_response_to_responses(chat_completion({"content": "abc"}, "length"), {"model": "m"})
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


def openai_responses_final(events: list[t.Event]) -> Any:
    """Validate each translated event and let the openai SDK's Responses stream helper rebuild the response."""
    for sequence, (name, data) in enumerate(events):
        RESPONSES_EVENT.validate_python(data)
        assert data["type"] == name
        assert data["sequence_number"] == sequence
    client = openai_client(serve(sse_bytes(events), headers=SSE))
    with client.responses.stream(model="m", input="hi", tools=[FUNCTION_TOOL]) as stream:  # type: ignore[list-item]
        for _ in stream:
            pass
        return stream.get_final_response()


def test_chat_stream_to_responses_text_and_function_calls() -> None:
    request = {"model": "gpt-x", "input": "hi", "tools": [FUNCTION_TOOL], "stream": True}
    translator = t.ChatToResponsesStream(request)
    chunks = [
        chunk("", role="assistant"),
        chunk(reasoning="Think"),
        chunk(reasoning="ing."),
        chunk("Check"),
        chunk("ing."),
        chunk(tool_calls=[call_delta(0, id="call_1", name="get_weather", args="")]),
        chunk(tool_calls=[call_delta(0, args='{"city":')]),
        chunk(tool_calls=[call_delta(0, args='"Paris"}')]),
        chunk(tool_calls=[call_delta(1, id="call_2", name="get_weather", args='{"city":"Rome"}')]),
        chunk(finish="tool_calls"),
        chunk(no_choices=True, usage=USAGE),
    ]
    events = run(translator, chunks, end=False)
    assert translator.complete
    assert translator.end() == []
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    assert "response.reasoning_text.delta" in names and "response.function_call_arguments.done" in names
    response = openai_responses_final(events)
    assert response.output_text == "Checking."
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call", "function_call"]
    assert response.output[0].content[0].text == "Thinking."
    calls = response.output[2:]
    assert [(c.call_id, c.arguments) for c in calls] == [("call_1", '{"city":"Paris"}'), ("call_2", '{"city":"Rome"}')]
    assert calls[0].parsed_arguments == {"city": "Paris"}
    assert response.usage.input_tokens == 30 and response.usage.input_tokens_details.cached_tokens == 10
    assert response.tools[0].name == "get_weather"


def test_chat_stream_to_responses_events_through_create_stream() -> None:
    events = run(t.ChatToResponsesStream({"model": "m"}), [chunk("He"), chunk("y"), chunk(finish="stop")])
    client = openai_client(serve(sse_bytes(events), headers=SSE))
    received = list(client.responses.create(model="m", input="hi", stream=True))
    deltas = [e.delta for e in received if e.type == "response.output_text.delta"]
    assert deltas == ["He", "y"]
    done = next(e for e in received if e.type == "response.output_text.done")
    assert done.text == "Hey"
    completed = received[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Hey"


def test_chat_stream_to_responses_first_delta_is_not_held_back() -> None:
    translator = t.ChatToResponsesStream({"model": "m"})
    translator.feed(None, chunk("", role="assistant"))
    events = translator.feed(None, chunk("Hi"))
    assert events[-1][1]["type"] == "response.output_text.delta" and events[-1][1]["delta"] == "Hi"


def test_chat_stream_to_responses_length_is_incomplete() -> None:
    events = run(t.ChatToResponsesStream({"model": "m"}), [chunk("abc"), chunk(finish="length")])
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    for _, data in events:
        RESPONSES_EVENT.validate_python(data)
    with pytest.raises(RuntimeError, match=r"response\.completed"):
        openai_responses_final(events)  # the SDK only finishes a completed response


def test_chat_stream_cut_off_reaches_the_responses_client_as_failed() -> None:
    translator = t.ChatToResponsesStream({"model": "m"})
    events = run(translator, [chunk("abc")])
    assert not translator.complete
    assert events[-1][0] == "response.failed"
    failed = RESPONSES_EVENT.validate_python(events[-1][1])
    assert failed.response.error.message == t.STREAM_CUT_OFF
    client = openai_client(serve(sse_bytes(events), headers=SSE))
    assert list(client.responses.create(model="m", input="hi", stream=True))[-1].type == "response.failed"


def test_responses_stream_of_an_empty_upstream_fails() -> None:
    events = t.ChatToResponsesStream({"model": "m"}).end()
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "response.failed"]


# --- errors -------------------------------------------------------------------------------------


def test_chat_400_reaches_an_anthropic_client_as_invalid_request_error() -> None:
    upstream = orjson.dumps(
        {"error": {"message": "max_tokens is too large: 99999", "type": "BadRequestError", "code": 400}}
    )
    body = t.chat_error_to_messages(400, upstream)
    assert body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens is too large: 99999"},
    }
    client = anthropic_client(serve(orjson.dumps(body), 400))
    with pytest.raises(anthropic.BadRequestError, match="max_tokens is too large") as caught:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body == body


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (401, b'{"error": "bad key"}', "authentication_error", "bad key"),
        (404, b'{"detail": "Not Found"}', "not_found_error", "Not Found"),
        (422, b'{"detail": [{"loc": ["body"], "msg": "field required"}]}', "invalid_request_error", "field required"),
        (429, b'{"message": "slow down"}', "rate_limit_error", "slow down"),
        (500, b"Internal Server Error", "api_error", "Internal Server Error"),
        (503, b"", "overloaded_error", "no message"),
    ],
)
def test_chat_errors_to_messages(status: int, body: bytes, kind: str, message: str) -> None:
    translated = t.chat_error_to_messages(status, body)
    assert translated["error"]["type"] == kind
    assert message in translated["error"]["message"]


def test_messages_429_reaches_an_openai_client_as_rate_limit() -> None:
    upstream = orjson.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded"}}
    )
    body = t.messages_error_to_chat(429, upstream)
    client = openai_client(serve(orjson.dumps(body), 429))
    with pytest.raises(openai.RateLimitError, match="request tokens has exceeded") as caught:
        client.chat.completions.create(model="m", messages=[])
    assert caught.value.code == "rate_limit_error"


def test_responses_errors_keep_openai_shape() -> None:
    translator = t.ResponsesViaChat()
    original = {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
    assert translator.error(400, orjson.dumps(original)) == original
    assert translator.error(502, b"<html>bad gateway</html>")["error"] == {
        "message": "<html>bad gateway</html>",
        "type": "server_error",
        "param": None,
        "code": None,
    }


# --- translators --------------------------------------------------------------------------------


def test_translators_hold_one_exchange() -> None:
    messages = t.TRANSLATIONS[("messages", "chat")]()
    chat = messages.request({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert messages.response(chat_completion({"content": "yo"}))["content"][0]["text"] == "yo"
    assert isinstance(messages.stream(), t.ChatToMessagesStream)

    responses = t.TRANSLATIONS[("responses", "chat")]()
    responses.request({"model": "gpt-x", "input": "hi", "instructions": "Be brief."})
    assert responses.response(chat_completion({"content": "yo"}))["instructions"] == "Be brief."

    to_messages = t.TRANSLATIONS[("chat", "messages")]()
    to_messages.request({"model": "c", "messages": [], "stream": True, "stream_options": {"include_usage": True}})
    stream = to_messages.stream()
    assert run(stream, anthropic_stream_events())[-2][1]["usage"]["completion_tokens"] == 9


# --- which API a backend is asked in ------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "backend_apis", "expected"),
    [
        ("messages", None, "messages"),  # declares nothing: speaks everything (pass-through)
        ("messages", {"messages", "chat_completions"}, "messages"),
        ("messages", {"chat_completions"}, "chat_completions"),
        ("responses", {"chat_completions", "embeddings"}, "chat_completions"),
        ("chat_completions", {"messages"}, "messages"),
        ("responses", {"messages"}, None),  # no translation Responses -> Messages
        ("embeddings", {"chat_completions"}, None),
        ("completions", {"messages"}, None),
        ("rerank", {"chat_completions"}, "rerank"),  # endpoints outside the declared formats pass through
    ],
)
def test_upstream_api(client: str, backend_apis: set[str] | None, expected: str | None) -> None:
    assert t.upstream_api(client, backend_apis) == expected


def test_config_file_apis(tmp_path: Any) -> None:
    from router.config import ConfigError, load_config_file

    path = tmp_path / "config.yaml"
    path.write_text(
        "servers:\n"
        "  vllm: {url: 'http://h:8000/v1', apis: [chat_completions, completions, chat_completions]}\n"
        "  any: {url: 'http://h:8001/v1'}\n"
    )
    vllm, anything = load_config_file(str(path), {}).servers
    assert vllm.apis == ["chat_completions", "completions"]
    assert anything.apis is None
    for bad in ("[chat]", "[]", "chat_completions"):
        path.write_text(f"servers:\n  x: {{url: 'http://h/v1', apis: {bad}}}\n")
        with pytest.raises(ConfigError, match=r"servers\.x\.apis: must be a non-empty list of chat_completions"):
            load_config_file(str(path), {})


def test_tool_calls_without_index_are_told_apart_by_id() -> None:
    """Some servers send each tool call whole, without `index`."""
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]
    chunks = [chunk(tool_calls=[calls[0]]), chunk(tool_calls=[calls[1]]), chunk(finish="tool_calls")]
    message = anthropic_final(run(t.ChatToMessagesStream("m"), chunks))
    assert [(b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        ("call_a", {"city": "Paris"}),
        ("call_b", {"city": "Rome"}),
    ]
    response = openai_responses_final(run(t.ChatToResponsesStream({"model": "m"}), chunks))
    assert [(i.call_id, i.arguments) for i in response.output if i.type == "function_call"] == [
        ("call_a", '{"city": "Paris"}'),
        ("call_b", '{"city": "Rome"}'),
    ]


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/chat/completions", "chat_completions"),
        ("/completions", "completions"),
        ("/responses", "responses"),
        ("/responses/input_tokens", "responses"),
        ("/messages/count_tokens", "messages"),
        ("/rerank", None),
        ("/messagesx", None),
    ],
)
def test_api_of_path(path: str, api: str | None) -> None:
    assert t.api_of_path(path) == api


def test_codex_tools_hosted_ones_left_out_namespaces_flattened_and_named_back() -> None:
    """What Codex CLI 0.171 sends: function tools, a `namespace` of functions, and `web_search`."""
    spawn = {"type": "function", "name": "spawn_agent", "parameters": {"type": "object", "properties": {}}}
    request = {
        "model": "m",
        "input": "hi",
        "tools": [
            FUNCTION_TOOL,
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [spawn]},
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "stream": True,
    }
    chat = t.responses_request_to_chat(request)
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["get_weather", "spawn_agent"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is True
    chunks = [chunk(tool_calls=[call_delta(0, id="call_1", name="spawn_agent", args="{}")]), chunk(finish="tool_calls")]
    response = openai_responses_final(run(t.ChatToResponsesStream(request), chunks))
    call = response.output[0]
    assert call.type == "function_call" and (call.name, call.namespace) == ("spawn_agent", "multi_agent_v1")
    plain = t.chat_response_to_responses(
        chat_completion(
            {"tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            "tool_calls",
        ),
        request,
    )
    assert "namespace" not in plain["output"][0]
    only_hosted = t.responses_request_to_chat({**request, "tools": [{"type": "web_search"}]})
    assert "tools" not in only_hosted and "parallel_tool_calls" not in only_hosted


def test_messages_system_messages_in_the_conversation() -> None:
    """Claude Code 2.1 sends system messages inside `messages` too."""
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Tools policy."}]},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Reminder."},
        ],
    }
    assert t.messages_request_to_chat(body)["messages"] == [
        {"role": "system", "content": "You are Claude Code.\n\nTools policy."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "Reminder."},
    ]
