"""OpenAI's Responses API: `POST /v1/responses` and its model-routed `input_tokens` count.

Streams are typed SSE events (`event: response.created`, `response.output_text.delta`, ...,
`response.completed`), relayed byte for byte; usage arrives in `response.completed` (or
`response.incomplete` / `response.failed`) as `response.usage`. A response the upstream stores
belongs to the backend that made it: its id is read from the body or `response.created`
(router/affinity.py keeps the binding).
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from router.errors import ApiError
from router.protocols.base import Adapter, Usage, parse_usage

# Events that carry the whole response object: the first gives its id, the final ones its usage.
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# What makes a raw event one `Responses` must read (its id, its usage).
_MARKERS = (b"response.created", b"response.completed", Adapter.usage_marker)


def _response_of(data: Any) -> dict[str, Any] | None:
    response = data.get("response") if isinstance(data, dict) else None
    return response if isinstance(response, dict) else None


class Responses(Adapter):
    name: ClassVar[str] = "responses"
    path: ClassVar[str] = "/responses"
    streamable: ClassVar[bool] = True
    stateful: ClassVar[bool] = True
    final_events: ClassVar[frozenset[str]] = _FINAL_EVENTS

    def wanted_at(self, raw: bytes, start: int = 0) -> int:
        hits = [at for marker in _MARKERS if (at := raw.find(marker, start)) >= 0]
        return min(hits) if hits else -1

    def traced_input(self, payload: dict[str, Any]) -> Any:
        return payload.get("input")

    def previous_response_id(self, payload: dict[str, Any]) -> str | None:
        value = payload.get("previous_response_id")
        return value if isinstance(value, str) and value else None

    def usage_of_event(self, event: str | None, data: Any) -> Usage | None:
        kind = event or (data.get("type") if isinstance(data, dict) else None)
        response = _response_of(data)
        if kind not in _FINAL_EVENTS or response is None:
            return None
        return parse_usage(response.get("usage"))

    def response_id_of_body(self, body: Any) -> str | None:
        if isinstance(body, dict) and body.get("object") == "response" and isinstance(body.get("id"), str):
            return str(body["id"])
        return None

    def response_id_of_event(self, event: str | None, data: Any) -> str | None:
        kind = event or (data.get("type") if isinstance(data, dict) else None)
        if kind != "response.created":
            return None
        return self.response_id_of_body(_response_of(data))

    def text_of_event(self, event: str | None, data: Any) -> str:
        kind = event or (data.get("type") if isinstance(data, dict) else None)
        if kind == "response.output_text.delta" and isinstance(data, dict) and isinstance(data.get("delta"), str):
            return str(data["delta"])
        return ""

    def frame_event(self, event: str | None, data: Any) -> bytes:
        if event is None and isinstance(data, dict) and isinstance(data.get("type"), str):
            event = data["type"]
        return super().frame_event(event, data)

    def stream_error(self, err: ApiError) -> bytes:
        """Responses streams end in an `error` event: {"type": "error", "code", "message", "param"}."""
        data = {"type": "error", "code": err.code, "message": err.message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


class ResponsesInputTokens(Adapter):
    """`POST /v1/responses/input_tokens`: counts a Responses request's input, routed by model."""

    name: ClassVar[str] = "responses_input_tokens"
    path: ClassVar[str] = "/responses/input_tokens"

    def traced_input(self, payload: dict[str, Any]) -> Any:
        return payload.get("input")

    def usage_of_body(self, body: Any) -> Usage | None:
        return None  # a count, not tokens spent
