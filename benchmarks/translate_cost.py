"""What translating a stream costs per event, beside relaying it as it is (CPU time, in this process).

For a 200-chunk chat stream (text deltas, then usage and [DONE]) as the router's relay sees it,
per upstream event:

* ``pass-through``: cut into SSE events and forwarded (what a relay that reads usage does);
* ``chat -> Messages`` / ``chat -> Responses``: cut, parsed, translated, each client event framed;
* ``Messages -> chat``: the same for an Anthropic stream of 200 text deltas.

It also reports the CPU from the first upstream chunk to the first client text event of a
translated stream (what translation adds to the time to first token).

    .venv/bin/python benchmarks/translate_cost.py [--events 200] [--rounds 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.protocols import translate
from router.upstream import SSESplitter, sse_data, sse_event_name


def chat_stream(events: int) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
        choice = [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []
        body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        body["choices"] = choice
        if usage is not None:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    usage = {"prompt_tokens": 20, "completion_tokens": events, "total_tokens": 20 + events}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": f"tok{i} "}) for i in range(events)),
        chunk({}, "stop"),
        chunk({}, usage=usage),
        b"data: [DONE]\n\n",
    ]


def messages_stream(events: int) -> list[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"

    texts = range(events)
    message: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": []}
    message.update(stop_reason=None, stop_sequence=None, usage={"input_tokens": 20, "output_tokens": 1})
    return [
        event("message_start", {"message": message}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"t{i}"}}) for i in texts),
        event("content_block_stop", {"index": 0}),
        event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": events}}),
        event("message_stop", {}),
    ]  # fmt: skip


def frame(name: str | None, data: Any) -> bytes:
    if isinstance(data, bytes):
        return b"data: " + data + b"\n\n"
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def pass_through(chunks: list[bytes], _: Any) -> int:
    splitter, out = SSESplitter(), 0
    for chunk in chunks:
        for event in splitter.feed(chunk):
            out += len(event)
    return out


def translated(chunks: list[bytes], make: Callable[[], Any]) -> int:
    splitter, stream, out = SSESplitter(), make(), 0
    for chunk in chunks:
        for event in splitter.feed(chunk):
            data = sse_data(event)
            if data is None or data == b"[DONE]":
                continue
            for name, payload in stream.feed(sse_event_name(event), orjson.loads(data)):
                out += len(frame(name, payload))
    for name, payload in stream.end():
        out += len(frame(name, payload))
    return out


def first_text_cpu_us(chunks: list[bytes], make: Callable[[], Any], rounds: int) -> float:
    """CPU from the first upstream chunk to the first client event carrying text."""
    samples = []
    for _ in range(rounds):
        stream, splitter = make(), SSESplitter()
        start = time.process_time_ns()
        for chunk in chunks:
            events = [
                e for raw in splitter.feed(chunk) for e in stream.feed(None, orjson.loads(sse_data(raw) or b"{}"))
            ]
            if any("delta" in str(data) for _, data in events):
                break
        samples.append((time.process_time_ns() - start) / 1000)
    return statistics.median(samples)


def per_event_us(run: Callable[[list[bytes], Any], int], chunks: list[bytes], make: Any, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.process_time_ns()
        run(chunks, make)
        samples.append((time.process_time_ns() - start) / 1000 / len(chunks))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    chat, anthropic = chat_stream(args.events), messages_stream(args.events)
    request = {"model": "m", "input": "hi", "stream": True}
    cells = [
        ("pass-through (chat stream)", pass_through, chat, None),
        ("chat -> Messages", translated, chat, lambda: translate.ChatToMessagesStream("m")),
        ("chat -> Responses", translated, chat, lambda: translate.ChatToResponsesStream(request)),
        ("pass-through (Messages stream)", pass_through, anthropic, None),
        ("Messages -> chat", translated, anthropic, lambda: translate.MessagesToChatStream("m", True)),
    ]
    print(f"{'cell':32} CPU per upstream event (median of {args.rounds} streams of {args.events} deltas)")
    for name, run, chunks, make in cells:
        print(f"{name:32} {per_event_us(run, chunks, make, args.rounds):7.1f} µs")
    print()
    for name, make in (("chat -> Messages", cells[1][3]), ("chat -> Responses", cells[2][3])):
        assert make is not None
        cpu = first_text_cpu_us(chat, make, args.rounds)
        print(f"first text event, {name:18} {cpu:7.1f} µs CPU after the first chunk")


if __name__ == "__main__":
    main()
