"""The API formats the router speaks on /v1: one small adapter per protocol.

`router.proxy` is one pipeline for every API (authenticate, parse, plan route, attempts with
failover, relay, account). Everything that differs between APIs is asked of an `Adapter`
(see `base.py`): required fields, where the model and the stream flag are, how to ask an
upstream for stream usage, how to read usage from a body and from stream events, which stream
events a client that did not ask for usage must not see, how errors look to its clients and how
stream events are framed. Adapters are pure: no I/O, no state. Class attributes: `name`, `path`
(under a backend's base URL), `required`, `streamable`, `json_answers` (False for binary answers:
no JSON check, no usage), `stateful` (answers stored upstream under an id, see router/affinity.py),
`usage_marker`. Methods, all overridable: validate, model_of, with_model, is_stream,
traced_input, previous_response_id, with_stream_usage, client_wants_usage, usage_of_body,
wants_event, response_id_of_body, response_id_of_event, usage_of_event, without_usage,
text_of_event, frame_event, is_stream_end, error_body, error_response, stream_error.

How to add a protocol:
1. Write a subclass of `Adapter` in a module of this package (override only what differs from
   OpenAI's conventions; `openai.py` is the model to follow). Usage parsing: `parse_usage`
   already reads chat, Responses and Anthropic usage objects.
2. Register it in `ADAPTERS` below under the /v1 path it serves; `router.app` mounts every
   path in `ADAPTERS` (and the fast path in `router.app.V1FastPath` picks them up too).
3. Unit-test the adapter's functions without servers, and the endpoint end to end in
   tests/ with the official SDK against tests/upstream.py (teach the upstream the API).
No change to `router.proxy` should be needed; if one is, the interface is missing something:
add it to `Adapter` with a default that keeps the other protocols unchanged.

Client side vs upstream side: the pipeline holds the adapter of the API the client called
(`client`: errors, framing and usage stripping toward the client) and the adapter of the API the
upstream is asked in (`upstream`: its path, asking for and reading its usage). They are the
same object unless the backend declares `apis` without the client's one. A `Translator`
(router/protocols/translate.py) turns a request of the client's API into one of the upstream's,
and the upstream's answers (a body, or stream events one by one) back;
`translator_for(client, upstream)` is where the pipeline finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from router.protocols.anthropic import Messages, MessagesCountTokens
from router.protocols.base import DROP, Adapter, Drop, Usage, parse_usage
from router.protocols.forms import FORM_ADAPTERS
from router.protocols.generic import GENERIC_ADAPTERS, upstream_url
from router.protocols.openai import ChatCompletions, Completions, Embeddings
from router.protocols.responses import Responses, ResponsesInputTokens
from router.protocols.translate import TRANSLATIONS

__all__ = [
    "ADAPTERS",
    "DROP",
    "TRANSLATORS",
    "Adapter",
    "Drop",
    "StreamTranslator",
    "Translator",
    "Usage",
    "adapter_for",
    "adapter_named",
    "parse_usage",
    "translator_for",
    "upstream_url",
]

# The request path (scope["path"]) -> the adapter of the API served there.
ADAPTERS: dict[str, Adapter] = {
    "/v1/chat/completions": ChatCompletions(),
    "/v1/completions": Completions(),
    "/v1/embeddings": Embeddings(),
    "/v1/responses": Responses(),
    "/v1/responses/input_tokens": ResponsesInputTokens(),
    "/v1/messages": Messages(),
    "/v1/messages/count_tokens": MessagesCountTokens(),
    **GENERIC_ADAPTERS,
    **FORM_ADAPTERS,
}


def adapter_for(path: str) -> Adapter | None:
    return ADAPTERS.get(path)


def adapter_named(name: str) -> Adapter | None:
    """The adapter of the API called `name` (e.g. "chat"), or None."""
    return next((adapter for adapter in ADAPTERS.values() if adapter.name == name), None)


class StreamTranslator(Protocol):
    """Turns an upstream stream's events, one at a time, into the client API's events."""

    def feed(self, event: str | None, data: Any) -> list[tuple[str | None, Any]]: ...

    def end(self) -> list[tuple[str | None, Any]]: ...


class Translator(Protocol):
    """A request of the client's API as the upstream's API, and the answers back."""

    def request(self, payload: dict[str, Any]) -> dict[str, Any]: ...

    def response(self, body: Any) -> Any: ...

    def stream(self) -> StreamTranslator: ...

    def error(self, status: int, body: bytes) -> Any:
        """An upstream error body as the client's API shapes errors."""
        ...


# (client adapter name, upstream adapter name) -> a factory of a Translator.
TRANSLATORS: dict[tuple[str, str], Callable[[], Translator]] = dict(TRANSLATIONS)


def translator_for(client: Adapter, upstream: Adapter) -> Translator | None:
    if client.name == upstream.name:
        return None
    factory = TRANSLATORS.get((client.name, upstream.name))
    return factory() if factory is not None else None
