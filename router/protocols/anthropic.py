"""Anthropic's Messages API: `POST /v1/messages` and its model-routed `count_tokens`.

Streams are typed SSE events (`message_start`, `content_block_start/delta/stop`, `message_delta`,
`message_stop`, `ping`), relayed byte for byte so thinking-block signatures survive. Usage comes in
two parts: `message_start.message.usage` (input, cache read, cache creation) and
`message_delta.usage` (output; some servers repeat the input counts there). Errors have Anthropic's
shape, `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from router.errors import ApiError
from router.protocols.base import Adapter, Usage, parse_usage
from router.protocols.translate import anthropic_error_type

# Client headers that reach a Messages upstream unchanged (the API's version and opted-in betas).
PASSED_HEADERS = ("anthropic-version", "anthropic-beta")


def _kind(event: str | None, data: Any) -> str | None:
    return event or (data.get("type") if isinstance(data, dict) else None)


def anthropic_error_body(err: ApiError) -> bytes:
    """`err` in Anthropic's shape; the type follows the status as Anthropic's API uses it."""
    return orjson.dumps({"type": "error", "error": {"type": anthropic_error_type(err.status), "message": err.message}})


class AnthropicErrors(Adapter):
    """Anthropic's error shape and request headers, shared by every /v1/messages* endpoint."""

    def error_body(self, err: ApiError) -> bytes:
        return anthropic_error_body(err)

    def stream_error(self, err: ApiError) -> bytes:
        return b"event: error\ndata: " + anthropic_error_body(err) + b"\n\n"

    def passed_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {name: headers[name] for name in PASSED_HEADERS if name in headers}


class Messages(AnthropicErrors):
    name: ClassVar[str] = "messages"
    path: ClassVar[str] = "/messages"
    required: ClassVar[tuple[str, ...]] = ("messages",)
    streamable: ClassVar[bool] = True
    final_events: ClassVar[frozenset[str]] = frozenset({"message_stop"})

    def usage_of_event(self, event: str | None, data: Any) -> Usage | None:
        kind = _kind(event, data)
        if kind == "message_start":
            message = data.get("message")
            return parse_usage(message.get("usage")) if isinstance(message, dict) else None
        if kind == "message_delta":
            return parse_usage(data.get("usage"))
        return None

    def text_of_event(self, event: str | None, data: Any) -> str:
        if _kind(event, data) != "content_block_delta":
            return ""
        delta = data.get("delta")
        text = delta.get("text") if isinstance(delta, dict) else None
        return text if isinstance(text, str) else ""

    def frame_event(self, event: str | None, data: Any) -> bytes:
        return super().frame_event(_kind(event, data), data)


class MessagesCountTokens(AnthropicErrors):
    """`POST /v1/messages/count_tokens`: `{"input_tokens": N}`, a count, not tokens spent."""

    name: ClassVar[str] = "messages_count_tokens"
    path: ClassVar[str] = "/messages/count_tokens"
    required: ClassVar[tuple[str, ...]] = ("messages",)

    def usage_of_body(self, body: Any) -> Usage | None:
        return None


def anthropic_model_list(models: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI model objects as Anthropic's list (what Claude Code's model discovery reads)."""
    data = [
        {"type": "model", "id": m["id"], "display_name": m["id"], "created_at": "1970-01-01T00:00:00Z"} for m in models
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
