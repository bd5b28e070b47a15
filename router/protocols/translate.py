"""Translation between Anthropic's Messages, OpenAI's Responses and OpenAI's chat completions.

Pure functions over parsed JSON bodies, and small stream translators fed one upstream event at a
time that return the client's events at once (nothing waits for the whole answer). No I/O.

Supported directions (client API -> upstream API): Messages -> chat, Responses -> chat,
chat -> Messages. A request that uses something the upstream API cannot express raises
`TranslationError` (the client gets a 400 in its own error shape). What is dropped on the way is
listed in the README ("Translation between APIs").

A `Translator` holds one exchange: `request()` first (it remembers what the answer needs, e.g. the
Responses request echoed in the response), then `response()` for a body, or `stream()` for a
stream translator, and `error()` for an upstream error body.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, ClassVar

import orjson

JSON = dict[str, Any]
Event = tuple[str | None, Any]  # (SSE event name, data)

# Anthropic requires max_tokens; a chat request without a limit gets this one.
DEFAULT_MAX_TOKENS = 4096
# reasoning_effort -> Anthropic thinking budget (tokens); "minimal"/"none" turn thinking off.
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
MIN_THINKING_BUDGET = 1024
# An upstream error body that is not JSON is quoted up to this many characters.
MAX_ERROR_TEXT = 2000

PREVIOUS_RESPONSE_UNSUPPORTED = (
    "previous_response_id is not supported for this model: its backend speaks chat completions, so the "
    "router translates and keeps no response state. Send the full conversation in `input` (with store: false)."
)
STREAM_CUT_OFF = "The upstream stream ended before the answer was complete."
# An event whose data is bytes is sent as they are: chat streams end with `data: [DONE]`.
DONE = b"[DONE]"


class TranslationError(ValueError):
    """The request uses something the upstream's API cannot express (the client gets a 400)."""


# The request formats a backend can declare it speaks (config.yaml `apis`; GraphQL `BackendApi`
# in upper case). A backend that declares none speaks all of them (pass-through).
BACKEND_APIS = ("chat_completions", "completions", "embeddings", "responses", "messages")
# A client's API -> the APIs its requests can be translated to, in order of preference.
TRANSLATABLE: dict[str, tuple[str, ...]] = {
    "messages": ("chat_completions",),
    "responses": ("chat_completions",),
    "chat_completions": ("messages",),
}


# API names (above) -> the `name` of their adapter in router.protocols.
ADAPTER_NAMES = {
    "chat_completions": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
    "messages": "messages",
}
# API names -> their path under /v1; an endpoint below one (/responses/input_tokens) belongs to it.
API_PATHS = {
    "chat_completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
    "messages": "/messages",
}


def api_of_path(path: str) -> str | None:
    """The declared API an endpoint (an adapter's path under /v1) belongs to; None for the others."""
    try:
        return _API_OF_PATH[path]
    except KeyError:
        pass
    api = next((a for a, root in API_PATHS.items() if path == root or path.startswith(root + "/")), None)
    if len(_API_OF_PATH) < 1024:  # adapters' paths: a handful (bounded all the same)
        _API_OF_PATH[path] = api
    return api


_API_OF_PATH: dict[str, str | None] = {}


def upstream_api(client_api: str, backend_apis: Collection[str] | None) -> str | None:
    """The API to ask a backend in: the client's own (pass-through), one it translates to, or None.

    None means the backend is no candidate for this request. Endpoints outside BACKEND_APIS
    (rerank, audio, ...) pass through to any backend serving the model.
    """
    if backend_apis is None or client_api in backend_apis or client_api not in BACKEND_APIS:
        return client_api
    return next((api for api in TRANSLATABLE.get(client_api, ()) if api in backend_apis), None)


def unknown_apis(values: Iterable[Any]) -> list[str]:
    """The entries of a declared API list that are not API names (empty when all are valid)."""
    return [str(v) for v in values if v not in BACKEND_APIS]


# --- small helpers ----------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _clone(value: JSON) -> JSON:
    """A deep copy (events must not change when the translator's state changes later)."""
    copied: JSON = orjson.loads(orjson.dumps(value))
    return copied


def _obj(value: Any) -> JSON:
    """`value` if it is an object, else an empty one (for optional parts of upstream answers)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise TranslationError(f"'{where}' must be an array.")
    return value


def _dict(value: Any, where: str) -> JSON:
    if not isinstance(value, dict):
        raise TranslationError(f"'{where}' must be an object.")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TranslationError(f"'{where}' must be a string.")
    return value


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _copy(source: JSON, target: JSON, pairs: Iterable[tuple[str, str]]) -> None:
    """Copy each present, non-null `source[a]` to `target[b]`."""
    for a, b in pairs:
        if source.get(a) is not None:
            target[b] = source[a]


def _parse_data_url(url: str) -> tuple[str, str] | None:
    """`data:<media type>;base64,<data>` -> (media type, data); None for any other URL."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")], data


def _arguments(raw: Any) -> JSON:
    """A tool call's JSON arguments as an object ({} when absent or not an object)."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _chat_reasoning(delta: JSON) -> str:
    """Reasoning text of a chat message or delta (`reasoning_content`, or vLLM's newer `reasoning`)."""
    value = delta.get("reasoning_content") or delta.get("reasoning")
    return value if isinstance(value, str) else ""


def _call_position(call: JSON, ids: dict[int, str]) -> int:
    """A streamed tool call's `index` (`ids`: the calls so far by index, with their ids).

    Servers that leave `index` out start a new call by sending a new id.
    """
    index = call.get("index")
    if isinstance(index, int) and not isinstance(index, bool):
        return index
    if not ids:
        return 0
    last = max(ids)
    return last + 1 if call.get("id") and call.get("id") != ids[last] else last


def _chat_cached(usage: JSON) -> int:
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return cached or _int(usage.get("prompt_cache_hit_tokens"))  # DeepSeek


def _chat_reasoning_tokens(usage: JSON) -> int:
    details = usage.get("completion_tokens_details")
    return _int(details.get("reasoning_tokens")) if isinstance(details, dict) else 0


def _first_choice(body: JSON) -> JSON:
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


# --- errors -----------------------------------------------------------------------------------

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_exceeded",
    "overloaded_error": "server_error",
    "api_error": "server_error",
    "timeout_error": "server_error",
    "billing_error": "insufficient_quota",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic error type Anthropic uses for an HTTP status."""
    if status in _ANTHROPIC_ERROR_TYPES:
        return _ANTHROPIC_ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_message(body: bytes) -> str:
    """The human message of an upstream error body in OpenAI's, Anthropic's or a framework's shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for value in (error, data.get("message"), data.get("detail")):
            if isinstance(value, str) and value:
                return value
        if data.get("detail") is not None:  # FastAPI validation errors: a list of problems
            return _dumps(data["detail"])[:MAX_ERROR_TEXT]
    text = body.decode("utf-8", "replace").strip()
    return text[:MAX_ERROR_TEXT] or "The upstream answered with an error and no message."


def chat_error_to_messages(status: int, body: bytes) -> JSON:
    """An OpenAI-shaped (or any) upstream error as Anthropic's error body, keeping its message."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": error_message(body)}}


def messages_error_to_chat(status: int, body: bytes) -> JSON:
    """An Anthropic-shaped (or any) upstream error as OpenAI's error body, keeping its message."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    if not isinstance(kind, str):
        kind = anthropic_error_type(status)
    openai_type = _OPENAI_ERROR_TYPES.get(kind, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": error_message(body), "type": openai_type, "param": None, "code": kind}}


# --- stop reasons and usage -------------------------------------------------------------------

_STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_to_stop_reason(finish: Any, matched_stop: Any, has_tool_calls: bool) -> tuple[str, str | None]:
    """Chat `finish_reason` (+ vLLM's matched `stop_reason`) -> Anthropic (stop_reason, stop_sequence)."""
    if finish == "length":
        return "max_tokens", None
    if finish in ("tool_calls", "function_call") or has_tool_calls:
        return "tool_use", None
    if finish == "content_filter":
        return "refusal", None
    if isinstance(matched_stop, str):
        return "stop_sequence", matched_stop
    return "end_turn", None


def stop_reason_to_finish(stop_reason: Any) -> str:
    return _STOP_TO_FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def chat_usage_to_messages(usage: Any) -> JSON:
    """Chat usage -> Anthropic usage (Anthropic's input_tokens exclude the tokens read from cache)."""
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt, cached = _int(usage.get("prompt_tokens")), _chat_cached(usage)
    return {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def messages_usage_to_chat(usage: Any) -> JSON:
    """Anthropic usage -> chat usage (prompt_tokens include cache reads and writes)."""
    if not isinstance(usage, dict):
        usage = {}
    cached, written = _int(usage.get("cache_read_input_tokens")), _int(usage.get("cache_creation_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + cached + written
    completion = _int(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_usage_to_responses(usage: Any) -> JSON:
    if not isinstance(usage, dict):
        usage = {}
    prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": _chat_cached(usage), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _chat_reasoning_tokens(usage)},
        "total_tokens": _int(usage.get("total_tokens")) or prompt + completion,
    }


# --- Messages request -> chat request ---------------------------------------------------------


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    blocks = _list(system, "system")
    return "\n".join(_str(_dict(b, "system[]").get("text"), "system[].text") for b in blocks)


def _image_block_to_part(block: JSON) -> JSON:
    source = _dict(block.get("source"), "image.source")
    kind = source.get("type")
    if kind == "base64":
        media = _str(source.get("media_type"), "image.source.media_type")
        url = f"data:{media};base64,{_str(source.get('data'), 'image.source.data')}"
    elif kind == "url":
        url = _str(source.get("url"), "image.source.url")
    else:
        raise TranslationError(f"Image source type '{kind}' cannot be sent to a chat completions backend.")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_block_to_part(block: JSON) -> JSON:
    source = _dict(block.get("source"), "document.source")
    if source.get("type") == "text":
        return {"type": "text", "text": _str(source.get("data"), "document.source.data")}
    if source.get("type") == "base64":
        media = _str(source.get("media_type"), "document.source.media_type")
        data = _str(source.get("data"), "document.source.data")
        name = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": f"data:{media};base64,{data}"}}
    raise TranslationError(f"Document source type '{source.get('type')}' cannot be sent to a chat completions backend.")


def _content_block_to_part(block: JSON) -> JSON:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": _str(block.get("text"), "text.text")}
    if kind == "image":
        return _image_block_to_part(block)
    if kind == "document":
        return _document_block_to_part(block)
    raise TranslationError(f"Content block type '{kind}' cannot be sent to a chat completions backend.")


def _parts_content(parts: list[JSON]) -> str | list[JSON]:
    """Chat content: a plain string when it is only text (what every chat server accepts), else parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _tool_result_to_chat(block: JSON) -> tuple[JSON, list[JSON]]:
    """A tool_result block -> (a `tool` message, image parts that chat tool messages cannot carry)."""
    call_id = _str(block.get("tool_use_id"), "tool_result.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[JSON] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for item in _list(content, "tool_result.content"):
            part = _content_block_to_part(_dict(item, "tool_result.content[]"))
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    return {"role": "tool", "tool_call_id": call_id, "content": "\n".join(texts)}, images


def _user_turn_to_chat(content: list[Any]) -> list[JSON]:
    tools: list[JSON] = []
    parts: list[JSON] = []
    for item in content:
        block = _dict(item, "messages[].content[]")
        if block.get("type") == "tool_result":
            message, images = _tool_result_to_chat(block)
            tools.append(message)
            parts.extend(images)
        else:
            parts.append(_content_block_to_part(block))
    if parts:
        tools.append({"role": "user", "content": _parts_content(parts)})
    return tools


def _assistant_turn_to_chat(content: list[Any]) -> list[JSON]:
    texts: list[str] = []
    calls: list[JSON] = []
    for item in content:
        block = _dict(item, "messages[].content[]")
        kind = block.get("type")
        if kind == "text":
            texts.append(_str(block.get("text"), "text.text"))
        elif kind == "tool_use":
            name = _str(block.get("name"), "tool_use.name")
            arguments = _dumps(block.get("input") if block.get("input") is not None else {})
            call = {"id": _str(block.get("id"), "tool_use.id"), "type": "function"}
            calls.append({**call, "function": {"name": name, "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier turns' thinking: chat servers take no reasoning as input
        else:
            raise TranslationError(f"Content block type '{kind}' cannot be sent to a chat completions backend.")
    message: JSON = {"role": "assistant", "content": "\n".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message] if texts or calls else []


def _messages_turn_to_chat(message: JSON) -> list[JSON]:
    role = message.get("role")
    content = message.get("content")
    if role == "system":  # system messages within the conversation (text only)
        return [{"role": "system", "content": _system_text(content)}]
    if role not in ("user", "assistant"):
        raise TranslationError(f"Message role '{role}' is not valid; use 'user', 'assistant' or 'system'.")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = _list(content, "messages[].content")
    return _user_turn_to_chat(blocks) if role == "user" else _assistant_turn_to_chat(blocks)


def _messages_tool_to_chat(tool: JSON) -> JSON:
    kind = tool.get("type")
    if kind not in (None, "custom") or "input_schema" not in tool:
        raise TranslationError(f"Tool type '{kind}' is a server tool that a chat completions backend cannot run.")
    function: JSON = {"name": _str(tool.get("name"), "tools[].name"), "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _messages_tool_choice_to_chat(choice: JSON) -> Any:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": _str(choice.get("name"), "tool_choice.name")}}
    raise TranslationError(f"tool_choice type '{kind}' is not valid.")


def messages_request_to_chat(body: JSON) -> JSON:
    """An Anthropic Messages request as a chat completions request."""
    messages: list[JSON] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _system_text(body["system"])})
    for item in _list(body.get("messages"), "messages"):
        messages.extend(_messages_turn_to_chat(_dict(item, "messages[]")))
    out: JSON = {"model": body.get("model"), "messages": _merge_system(messages)}
    _copy(body, out, (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")))
    if body.get("stop_sequences"):
        out["stop"] = _list(body["stop_sequences"], "stop_sequences")
    if body.get("tools"):
        out["tools"] = [_messages_tool_to_chat(_dict(t, "tools[]")) for t in _list(body["tools"], "tools")]
    if body.get("tool_choice") is not None:
        choice = _dict(body["tool_choice"], "tool_choice")
        out["tool_choice"] = _messages_tool_choice_to_chat(choice)
        if choice.get("disable_parallel_tool_use") is True and out.get("tools"):
            out["parallel_tool_calls"] = False
    out.update(_messages_output_config_to_chat(body.get("output_config")))
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _messages_output_config_to_chat(config: Any) -> JSON:
    """`output_config`: a JSON schema -> response_format; effort -> reasoning_effort (max/xhigh -> high)."""
    out: JSON = {}
    if not isinstance(config, dict):
        return out
    fmt = config.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = _dict(fmt.get("schema"), "output_config.format.schema")
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    effort = config.get("effort")
    if isinstance(effort, str):
        out["reasoning_effort"] = "high" if effort in ("xhigh", "max") else effort
    return out


# --- chat response -> Messages response -------------------------------------------------------


def _message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return chat_id if chat_id.startswith("msg_") else "msg_" + chat_id.removeprefix("chatcmpl-")
    return _new_id("msg_")


def chat_response_to_messages(body: JSON, model: str) -> JSON:
    """A chat completion as an Anthropic Messages response (`model`: the name the client asked for)."""
    choice = _first_choice(body)
    message = _obj(choice.get("message"))
    content: list[JSON] = []
    reasoning = _chat_reasoning(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    for key in ("content", "refusal"):
        if isinstance(message.get(key), str) and message[key]:
            content.append({"type": "text", "text": message[key]})
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    for call in calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name") or "",
                "input": _arguments(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = finish_to_stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), bool(calls)
    )
    return {
        "id": _message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": chat_usage_to_messages(body.get("usage")),
    }


# --- chat stream -> another API's stream ------------------------------------------------------


class _FromChatStream:
    """What the translations of a chat completion stream share: chunk by chunk, the first choice's
    deltas, and the closing events once both the finish reason and the usage arrived."""

    _started: bool
    _done: bool
    _finish: Any
    _usage: JSON | None

    def feed(self, event: str | None, data: Any) -> list[Event]:
        if self._done or not isinstance(data, dict):
            return []
        if data.get("error") and not data.get("choices"):
            return self._upstream_error(error_message(_dumps(data).encode()))
        out: list[Event] = [] if self._started else self._begin(data)
        if isinstance(data.get("usage"), dict):
            self._usage = data["usage"]
        for choice in data.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                out.extend(self._choice(choice))
        if self._finish is not None and self._usage is not None:
            out.extend(self._finished())
        return out

    def _begin(self, chunk: JSON) -> list[Event]:
        """The stream's opening events (from its first chunk)."""
        raise NotImplementedError

    def _choice(self, choice: JSON) -> list[Event]:
        raise NotImplementedError

    def _finished(self) -> list[Event]:
        """The closing events of an answer that ended as it should."""
        raise NotImplementedError

    def _upstream_error(self, message: str) -> list[Event]:
        """The stream's end when the upstream sent an error instead of a chunk."""
        raise NotImplementedError


# --- chat stream -> Messages stream -----------------------------------------------------------


class ChatToMessagesStream(_FromChatStream):
    """Chat completion chunks in, Anthropic stream events out, one chunk at a time.

    The closing `message_delta` (stop reason, usage) is sent once both the finish reason and the
    usage arrived, or at `end()`. A stream that ends without a finish reason ends with an `error`
    event, as Anthropic ends a broken stream (the SDKs raise it).
    """

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._done = False
        self._block: str | None = None  # kind of the open content block
        self._index = -1  # index of the newest content block
        self._tool_blocks: dict[int, int] = {}  # chat tool_calls index -> content block index
        self._tool_ids: dict[int, str] = {}  # chat tool_calls index -> its id
        self._finish: tuple[str, str | None] | None = None
        self._usage: JSON | None = None
        self._complete = False

    def _begin(self, chunk: JSON) -> list[Event]:
        return [self._message_start(chunk)]

    def _finished(self) -> list[Event]:
        return self._message_end()

    def _upstream_error(self, message: str) -> list[Event]:
        return self._fail(anthropic_error_type(500), message)

    def end(self) -> list[Event]:
        if self._done:
            return []
        if self._finish is None:
            return self._fail("api_error", STREAM_CUT_OFF)
        return self._message_end()

    @property
    def complete(self) -> bool:
        """True once the answer ended as the protocol says (not cut off, no error)."""
        return self._complete

    def _message_start(self, chunk: JSON) -> Event:
        self._started = True
        message: JSON = {
            "id": _message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return "message_start", {"type": "message_start", "message": message}

    def _choice(self, choice: JSON) -> list[Event]:
        out: list[Event] = []
        delta = _obj(choice.get("delta"))
        reasoning = _chat_reasoning(delta)
        if reasoning:
            out += self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning})
        if isinstance(delta.get("content"), str) and delta["content"]:
            out += self._delta("text", {"type": "text_delta", "text": delta["content"]})
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._tool_delta(call)
        if choice.get("finish_reason"):
            out += self._close_block()
            has_calls = bool(self._tool_blocks)
            self._finish = finish_to_stop_reason(choice["finish_reason"], choice.get("stop_reason"), has_calls)
        return out

    def _open(self, kind: str, block: JSON) -> list[Event]:
        out = self._close_block()
        self._index += 1
        self._block = kind
        out.append(
            ("content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block})
        )
        return out

    def _close_block(self) -> list[Event]:
        if self._block is None:
            return []
        self._block = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, kind: str, delta: JSON, index: int | None = None) -> list[Event]:
        out: list[Event] = []
        if index is None and self._block != kind:
            empty = (
                {"type": "thinking", "thinking": "", "signature": ""}
                if kind == "thinking"
                else {"type": kind, "text": ""}
            )
            out = self._open(kind, empty)
        event = {"type": "content_block_delta", "index": self._index if index is None else index, "delta": delta}
        out.append(("content_block_delta", event))
        return out

    def _tool_delta(self, call: JSON) -> list[Event]:
        out: list[Event] = []
        position = _call_position(call, self._tool_ids)
        function = _obj(call.get("function"))
        if position not in self._tool_blocks:
            self._tool_ids[position] = call.get("id") or _new_id("toolu_")
            block = {"type": "tool_use", "id": self._tool_ids[position], "name": function.get("name") or ""}
            out = self._open("tool_use", {**block, "input": {}})
            self._tool_blocks[position] = self._index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # Servers send tool calls one after the other; a late fragment still reaches its own block.
            index = self._tool_blocks[position]
            out += self._delta("tool_use", {"type": "input_json_delta", "partial_json": arguments}, index)
        return out

    def _message_end(self) -> list[Event]:
        assert self._finish is not None
        self._done = self._complete = True
        stop_reason, stop_sequence = self._finish
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        usage = chat_usage_to_messages(self._usage)
        return [
            *self._close_block(),
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            ("message_stop", {"type": "message_stop"}),
        ]

    def _fail(self, kind: str, message: str) -> list[Event]:
        self._done = True
        return [("error", {"type": "error", "error": {"type": kind, "message": message}})]


# --- chat request -> Messages request ---------------------------------------------------------


def _chat_text(content: Any, where: str) -> str:
    """Text of chat content given as a string or as text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in _list(content, where):
        part = _dict(part, f"{where}[]")
        if part.get("type") == "text":
            texts.append(_str(part.get("text"), f"{where}[].text"))
        elif part.get("type") == "refusal":
            texts.append(_str(part.get("refusal"), f"{where}[].refusal"))
        else:
            raise TranslationError(f"Content part type '{part.get('type')}' is not allowed in {where}.")
    return "\n".join(texts)


def _image_source(url: str) -> JSON:
    data_url = _parse_data_url(url)
    if data_url is not None:
        return {"type": "base64", "media_type": data_url[0], "data": data_url[1]}
    return {"type": "url", "url": url}


def _chat_part_to_block(part: JSON) -> JSON | None:
    kind = part.get("type")
    if kind == "text":
        text = _str(part.get("text"), "content[].text")
        return {"type": "text", "text": text} if text else None  # Anthropic refuses empty text blocks
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return {"type": "image", "source": _image_source(_str(url, "content[].image_url.url"))}
    if kind == "file":
        file = _dict(part.get("file"), "content[].file")
        data_url = _parse_data_url(file.get("file_data") or "")
        if data_url is not None and data_url[0] == "application/pdf":
            return {"type": "document", "source": {"type": "base64", "media_type": data_url[0], "data": data_url[1]}}
        raise TranslationError("Only PDF files given as file_data can be sent to a Messages backend.")
    raise TranslationError(f"Content part type '{kind}' cannot be sent to a Messages backend.")


def _chat_user_blocks(content: Any) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = (_chat_part_to_block(_dict(p, "messages[].content[]")) for p in _list(content, "messages[].content"))
    return [b for b in blocks if b is not None]


def _chat_assistant_blocks(message: JSON) -> list[JSON]:
    blocks: list[JSON] = []
    text = _chat_text(message.get("content"), "messages[].content")
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        call = _dict(call, "messages[].tool_calls[]")
        function = _dict(call.get("function"), "messages[].tool_calls[].function")
        raw = function.get("arguments") or "{}"
        try:
            arguments = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError:
            raise TranslationError("A tool call's 'arguments' is not valid JSON.") from None
        if not isinstance(arguments, dict):
            raise TranslationError("A tool call's 'arguments' must be a JSON object.")
        name = _str(function.get("name"), "tool_calls[].function.name")
        blocks.append(
            {"type": "tool_use", "id": _str(call.get("id"), "tool_calls[].id"), "name": name, "input": arguments}
        )
    return blocks


def _append_turn(messages: list[JSON], role: str, blocks: list[JSON]) -> None:
    """Append blocks as a turn, merged into the previous one of the same role (Messages alternates)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _chat_tool_to_messages(tool: JSON) -> JSON:
    if tool.get("type") != "function":
        raise TranslationError(f"Tool type '{tool.get('type')}' cannot be sent to a Messages backend.")
    function = _dict(tool.get("function"), "tools[].function")
    out: JSON = {
        "name": _str(function.get("name"), "tools[].function.name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return out


def _chat_tool_choice_to_messages(choice: Any) -> JSON:
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = _dict(choice.get("function"), "tool_choice.function")
        return {"type": "tool", "name": _str(function.get("name"), "tool_choice.function.name")}
    raise TranslationError("tool_choice must be 'auto', 'none', 'required' or a function.")


def _thinking_for_effort(effort: Any, max_tokens: int) -> JSON | None:
    budget = min(THINKING_BUDGETS.get(effort, 0) if isinstance(effort, str) else 0, max_tokens - 1)
    return {"type": "enabled", "budget_tokens": budget} if budget >= MIN_THINKING_BUDGET else None


def _chat_messages_to_messages(items: list[Any]) -> tuple[list[str], list[JSON]]:
    system: list[str] = []
    messages: list[JSON] = []
    for item in items:
        message = _dict(item, "messages[]")
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_chat_text(message.get("content"), "messages[].content"))
        elif role == "user":
            _append_turn(messages, "user", _chat_user_blocks(message.get("content")))
        elif role == "assistant":
            _append_turn(messages, "assistant", _chat_assistant_blocks(message))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": _str(message.get("tool_call_id"), "messages[].tool_call_id"),
                "content": _chat_text(message.get("content"), "messages[].content"),
            }
            _append_turn(messages, "user", [result])
        else:
            raise TranslationError(f"Message role '{role}' cannot be sent to a Messages backend.")
    return system, messages


def chat_request_to_messages(body: JSON, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> JSON:
    """A chat completions request as an Anthropic Messages request."""
    if _int(body.get("n")) > 1:
        raise TranslationError("n > 1 cannot be sent to a Messages backend (it answers one choice).")
    system, messages = _chat_messages_to_messages(_list(body.get("messages"), "messages"))
    max_tokens = _int(body.get("max_completion_tokens")) or _int(body.get("max_tokens")) or default_max_tokens
    out: JSON = {"model": body.get("model"), "messages": messages, "max_tokens": max_tokens}
    if system:
        out["system"] = "\n".join(system)
    if isinstance(body.get("temperature"), (int, float)):
        out["temperature"] = min(float(body["temperature"]), 1.0)  # Anthropic's range is 0..1
    _copy(body, out, (("top_p", "top_p"),))
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else _list(stop, "stop")
    if body.get("tools"):
        out["tools"] = [_chat_tool_to_messages(_dict(t, "tools[]")) for t in _list(body["tools"], "tools")]
    if out.get("tools") and (body.get("tool_choice") is not None or body.get("parallel_tool_calls") is False):
        choice = _chat_tool_choice_to_messages(body.get("tool_choice") or "auto")
        if body.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        out["tool_choice"] = choice
    elif body.get("tool_choice") == "none":
        out["tool_choice"] = {"type": "none"}
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = _dict(fmt.get("json_schema"), "response_format.json_schema")
        out["output_config"] = {"format": {"type": "json_schema", "schema": _dict(schema.get("schema"), "schema")}}
    thinking = _thinking_for_effort(body.get("reasoning_effort"), max_tokens)
    if thinking is not None:
        out["thinking"] = thinking
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is True:
        out["stream"] = True
    return out


# --- Messages response -> chat response -------------------------------------------------------


def _chat_id(message_id: Any) -> str:
    return f"chatcmpl-{message_id}" if isinstance(message_id, str) and message_id else _new_id("chatcmpl-")


def messages_response_to_chat(body: JSON, model: str) -> JSON:
    """An Anthropic Messages response as a chat completion."""
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[JSON] = []
    for block in body.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            function = {"name": block.get("name") or "", "arguments": _dumps(block.get("input") or {})}
            calls.append({"id": block.get("id") or _new_id("call_"), "type": "function", "function": function})
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": stop_reason_to_finish(body.get("stop_reason")),
        "logprobs": None,
    }
    return {
        "id": _chat_id(body.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or model,
        "choices": [choice],
        "usage": messages_usage_to_chat(body.get("usage")),
    }


# --- Messages stream -> chat stream -----------------------------------------------------------


class MessagesToChatStream:
    """Anthropic stream events in, chat completion chunks out, one event at a time.

    The usage chunk (empty `choices`) is sent at `message_stop` only when the client asked for it.
    A stream that ends before `message_stop` ends with an error chunk (the openai SDK raises it).
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage
        self._id = _new_id("chatcmpl-")
        self._created = int(time.time())
        self._done = False
        self._usage: JSON = {}
        self._tools: dict[int, int] = {}  # content block index -> tool_calls index
        self._complete = False

    @property
    def complete(self) -> bool:
        """True once the answer ended as the protocol says (not cut off, no error)."""
        return self._complete

    def feed(self, event: str | None, data: Any) -> list[Event]:
        if self._done or not isinstance(data, dict):
            return []
        kind = data.get("type") or event
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        return handler(self, data) if handler is not None else []  # ping and unknown events: nothing

    def end(self) -> list[Event]:
        if self._done:
            return []
        self._done = True
        return [(None, {"error": {"message": STREAM_CUT_OFF, "type": "server_error", "param": None, "code": None}})]

    def _chunk(self, delta: JSON, finish: str | None = None) -> Event:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}
        return None, {**chunk, "choices": [choice]}

    def _on_message_start(self, data: JSON) -> list[Event]:
        message = _obj(data.get("message"))
        self._id = _chat_id(message.get("id"))
        self._model = message.get("model") or self._model
        if isinstance(message.get("usage"), dict):
            self._usage.update(message["usage"])
        return [self._chunk({"role": "assistant", "content": ""})]

    def _on_block_start(self, data: JSON) -> list[Event]:
        block = _obj(data.get("content_block"))
        if block.get("type") == "tool_use":
            position = len(self._tools)
            self._tools[data.get("index", 0)] = position
            function = {"name": block.get("name") or "", "arguments": ""}
            call = {
                "index": position,
                "id": block.get("id") or _new_id("call_"),
                "type": "function",
                "function": function,
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _on_block_delta(self, data: JSON) -> list[Event]:
        delta = _obj(data.get("delta"))
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and data.get("index", 0) in self._tools:
            call = {"index": self._tools[data.get("index", 0)], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # signatures, citations

    def _on_message_delta(self, data: JSON) -> list[Event]:
        if isinstance(data.get("usage"), dict):
            self._usage.update({k: v for k, v in data["usage"].items() if v is not None})
        delta = _obj(data.get("delta"))
        return [self._chunk({}, stop_reason_to_finish(delta.get("stop_reason")))]

    def _on_message_stop(self, data: JSON) -> list[Event]:
        self._done = self._complete = True
        out: list[Event] = []
        if self._include_usage:
            chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}
            out.append((None, {**chunk, "choices": [], "usage": messages_usage_to_chat(self._usage)}))
        return [*out, (None, DONE)]

    def _on_error(self, data: JSON) -> list[Event]:
        self._done = True
        error = _obj(data.get("error"))
        kind = str(error.get("type") or "api_error")
        message = str(error.get("message") or "The upstream stream failed.")
        return [
            (
                None,
                {
                    "error": {
                        "message": message,
                        "type": _OPENAI_ERROR_TYPES.get(kind, "server_error"),
                        "param": None,
                        "code": kind,
                    }
                },
            )
        ]

    _HANDLERS: ClassVar[dict[str, Callable[[MessagesToChatStream, JSON], list[Event]]]] = {
        "message_start": _on_message_start,
        "content_block_start": _on_block_start,
        "content_block_delta": _on_block_delta,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
        "error": _on_error,
    }


# --- Responses request -> chat request --------------------------------------------------------


def _responses_part_to_chat(part: JSON) -> JSON:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _str(part.get("text"), "input[].content[].text")}
    if kind == "refusal":
        return {"type": "text", "text": _str(part.get("refusal"), "input[].content[].refusal")}
    if kind == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise TranslationError(
                "input_image needs an image_url (file_id needs the Files API, which a chat backend lacks)."
            )
        image: JSON = {"url": part["image_url"]}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and isinstance(part.get("file_data"), str):
        return {"type": "file", "file": {"filename": part.get("filename") or "file", "file_data": part["file_data"]}}
    raise TranslationError(f"Input content type '{kind}' cannot be sent to a chat completions backend.")


def _responses_content_to_chat(content: Any) -> str | list[JSON]:
    if isinstance(content, str):
        return content
    parts = [_responses_part_to_chat(_dict(p, "input[].content[]")) for p in _list(content, "input[].content")]
    return _parts_content(parts)


def _responses_message_to_chat(item: JSON) -> JSON:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise TranslationError(f"Input message role '{role}' is not valid.")
    content = _responses_content_to_chat(item.get("content"))
    if role != "user" and not isinstance(content, str):
        raise TranslationError(f"A {role} message can only hold text.")
    return {"role": "system" if role == "developer" else role, "content": content}


def _function_output_to_chat(item: JSON) -> list[JSON]:
    """A function_call_output item -> a `tool` message (+ a user message for images it returned)."""
    output = item.get("output")
    call_id = _str(item.get("call_id"), "function_call_output.call_id")
    if isinstance(output, str):
        return [{"role": "tool", "tool_call_id": call_id, "content": output}]
    parts = [_responses_part_to_chat(_dict(p, "output[]")) for p in _list(output, "function_call_output.output")]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    others = [p for p in parts if p["type"] != "text"]
    messages: list[JSON] = [{"role": "tool", "tool_call_id": call_id, "content": "\n".join(texts)}]
    if others:
        messages.append({"role": "user", "content": others})
    return messages


def _responses_input_to_chat(items: list[Any], messages: list[JSON]) -> None:
    for raw in items:
        item = _dict(raw, "input[]")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            messages.append(_responses_message_to_chat(item))
        elif kind == "function_call":
            function = {
                "name": _str(item.get("name"), "function_call.name"),
                "arguments": item.get("arguments") or "{}",
            }
            call = {"id": _str(item.get("call_id"), "function_call.call_id"), "type": "function", "function": function}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and isinstance(last.get("content"), (str, type(None))):
                last.setdefault("tool_calls", []).append(call)  # calls of one turn: one assistant message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.extend(_function_output_to_chat(item))
        elif kind == "reasoning":
            continue  # earlier turns' reasoning: chat servers take no reasoning as input
        else:
            raise TranslationError(f"Input item type '{kind}' cannot be sent to a chat completions backend.")


def _function_tool_to_chat(tool: JSON) -> JSON:
    function: JSON = {"name": _str(tool.get("name"), "tools[].name")}
    _copy(tool, function, (("description", "description"), ("parameters", "parameters"), ("strict", "strict")))
    return {"type": "function", "function": function}


def _function_tools(tools: Any) -> Iterable[tuple[str | None, JSON]]:
    """(namespace, function tool) for the function tools, also those grouped in `namespace` tools."""
    for raw in _list(tools, "tools") if tools else ():
        tool = _dict(raw, "tools[]")
        if tool.get("type") == "function":
            yield None, tool
        elif tool.get("type") == "namespace":
            namespace = _str(tool.get("name"), "tools[].name")
            for inner in _list(tool.get("tools"), "tools[].tools"):
                if isinstance(inner, dict) and inner.get("type") == "function":
                    yield namespace, inner


def tool_namespaces(request: JSON) -> dict[str, str]:
    """Function name -> its namespace, for the functions a Responses request groups in namespaces."""
    try:
        return {tool["name"]: ns for ns, tool in _function_tools(request.get("tools")) if ns is not None}
    except TranslationError:
        return {}


def _responses_tool_choice_to_chat(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _str(choice.get("name"), "tool_choice.name")}}
    raise TranslationError(
        "tool_choice must be 'auto', 'none', 'required' or a function for a chat completions backend."
    )


def _responses_format_to_chat(text: Any) -> JSON | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema: JSON = {
            "name": _str(fmt.get("name"), "text.format.name"),
            "schema": _dict(fmt.get("schema"), "text.format.schema"),
        }
        _copy(fmt, schema, (("strict", "strict"), ("description", "description")))
        return {"type": "json_schema", "json_schema": schema}
    raise TranslationError(f"text.format type '{fmt['type']}' is not valid.")


def _merge_system(messages: list[JSON]) -> list[JSON]:
    """Consecutive system messages as one (many chat templates allow a single system message)."""
    merged: list[JSON] = []
    for message in messages:
        last = merged[-1] if merged else None
        if last is not None and message["role"] == last["role"] == "system":
            last["content"] = f"{last['content']}\n\n{message['content']}"
        else:
            merged.append(message)
    return merged


def responses_request_to_chat(body: JSON) -> JSON:
    """An OpenAI Responses request as a chat completions request (stateless: the input must be complete)."""
    if body.get("previous_response_id") is not None or body.get("conversation") is not None:
        raise TranslationError(PREVIOUS_RESPONSE_UNSUPPORTED)
    for key in ("prompt", "background"):
        if body.get(key):
            raise TranslationError(f"'{key}' is not supported for this model: its backend speaks chat completions.")
    messages: list[JSON] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": _str(body["instructions"], "instructions")})
    source = body.get("input")
    if isinstance(source, str):
        messages.append({"role": "user", "content": source})
    else:
        _responses_input_to_chat(_list(source, "input"), messages)
    out: JSON = {"model": body.get("model"), "messages": _merge_system(messages)}
    _copy(
        body,
        out,
        (
            ("max_output_tokens", "max_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("parallel_tool_calls", "parallel_tool_calls"),
        ),
    )
    # Hosted tools (web search, file search, code interpreter, ...) need OpenAI's servers: left out.
    tools = [_function_tool_to_chat(tool) for _, tool in _function_tools(body.get("tools"))]
    if tools:
        out["tools"] = tools
        if body.get("tool_choice") is not None:
            out["tool_choice"] = _responses_tool_choice_to_chat(body["tool_choice"])
    else:
        out.pop("parallel_tool_calls", None)  # chat servers refuse it (and tool_choice) without tools
        if body.get("tool_choice") not in (None, "auto", "none"):
            raise TranslationError("tool_choice names a tool that a chat completions backend cannot run.")
    response_format = _responses_format_to_chat(body.get("text"))
    if response_format is not None:
        out["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        out["reasoning_effort"] = reasoning["effort"]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str):
        out["user"] = user
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- chat response -> Responses response ------------------------------------------------------


def _response_object(request: JSON, response_id: str, created_at: int, model: str) -> JSON:
    """The Responses `response` object before output and usage: the request's settings echoed."""
    reasoning = _obj(request.get("reasoning"))
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation", "disabled"),
        "usage": None,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _finish_status(response: JSON, finish: Any) -> None:
    """Set status (and incomplete_details) of a response from the chat finish_reason."""
    reason = _INCOMPLETE.get(finish) if isinstance(finish, str) else None
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None


def _reasoning_item(text: str, item_id: str | None = None) -> JSON:
    content = [{"type": "reasoning_text", "text": text}]
    return {"id": item_id or _new_id("rs_"), "type": "reasoning", "summary": [], "content": content}


def _text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(parts: list[JSON], status: str, item_id: str | None = None) -> JSON:
    item_id = item_id or _new_id("msg_")
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def _call_item(call_id: str, name: str, arguments: str, status: str, namespace: str | None = None) -> JSON:
    item = {"id": _new_id("fc_"), "type": "function_call", "status": status, "call_id": call_id, "name": name}
    if namespace is not None:
        item["namespace"] = namespace
    return {**item, "arguments": arguments}


def chat_response_to_responses(body: JSON, request: JSON) -> JSON:
    """A chat completion as a Responses `response` (`request`: the client's Responses request)."""
    choice = _first_choice(body)
    message = _obj(choice.get("message"))
    finish = choice.get("finish_reason")
    status = "incomplete" if finish in _INCOMPLETE else "completed"
    output: list[JSON] = []
    reasoning = _chat_reasoning(message)
    if reasoning:
        output.append(_reasoning_item(reasoning))
    parts = [_text_part(message["content"])] if isinstance(message.get("content"), str) and message["content"] else []
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        output.append(_message_item(parts, status))
    namespaces = tool_namespaces(request)
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else "{}"
        name = function.get("name") or ""
        call_id = call.get("id") or _new_id("call_")
        output.append(_call_item(call_id, name, arguments, "completed", namespaces.get(name)))
    response = _response_object(
        request,
        _new_id("resp_"),
        int(body.get("created") or time.time()),
        body.get("model") or request.get("model") or "",
    )
    _finish_status(response, finish)
    response["output"] = output
    response["usage"] = chat_usage_to_responses(body.get("usage"))
    return response


# --- chat stream -> Responses stream ----------------------------------------------------------


class ChatToResponsesStream(_FromChatStream):
    """Chat completion chunks in, Responses stream events out (with `sequence_number`), one at a time.

    Each output item (reasoning, message, function call) is opened when its first delta arrives
    and closed when another item starts or the choice finishes; `response.completed` (or
    `response.incomplete` for a length/content-filter finish) comes once the finish reason and the
    usage arrived, or at `end()`. A stream that ends without a finish reason ends with
    `response.failed`. The items' text is kept for the `*.done` events and the final response,
    which the protocol requires to carry the whole output.
    """

    def __init__(self, request: JSON) -> None:
        self._request = request
        self._namespaces = tool_namespaces(request)
        self._response = _response_object(request, _new_id("resp_"), int(time.time()), str(request.get("model") or ""))
        self._sequence = 0
        self._started = False
        self._done = False
        self._open: JSON | None = None  # the output item receiving deltas
        self._calls: dict[int, JSON] = {}  # chat tool_calls index -> its function_call item
        self._positions: dict[str, int] = {}  # item id -> output_index
        self._finish: str | None = None
        self._usage: JSON | None = None

    @property
    def complete(self) -> bool:
        """True once the answer ended as the protocol says (not cut off, no error)."""
        return self._done and self._response["status"] != "failed"

    def _begin(self, chunk: JSON) -> list[Event]:
        return self._start(chunk)

    def _finished(self) -> list[Event]:
        return self._complete()

    def _upstream_error(self, message: str) -> list[Event]:
        return self._fail(message)

    def end(self) -> list[Event]:
        if self._done:
            return []
        return self._complete() if self._finish is not None else self._fail(STREAM_CUT_OFF)

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return kind, data

    def _snapshot(self) -> JSON:
        return _clone(self._response)

    def _start(self, chunk: JSON) -> list[Event]:
        self._started = True
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self._response["model"] = chunk["model"]
        return [
            self._event("response.created", response=self._snapshot()),
            self._event("response.in_progress", response=self._snapshot()),
        ]

    def _choice(self, choice: JSON) -> list[Event]:
        out: list[Event] = []
        delta = _obj(choice.get("delta"))
        reasoning = _chat_reasoning(delta)
        if reasoning:
            out += self._text_delta("reasoning", reasoning)
        if isinstance(delta.get("content"), str) and delta["content"]:
            out += self._text_delta("message", delta["content"])
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._call_delta(call)
        if choice.get("finish_reason"):
            self._finish = str(choice["finish_reason"])
            out += self._close("incomplete" if self._finish in _INCOMPLETE else "completed")
        return out

    def _add(self, item: JSON) -> list[Event]:
        out = self._close("completed")
        self._open = item
        self._positions[item["id"]] = len(self._response["output"])
        self._response["output"].append(item)
        return [*out, self._event("response.output_item.added", output_index=self._index(item), item=_clone(item))]

    def _index(self, item: JSON) -> int:
        return self._positions[item["id"]]

    def _text_delta(self, kind: str, text: str) -> list[Event]:
        out: list[Event] = []
        item = self._open
        if item is None or item["type"] != kind:
            if kind == "reasoning":
                item, part = {**_reasoning_item(""), "content": []}, {"type": "reasoning_text", "text": ""}
            else:
                item, part = _message_item([], "in_progress"), _text_part("")
            out += self._add(item)
            out.append(self._part_event("response.content_part.added", item, part))
            item["content"].append(part)
        item["content"][0]["text"] += text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra: JSON = {} if kind == "reasoning" else {"logprobs": []}
        fields = {"item_id": item["id"], "output_index": self._index(item), "content_index": 0, "delta": text}
        return [*out, self._event(name, **fields, **extra)]

    def _part_event(self, name: str, item: JSON, part: JSON) -> Event:
        return self._event(name, item_id=item["id"], output_index=self._index(item), content_index=0, part=_clone(part))

    def _call_delta(self, call: JSON) -> list[Event]:
        out: list[Event] = []
        position = _call_position(call, {i: item["call_id"] for i, item in self._calls.items()})
        function = _obj(call.get("function"))
        if position not in self._calls:
            call_id, name = call.get("id") or _new_id("call_"), function.get("name") or ""
            item = _call_item(call_id, name, "", "in_progress", self._namespaces.get(name))
            self._calls[position] = item
            out += self._add(item)
        item = self._calls[position]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            fields = {"item_id": item["id"], "output_index": self._index(item), "delta": arguments}
            out.append(self._event("response.function_call_arguments.delta", **fields))
        return out

    def _close(self, status: str) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        out: list[Event] = []
        index = self._index(item)
        if item["type"] == "function_call":
            fields = {"item_id": item["id"], "output_index": index, "name": item["name"]}
            out.append(self._event("response.function_call_arguments.done", arguments=item["arguments"], **fields))
        else:
            part = item["content"][0]
            fields = {"item_id": item["id"], "output_index": index, "content_index": 0, "text": part["text"]}
            if item["type"] == "reasoning":
                out.append(self._event("response.reasoning_text.done", **fields))
            else:
                out.append(self._event("response.output_text.done", **fields, logprobs=[]))
            out.append(self._part_event("response.content_part.done", item, part))
        if item["type"] != "reasoning":
            item["status"] = status
        return [*out, self._event("response.output_item.done", output_index=index, item=_clone(item))]

    def _complete(self) -> list[Event]:
        self._done = True
        out = self._close("completed")
        _finish_status(self._response, self._finish)
        self._response["usage"] = chat_usage_to_responses(self._usage)
        name = "response.completed" if self._response["status"] == "completed" else "response.incomplete"
        return [*out, self._event(name, response=self._snapshot())]

    def _fail(self, message: str) -> list[Event]:
        self._done = True
        out = [] if self._started else self._start({})
        self._response["status"] = "failed"
        self._response["error"] = {"code": "server_error", "message": message}
        return [*out, self._event("response.failed", response=self._snapshot())]


# --- translators: one exchange each -----------------------------------------------------------


class MessagesViaChat:
    """A Messages client on a chat completions backend."""

    headers: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._model = ""

    def request(self, payload: JSON) -> JSON:
        self._model = str(payload.get("model") or "")
        return messages_request_to_chat(payload)

    def response(self, body: Any) -> Any:
        return chat_response_to_messages(body, self._model) if isinstance(body, dict) else body

    def stream(self) -> ChatToMessagesStream:
        return ChatToMessagesStream(self._model)

    def error(self, status: int, body: bytes) -> JSON:
        return chat_error_to_messages(status, body)


class ResponsesViaChat:
    """A Responses client on a chat completions backend (stateless: no previous_response_id)."""

    headers: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._request: JSON = {}

    def request(self, payload: JSON) -> JSON:
        chat = responses_request_to_chat(payload)
        self._request = payload
        return chat

    def response(self, body: Any) -> Any:
        return chat_response_to_responses(body, self._request) if isinstance(body, dict) else body

    def stream(self) -> ChatToResponsesStream:
        return ChatToResponsesStream(self._request)

    def error(self, status: int, body: bytes) -> JSON:
        """Responses errors have chat's shape: an OpenAI-shaped body passes, anything else is wrapped."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return data
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": error_message(body), "type": kind, "param": None, "code": None}}


class ChatViaMessages:
    """A chat completions client on a Messages backend."""

    # Anthropic's API refuses a request without a version; an OpenAI client sends none.
    headers: ClassVar[dict[str, str]] = {"anthropic-version": "2023-06-01"}

    def __init__(self) -> None:
        self._model = ""
        self._include_usage = False

    def request(self, payload: JSON) -> JSON:
        self._model = str(payload.get("model") or "")
        options = payload.get("stream_options")
        self._include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return chat_request_to_messages(payload)

    def response(self, body: Any) -> Any:
        return messages_response_to_chat(body, self._model) if isinstance(body, dict) else body

    def stream(self) -> MessagesToChatStream:
        return MessagesToChatStream(self._model, self._include_usage)

    def error(self, status: int, body: bytes) -> JSON:
        return messages_error_to_chat(status, body)


# (client adapter name, upstream adapter name) -> translator class.
TRANSLATIONS: dict[tuple[str, str], type[MessagesViaChat | ResponsesViaChat | ChatViaMessages]] = {
    ("messages", "chat"): MessagesViaChat,
    ("responses", "chat"): ResponsesViaChat,
    ("chat", "messages"): ChatViaMessages,
}
