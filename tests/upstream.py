"""A real OpenAI-compatible upstream for tests: an aiohttp server on loopback, in its own thread.

It answers /v1/models, /v1/chat/completions (plain and streamed), /v1/completions and
/v1/embeddings, and echoes what it received (headers and body) so tests can see what the router
forwarded. Behaviour is set per server (`fail_status`, `stream_delay_s`, ...).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Scripted:
    """A canned answer: a JSON body, or SSE events (data as JSON, or bytes as they are).

    `abort` drops the connection after the events, as a crashing server would.
    """

    status: int = 200
    body: Any = None
    events: Sequence[tuple[str | None, Any]] | None = None
    abort: bool = False
    raw: bytes | None = None  # a body sent as it is (with `headers`' content type), instead of `body`
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers


@dataclass
class UpstreamServer:
    name: str = "upstream"
    models: list[str] = field(default_factory=lambda: ["test-model"])
    fail_status: int | None = None
    stream_chunks: int = 3
    stream_delay_s: float = 0.0
    # After a stream's final event ([DONE], message_stop) the connection stays open this long before it
    # ends, as a server slow to close does (the client has its whole answer by then).
    linger_after_end_s: float = 0.0
    # Chat/completions streams (of 2 chunks or more) hold after their first chunk until `release_streams()`:
    # the test lets them go on once it has seen what it needs (requests queued, tokens reserved), not after
    # a delay that a busy machine may outlast.
    hold_streams: bool = False
    required_key: str | None = None
    # Usage details as vLLM reports them (prompt_tokens_details / completion_tokens_details) when non-zero.
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # Messages: cache_creation_input_tokens
    reasoning_tokens: int = 0
    stream_usage: bool = True  # False: never send usage in streams, even when asked
    received: list[Received] = field(default_factory=list)
    streams_cancelled: int = 0
    port: int = 0
    # Only these POST paths under /v1 are served (e.g. ("/chat/completions",)); the others answer 404.
    apis: tuple[str, ...] | None = None
    # (path under /v1, JSON body) -> a canned answer, or None for the usual one.
    script: Callable[[str, Any], Scripted | None] | None = None

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stream_cancelled = threading.Event()
        self._streams_released = asyncio.Event()
        self.stored: dict[str, dict[str, Any]] = {}  # Responses API: id -> (response, input items)
        self._stored_inputs: dict[str, list[dict[str, Any]]] = {}

    # --- lifecycle ---

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> UpstreamServer:
        ready = threading.Event()
        self.port = self.port or free_port()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_app())
                ready.set()
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("upstream did not start")
        return self

    async def _start_app(self) -> None:
        app = web.Application(middlewares=[self._scripted])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/responses/input_tokens", self._input_tokens)
        app.router.add_get("/v1/responses/{id}", self._get_response)
        app.router.add_delete("/v1/responses/{id}", self._delete_response)
        app.router.add_post("/v1/responses/{id}/cancel", self._cancel_response)
        app.router.add_get("/v1/responses/{id}/input_items", self._input_items)
        app.router.add_post("/v1/messages", self._messages)
        for path in ("/v1/rerank", "/rerank", "/v2/rerank", "/v1/moderations", "/v1/images/generations"):
            app.router.add_post(path, self._generic)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/audio/translations", self._transcribe)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._tokenize)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def release_streams(self) -> None:
        """Let held streams, and every later one, go on (from any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._streams_released.set)

    def hold_new_streams(self) -> None:
        """After a `release_streams()`: streams that start from now on hold again, until the next one."""
        if self._loop is not None:

            async def clear() -> None:
                self._streams_released.clear()

            asyncio.run_coroutine_threadsafe(clear(), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is None:
            return
        self.release_streams()  # a stream still held would keep the cleanup waiting
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    # --- handlers ---

    @web.middleware
    async def _scripted(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        path = request.path.removeprefix("/v1")
        if request.method == "POST" and self.apis is not None and path not in self.apis:
            await self._record(request)
            return web.json_response(
                {"error": {"message": f"{request.path} not found", "type": "not_found"}}, status=404
            )
        if request.method == "POST" and self.script is not None:
            raw = await request.read()
            reply = self.script(path, json.loads(raw) if raw else None)
            if reply is not None:
                await self._record(request)
                return await self._scripted_reply(request, reply)
        return await handler(request)

    async def _scripted_reply(self, request: web.Request, reply: Scripted) -> web.StreamResponse:
        if reply.raw is not None:
            return web.Response(body=reply.raw, status=reply.status, headers=reply.headers)
        if reply.events is None:
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        headers = {"Content-Type": "text/event-stream", **reply.headers}
        response = web.StreamResponse(status=reply.status, headers=headers)
        await response.prepare(request)
        for name, data in reply.events:
            if self.stream_delay_s:
                await asyncio.sleep(self.stream_delay_s)
            head = f"event: {name}\n".encode() if name else b""
            payload = data if isinstance(data, bytes) else json.dumps(data).encode()
            await response.write(head + b"data: " + payload + b"\n\n")
        if reply.abort:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def _record(self, request: web.Request) -> Received:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        received = Received(request.method, request.path, dict(request.headers), body)
        with self._lock:
            self.received.append(received)
        return received

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self.required_key and request.headers.get("Authorization") != f"Bearer {self.required_key}":
            return web.json_response({"error": {"message": "bad upstream key", "type": "auth"}}, status=401)
        if self.fail_status:
            return web.json_response(
                {"error": {"message": f"{self.name} failing", "type": "server_error"}}, status=self.fail_status
            )
        return None

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]}
        )

    def _usage(self, body: dict) -> dict[str, Any]:
        prompt = len(json.dumps(body.get("messages") or body.get("prompt") or body.get("input")).split())
        completion = self.stream_chunks
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = received.body
        last = body["messages"][-1].get("content") if body.get("messages") else ""
        if body.get("stream"):
            return await self._stream(request, body, chat=True)
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"{self.name} says: {last}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": self._usage(body),
                "echo": {"headers": received.headers, "body": body, "server": self.name},
            }
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = received.body
        if body.get("stream"):
            return await self._stream(request, body, chat=False)
        return web.json_response(
            {
                "id": "cmpl-test",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "text": f"{self.name} completes", "finish_reason": "stop"}],
                "usage": self._usage(body),
                "echo": {"headers": received.headers, "body": body, "server": self.name},
            }
        )

    async def _embeddings(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = received.body
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        usage = self._usage(body)
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))],
                "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["prompt_tokens"]},
            }
        )

    async def _linger(self, request: web.Request) -> None:
        """Keep a finished stream open for `linger_after_end_s`; ConnectionResetError when the peer closes
        it meanwhile (aiohttp does not cancel a handler whose client left, so its transport is watched)."""
        deadline = time.monotonic() + self.linger_after_end_s
        while time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client closed the stream")
            await asyncio.sleep(0.01)

    async def _stream(self, request: web.Request, body: dict, chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Upstream": self.name})
        await response.prepare(request)
        created = int(time.time())
        try:
            for i in range(self.stream_chunks):
                if i == 1 and self.hold_streams:  # the router answers its client once the first chunk is there
                    await self._streams_released.wait()
                if self.stream_delay_s:
                    await asyncio.sleep(self.stream_delay_s)
                if chat:
                    choice = {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
                    obj = "chat.completion.chunk"
                else:
                    choice = {"index": 0, "text": f"tok{i} ", "finish_reason": None}
                    obj = "text_completion"
                chunk = {
                    "id": "chunk",
                    "object": obj,
                    "created": created,
                    "model": body.get("model"),
                    "choices": [choice],
                }
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if self.stream_usage and (body.get("stream_options") or {}).get("include_usage"):
                usage_chunk = {
                    "id": "chunk",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.get("model"),
                    "choices": [],
                    "usage": self._usage(body),
                }
                await response.write(b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await self._linger(request)
        except (asyncio.CancelledError, ConnectionResetError):
            self.streams_cancelled += 1
            self.stream_cancelled.set()
            raise
        return response

    # --- the Responses API, as vLLM serves it (store=True keeps responses in memory) ---

    def _response_usage(self, body: dict) -> dict[str, Any]:
        prompt = len(json.dumps(body.get("input")).split())
        output = self.stream_chunks
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": prompt + output,
        }

    def _response_object(self, body: dict, response_id: str, text: str, status: str, usage: Any) -> dict[str, Any]:
        message = {
            "id": f"msg_{response_id[5:]}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
        return {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "model": body.get("model"),
            "status": status,
            "output": [message] if status == "completed" else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "previous_response_id": body.get("previous_response_id"),
            "usage": usage,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": {"server": self.name},
        }

    def _input_items_of(self, body: dict) -> list[dict[str, Any]]:
        raw = body.get("input")
        if isinstance(raw, str):
            raw = [{"role": "user", "content": raw}]
        items = []
        for i, item in enumerate(raw or []):
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text", "text": content}]
            items.append({"id": f"in_{i}", "type": "message", "role": item.get("role", "user"), "content": content})
        return items

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = received.body
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return web.json_response(
                {
                    "error": {
                        "message": f"Response with id '{previous}' not found.",
                        "type": "invalid_request_error",
                        "param": "previous_response_id",
                        "code": None,
                    }
                },
                status=404,
            )
        response_id = f"resp_{self.name}_{uuid.uuid4().hex[:16]}"
        text = "".join(f"tok{i} " for i in range(self.stream_chunks))
        if previous is not None:
            text = f"(after {previous}) " + text
        final = self._response_object(body, response_id, text, "completed", self._response_usage(body))
        if body.get("store", True):
            self.stored[response_id] = final
            self._stored_inputs[response_id] = self._input_items_of(body)
        if not body.get("stream"):
            return web.json_response(final)
        return await self._stream_response(request, body, final)

    async def _stream_response(self, request: web.Request, body: dict, final: dict) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Upstream": self.name})
        await response.prepare(request)
        started = {**final, "status": "in_progress", "output": [], "usage": None}
        message = final["output"][0]
        item_id = message["id"]
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": started}),
            ("response.in_progress", {"response": started}),
            (
                "response.output_item.added",
                {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}},
            ),
            (
                "response.content_part.added",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            ),
        ]
        text = message["content"][0]["text"]
        for piece in text.split(" ")[:-1]:
            events.append(
                (
                    "response.output_text.delta",
                    {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece + " ", "logprobs": []},
                )
            )
        events += [
            (
                "response.output_text.done",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []},
            ),
            (
                "response.content_part.done",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "part": message["content"][0]},
            ),
            ("response.output_item.done", {"output_index": 0, "item": message}),
            ("response.completed", {"response": final}),
        ]
        try:
            for number, (name, data) in enumerate(events):
                if self.stream_delay_s and name == "response.output_text.delta":
                    await asyncio.sleep(self.stream_delay_s)
                data = {"type": name, "sequence_number": number, **data}
                await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        except (asyncio.CancelledError, ConnectionResetError):
            self.streams_cancelled += 1
            self.stream_cancelled.set()
            raise
        return response

    def _not_found(self, response_id: str) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": f"Response with id '{response_id}' not found.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            status=404,
        )

    async def _get_response(self, request: web.Request) -> web.Response:
        await self._record(request)
        response_id = request.match_info["id"]
        stored = self.stored.get(response_id)
        return web.json_response(stored) if stored is not None else self._not_found(response_id)

    async def _delete_response(self, request: web.Request) -> web.Response:
        await self._record(request)
        response_id = request.match_info["id"]
        if self.stored.pop(response_id, None) is None:
            return self._not_found(response_id)
        return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})

    async def _cancel_response(self, request: web.Request) -> web.Response:
        await self._record(request)
        response_id = request.match_info["id"]
        stored = self.stored.get(response_id)
        if stored is None:
            return self._not_found(response_id)
        return web.json_response({**stored, "status": "cancelled"})

    async def _input_items(self, request: web.Request) -> web.Response:
        await self._record(request)
        response_id = request.match_info["id"]
        if response_id not in self.stored:
            return self._not_found(response_id)
        items = self._stored_inputs.get(response_id, [])
        limit = int(request.query.get("limit", "20"))
        page = items[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    async def _input_tokens(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        return web.json_response(
            {"object": "response.input_tokens", "input_tokens": len(json.dumps(received.body.get("input")).split())}
        )

    # --- Anthropic Messages, as Anthropic's API (and vLLM's /v1/messages) answer it ---

    def _message_usage(self, body: dict) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": len(json.dumps(body.get("messages")).split()),
            "output_tokens": self.stream_chunks,
            "cache_read_input_tokens": self.cached_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
        }
        return usage

    def _anthropic_refusal(self, request: web.Request) -> web.Response | None:
        if self.required_key and request.headers.get("x-api-key") != self.required_key:
            error = {"type": "authentication_error", "message": "invalid x-api-key"}
            return web.json_response({"type": "error", "error": error}, status=401)
        if self.fail_status:
            error = {"type": "api_error", "message": f"{self.name} failing"}
            return web.json_response({"type": "error", "error": error}, status=self.fail_status)
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._anthropic_refusal(request)
        if refusal is not None:
            return refusal
        body = received.body
        last = body["messages"][-1].get("content") if body.get("messages") else ""
        text = f"{self.name} says: {last}"
        usage = self._message_usage(body)
        message = {
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(message)
        words = text.split(" ")
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        events: list[tuple[str, Any]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "Let me think."},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl+/="},
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
            ),
            ("ping", {"type": "ping"}),
        ]
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": piece}},
                )
            )
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": self.stream_chunks},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "request-id": "req_upstream"})
        await response.prepare(request)
        for name, data in events:
            if self.stream_delay_s:
                await asyncio.sleep(self.stream_delay_s)
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        try:
            await self._linger(request)
        except ConnectionResetError:
            self.streams_cancelled += 1
            self.stream_cancelled.set()
            return response
        await response.write_eof()
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        refusal = self._anthropic_refusal(request)
        if refusal is not None:
            return refusal
        return web.json_response({"input_tokens": len(json.dumps(received.body.get("messages")).split())})

    # --- the other model-routed endpoints (vLLM's shapes, trimmed) ---

    async def _generic(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body, path = received.body, request.path
        if path.endswith("/moderations"):
            result = {"flagged": False, "categories": {}, "category_scores": {}}
            return web.json_response({"id": "modr-1", "model": body["model"], "results": [result]})
        if path.endswith("/images/generations"):
            return web.json_response({"created": 1, "data": [{"b64_json": "aW1n", "revised_prompt": body["prompt"]}]})
        documents = body.get("documents") or []
        results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))]
        usage = {"total_tokens": len(documents) * 5, "prompt_tokens": len(documents) * 5}
        return web.json_response({"id": "rerank-1", "model": body["model"], "results": results, "usage": usage})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        for i in range(4):
            await response.write(bytes([i]) * 1000)
        await response.write_eof()
        return response

    async def _tokenize(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        if request.path == "/tokenize":
            tokens = list(range(len(str(received.body.get("prompt", "")).split())))
            return web.json_response({"count": len(tokens), "max_model_len": 4096, "tokens": tokens})
        return web.json_response({"prompt": " ".join("w" for _ in received.body.get("tokens", []))})

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        audio = upload.file.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        with self._lock:
            self.received.append(Received(request.method, request.path, dict(request.headers), fields))
        text = f"{len(audio)} bytes of {upload.filename} for {fields.get('model')}"
        usage = {"type": "tokens", "input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
        return web.json_response({"text": text, "usage": usage})
