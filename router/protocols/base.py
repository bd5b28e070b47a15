"""The adapter interface every API format implements, and token usage as the router counts it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from starlette.responses import Response

from router import errors
from router.errors import ApiError


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer. 0 means "not reported"; `total` 0 means prompt + completion."""

    prompt: int = 0
    completion: int = 0
    total: int = 0
    cached: int = 0  # prompt tokens read from a cache
    cache_write: int = 0  # prompt tokens written to a cache (Anthropic's cache_creation_input_tokens)
    reasoning: int = 0  # completion tokens spent on reasoning

    def merged(self, newer: Usage) -> Usage:
        """This usage updated by a later report: every field the later one reports wins."""
        return Usage(
            newer.prompt or self.prompt,
            newer.completion or self.completion,
            newer.total or self.total,
            newer.cached or self.cached,
            newer.cache_write or self.cache_write,
            newer.reasoning or self.reasoning,
        )

    @property
    def total_tokens(self) -> int:
        return self.total or self.prompt + self.completion


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_usage(usage: Any) -> Usage | None:
    """A `usage` object in any of the shapes upstreams send (chat, Responses, Anthropic), or None.

    Chat: prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details.cached_tokens,
    completion_tokens_details.reasoning_tokens. Responses: input_tokens, output_tokens,
    input_tokens_details.cached_tokens, output_tokens_details.reasoning_tokens. Anthropic:
    input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens (the prompt
    then counts all three, as OpenAI's prompt_tokens includes its cached tokens).

    Runs for every answer: fields that are absent cost a dict look-up, no call.
    """
    if not isinstance(usage, dict):
        return None
    get = usage.get
    cache_read = _int(value) if (value := get("cache_read_input_tokens")) is not None else 0
    cache_write = _int(value) if (value := get("cache_creation_input_tokens")) is not None else 0
    if "prompt_tokens" in usage:
        prompt = _int(usage["prompt_tokens"])
    else:
        # Anthropic's input_tokens leaves out the cached part; the router counts prompts as OpenAI does
        # (cached tokens included), so prices and limits treat both APIs alike.
        prompt = _int(get("input_tokens"))
        if "input_tokens" in usage:
            prompt += cache_read + cache_write
    completion = _int(usage["completion_tokens"]) if "completion_tokens" in usage else _int(get("output_tokens"))
    total = _int(value) if (value := get("total_tokens")) is not None else 0
    cached = reasoning = 0
    if isinstance(details := get("prompt_tokens_details"), dict):
        cached = _int(details.get("cached_tokens"))
    if not cached and isinstance(details := get("input_tokens_details"), dict):
        cached = _int(details.get("cached_tokens"))
    if isinstance(details := get("completion_tokens_details"), dict):
        reasoning = _int(details.get("reasoning_tokens"))
    if not reasoning and isinstance(details := get("output_tokens_details"), dict):
        reasoning = _int(details.get("reasoning_tokens"))
    return Usage(prompt, completion, total, cached or cache_read, cache_write, reasoning)


class Drop:
    """Returned by `Adapter.without_usage` for an event the client must not receive at all."""


DROP = Drop()


class Adapter:
    """One API format, as the pipeline in `router.proxy` needs to know it.

    Every method is a pure function of its arguments (no I/O, no state): the pipeline asks, the
    adapter answers. Subclass and override what differs; the defaults are OpenAI's conventions.
    `name` identifies the format (also for translation: `router.protocols.translate` maps a
    client-side adapter's request to an upstream-side adapter's and the answers back).
    """

    name: ClassVar[str] = ""
    path: ClassVar[str] = ""  # the upstream path under a backend's base URL, e.g. "/chat/completions"
    required: ClassVar[tuple[str, ...]] = ()  # body fields that must be present (besides `model`)
    streamable: ClassVar[bool] = False
    # Successful answers are JSON (a body that is not is a broken upstream: 502). False for binary APIs.
    json_answers: ClassVar[bool] = True
    # Answers are stored upstream under an id (Responses): requests naming one go to its backend.
    stateful: ClassVar[bool] = False
    # Bytes every stream event that carries usage contains: events without them are relayed unparsed.
    usage_marker: ClassVar[bytes] = b'"usage"'
    # The kinds of stream event that end a stream (besides `is_stream_end`'s terminator line).
    final_events: ClassVar[frozenset[str]] = frozenset()
    # Asked at the backend's root (its base URL without `/v1`), as vLLM serves /tokenize and /rerank.
    at_root: ClassVar[bool] = False
    # The body is a multipart form (uploads), not JSON: see `form_payload` and `encode_form`.
    form_body: ClassVar[bool] = False

    # --- the request ---

    def validate(self, payload: dict[str, Any]) -> None:
        """Raise a 400 for a body this API would refuse before any upstream sees it."""
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise errors.bad_request("Missing required parameter: 'model'.", "missing_required_parameter")
        for name in self.required:
            if payload.get(name) is None:
                raise errors.bad_request(f"Missing required parameter: '{name}'.", "missing_required_parameter")

    def form_payload(self, body: bytes, content_type: str) -> dict[str, Any]:
        """The fields of a form body (form APIs only)."""
        raise NotImplementedError

    def encode_form(self, body: bytes, content_type: str, payload: dict[str, Any]) -> bytes:
        """The form body with `payload`'s fields written back (form APIs only)."""
        raise NotImplementedError

    def model_of(self, payload: dict[str, Any]) -> str:
        return str(payload["model"])

    def with_model(self, payload: dict[str, Any], model: str) -> dict[str, Any]:
        """The payload naming the upstream's model (the routed name without `[alias]`)."""
        payload["model"] = model
        return payload

    def is_stream(self, payload: dict[str, Any]) -> bool:
        return self.streamable and payload.get("stream") is True

    def traced_input(self, payload: dict[str, Any]) -> Any:
        """What a trace shows as the request's input."""
        return payload.get(self.required[0]) if self.required else None

    def previous_response_id(self, payload: dict[str, Any]) -> str | None:
        """The stored response this request continues (it must go to that response's backend)."""
        return None

    def with_stream_usage(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload asking the upstream to report usage in its stream (unchanged if it always does)."""
        return payload

    def stream_wire(self, raw: bytes, payload: dict[str, Any]) -> bytes | None:
        """`with_stream_usage(payload)` as bytes made from the client's own (`raw`, which `payload` was parsed
        from and still is): no encoding of a body that may be large. None when they cannot be used."""
        return raw if self.with_stream_usage(payload) is payload else None

    def passed_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Client request headers that reach an upstream of this API unchanged (e.g. anthropic-version)."""
        return {}

    def client_wants_usage(self, payload: dict[str, Any]) -> bool:
        """Whether the client asked for the stream usage itself (else the router removes it)."""
        return True

    # --- the answer ---

    def usage_of_body(self, body: Any) -> Usage | None:
        return parse_usage(body.get("usage")) if isinstance(body, dict) else None

    def wants_event(self, raw: bytes) -> bool:
        """Whether a raw stream event must be parsed (usage, a response id); others pass unparsed."""
        return self.wanted_at(raw) >= 0

    def wanted_at(self, raw: bytes, start: int = 0) -> int:
        """Where the first of the bytes that make an event wanted is in `raw` from `start` (-1: nowhere),
        so a chunk of many events is searched once; `wants_event` follows from it. An adapter that must
        read other events overrides this (the bytes it looks for hold no line break, so no blank line)."""
        return raw.find(self.usage_marker, start)

    def response_id_of_body(self, body: Any) -> str | None:
        """The id under which the upstream stored this answer (stateful APIs)."""
        return None

    def response_id_of_event(self, event: str | None, data: Any) -> str | None:
        return None

    def usage_of_event(self, event: str | None, data: Any) -> Usage | None:
        """Usage reported by one stream event (`event` is its SSE `event:` name, if any)."""
        return parse_usage(data.get("usage")) if isinstance(data, dict) else None

    def without_usage(self, event: str | None, data: Any) -> Any:
        """The event as a client that did not ask for stream usage gets it: the data, changed data, or DROP."""
        return data

    def text_of_event(self, event: str | None, data: Any) -> str:
        """The text one stream event adds to the answer (for traces)."""
        return ""

    def frame_event(self, event: str | None, data: Any) -> bytes:
        """One SSE event carrying `data` (used when a script changed an event)."""
        head = b"event: " + event.encode() + b"\n" if event else b""
        return head + b"data: " + orjson.dumps(data) + b"\n\n"

    def is_stream_end(self, data: bytes) -> bool:
        """A data line that is a terminator, not an event (OpenAI's `[DONE]`)."""
        return False

    def is_final_event(self, event: str | None, data: bytes) -> bool:
        """Whether a stream event is the stream's last one (`[DONE]`, `message_stop`, `response.completed`):
        a client that leaves after it has its whole answer (the OpenAI SDK closes at `[DONE]`)."""
        if self.is_stream_end(data):
            return True
        if not self.final_events:
            return False
        if event is None:  # the kind in the data's "type" (only read when a client left: no hot path)
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                return False
            event = parsed.get("type") if isinstance(parsed, dict) else None
        return event in self.final_events

    # --- errors ---

    def error_body(self, err: ApiError) -> bytes:
        return err.body()

    def error_response(self, err: ApiError, headers: dict[str, str] | None = None) -> Response:
        return Response(self.error_body(err), status_code=err.status, media_type="application/json", headers=headers)

    def stream_error(self, err: ApiError) -> bytes:
        """The event that ends a stream the router has to break off."""
        return b"data: " + self.error_body(err) + b"\n\n"
