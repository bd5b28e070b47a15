"""OpenAI's chat completions, completions and embeddings."""

from __future__ import annotations

from typing import Any, ClassVar

from router.protocols.base import DROP, Adapter


class ChatCompletions(Adapter):
    """`POST /v1/chat/completions`: `data:` events ending with `[DONE]`; usage on request."""

    name: ClassVar[str] = "chat"
    path: ClassVar[str] = "/chat/completions"
    required: ClassVar[tuple[str, ...]] = ("messages",)
    streamable: ClassVar[bool] = True

    def with_stream_usage(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "stream_options": {**(payload.get("stream_options") or {}), "include_usage": True}}

    def stream_wire(self, raw: bytes, payload: dict[str, Any]) -> bytes | None:
        if "stream_options" in payload:  # as the client sent them if they ask for usage already
            return raw if self.client_wants_usage(payload) else None
        end = raw.rstrip()  # an object with a model at least: `{...}`, its last member before the brace
        return end[:-1] + b',"stream_options":{"include_usage":true}}' if end.endswith(b"}") else None

    def client_wants_usage(self, payload: dict[str, Any]) -> bool:
        options = payload.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def without_usage(self, event: str | None, data: Any) -> Any:
        """The usage-only chunk `include_usage` adds is dropped; usage on a chunk with choices is removed."""
        if not isinstance(data, dict) or "usage" not in data:
            return data
        if not data.get("choices"):
            return DROP
        return {k: v for k, v in data.items() if k != "usage"}

    def text_of_event(self, event: str | None, data: Any) -> str:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            return ""
        delta = choice.get("delta") if isinstance(choice, dict) else None
        text = delta.get("content") if isinstance(delta, dict) else None
        return text if isinstance(text, str) else ""

    def is_stream_end(self, data: bytes) -> bool:
        return data == b"[DONE]"


class Completions(ChatCompletions):
    """`POST /v1/completions`: as chat, with `prompt` and `choices[].text`."""

    name: ClassVar[str] = "completions"
    path: ClassVar[str] = "/completions"
    required: ClassVar[tuple[str, ...]] = ("prompt",)

    def text_of_event(self, event: str | None, data: Any) -> str:
        try:
            text = data["choices"][0].get("text")
        except (KeyError, IndexError, TypeError, AttributeError):
            return ""
        return text if isinstance(text, str) else ""


class Embeddings(Adapter):
    """`POST /v1/embeddings`: never streamed."""

    name: ClassVar[str] = "embeddings"
    path: ClassVar[str] = "/embeddings"
    required: ClassVar[tuple[str, ...]] = ("input",)
