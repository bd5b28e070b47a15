"""A minimal-CPU OpenAI-compatible upstream for benchmarks: a raw asyncio protocol on uvloop.

    python benchmarks/mock_upstream.py --port 9000 [--model bench-model] [--chunk-delay-ms 10]

- POST /v1/chat/completions (and /v1/completions): a fixed JSON answer with `usage`, or, when the
  body contains `"stream":true`, 20 SSE chunks + a usage chunk + `[DONE]` (chunked encoding).
  With --chunk-delay-ms the headers go out at once and each chunk follows after the delay.
- POST /v1/responses and /v1/messages with `"stream":true`: the same 20 text events in the Responses
  API's typed events (`response.created`, deltas, `response.completed` with usage) and in Anthropic's
  (`message_start` with usage, `content_block_start`, deltas, `content_block_stop`, `message_delta`
  with usage, `message_stop`).
- GET /v1/models: one model.
- Any other POST (e.g. Langfuse's /api/public/otel/v1/traces): 200 `{}`, counted — a tracing sink.
- GET /__stats: {"sink_posts": n, "sink_bytes": n, "requests": n}.

Responses are pre-built bytes; requests are parsed just enough (request line, Content-Length).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

STREAM_CHUNKS = 20


def http_response(body: bytes, content_type: bytes = b"application/json", status: bytes = b"200 OK") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def completion_body(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! This is a fixed benchmark answer."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
        },
        separators=(",", ":"),
    ).encode()


def stream_events(model: str) -> list[bytes]:
    """The SSE events of one streamed answer, each already framed as an HTTP chunk."""
    events = []
    for i in range(STREAM_CHUNKS):
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
        }
        events.append(chunk)
    events[-1]["choices"][0]["finish_reason"] = "stop"
    events.append(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": STREAM_CHUNKS, "total_tokens": 12 + STREAM_CHUNKS},
        }
    )
    payloads = [b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events]
    payloads.append(b"data: [DONE]\n\n")
    return [http_chunk(p) for p in payloads]


def http_chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}".encode() + b"\r\n" + payload + b"\r\n"


def typed_events(events: list[dict[str, Any]]) -> list[bytes]:
    """`event: <type>` + `data:` SSE events (Responses and Messages framing), each an HTTP chunk."""
    return [
        http_chunk(
            b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n"
        )
        for e in events
    ]


def responses_events(model: str) -> list[bytes]:
    """A streamed Responses API answer with as many text deltas as the chat stream."""
    usage = {"input_tokens": 12, "output_tokens": STREAM_CHUNKS, "total_tokens": 12 + STREAM_CHUNKS}
    response = {"id": "resp_bench", "object": "response", "model": model, "status": "in_progress", "output": []}
    deltas = [
        {
            "type": "response.output_text.delta",
            "item_id": "msg_bench",
            "output_index": 0,
            "content_index": 0,
            "delta": f"tok{i} ",
        }
        for i in range(STREAM_CHUNKS)
    ]
    done = {**response, "status": "completed", "usage": usage}
    return typed_events(
        [{"type": "response.created", "response": response}, *deltas, {"type": "response.completed", "response": done}]
    )


def messages_events(model: str) -> list[bytes]:
    """A streamed Anthropic Messages answer with as many text deltas as the chat stream."""
    message = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model, "content": []}
    message["usage"] = {"input_tokens": 12, "output_tokens": 1}
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"tok{i} "}}
        for i in range(STREAM_CHUNKS)
    ]
    return typed_events(
        [
            {"type": "message_start", "message": message},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *deltas,
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": STREAM_CHUNKS}},
            {"type": "message_stop"},
        ]
    )


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
STREAM_END = b"0\r\n\r\n"


class Stats:
    requests = 0
    sink_posts = 0
    sink_bytes = 0


class MockProtocol(asyncio.Protocol):
    __slots__ = ("buffer", "server", "transport")

    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            length = content_length(head)
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[head_end + 4 : total]
            self.buffer = self.buffer[total:]
            self.server.handle(self.transport, head, body)  # type: ignore[arg-type]


def content_length(head: bytes) -> int:
    index = head.find(b"ontent-Length:")
    if index < 0:
        index = head.find(b"ontent-length:")
    if index < 0:
        return 0
    end = head.find(b"\r\n", index)
    return int(head[index + 14 : end if end > 0 else None])


class MockServer:
    def __init__(self, model: str, chunk_delay_s: float) -> None:
        self.chunk_delay_s = chunk_delay_s
        self.completion = http_response(completion_body(model))
        self.events = {
            b"chat": stream_events(model),
            b"/v1/responses": responses_events(model),
            b"/v1/messages": messages_events(model),
        }
        self.at_once = {k: STREAM_HEAD + b"".join(v) + STREAM_END for k, v in self.events.items()}
        self.models = http_response(
            json.dumps({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "bench"}]}).encode()
        )
        self.sink_ok = http_response(b"{}")
        self.not_found = http_response(b'{"error":"not found"}', status=b"404 Not Found")
        self.stats = Stats()

    def handle(self, transport: asyncio.Transport, head: bytes, body: bytes) -> None:
        self.stats.requests += 1
        line_end = head.find(b"\r\n")
        method, path, _ = head[: line_end if line_end > 0 else None].split(b" ", 2)
        streamed = b'"stream":true' in body or b'"stream": true' in body
        if method == b"POST" and streamed and path.split(b"?", 1)[0] in self.events:
            self.stream(transport, path.split(b"?", 1)[0])
        elif method == b"POST" and path.startswith(b"/v1/") and path.endswith(b"completions"):
            if streamed:
                self.stream(transport, b"chat")
            else:
                transport.write(self.completion)
        elif method == b"GET" and path == b"/v1/models":
            transport.write(self.models)
        elif method == b"POST":
            self.stats.sink_posts += 1
            self.stats.sink_bytes += len(body)
            transport.write(self.sink_ok)
        elif path == b"/__stats":
            stats = {"requests": self.stats.requests, "sink_posts": self.stats.sink_posts}
            stats["sink_bytes"] = self.stats.sink_bytes
            transport.write(http_response(json.dumps(stats).encode()))
        else:
            transport.write(self.not_found)

    def stream(self, transport: asyncio.Transport, kind: bytes) -> None:
        if self.chunk_delay_s <= 0:
            transport.write(self.at_once[kind])
            return
        transport.write(STREAM_HEAD)
        _write_in_turn(asyncio.get_running_loop(), transport, [*self.events[kind], STREAM_END], 0, self.chunk_delay_s)


def _write_in_turn(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, pieces: list[bytes], index: int, delay_s: float
) -> None:
    """Each piece `delay_s` after the one before. Chained, not all timers at once: with every piece
    scheduled at once, a piece was seen going out after the answer's end under load (which a client
    then reads as the start of its next answer on the connection)."""
    if transport.is_closing():
        return
    if index > 0:
        transport.write(pieces[index - 1])
    if index < len(pieces):
        loop.call_later(delay_s, _write_in_turn, loop, transport, pieces, index + 1, delay_s)


async def serve(host: str, port: int, model: str, chunk_delay_s: float) -> None:
    server = MockServer(model, chunk_delay_s)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: MockProtocol(server), host, port, backlog=4096, reuse_address=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port, args.model, args.chunk_delay_ms / 1000.0))


if __name__ == "__main__":
    main()
