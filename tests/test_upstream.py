"""The upstream transports (router/upstream.py) against a raw asyncio server that records what a
client really does on the wire: timeouts, error kinds for failover, and whether the upstream
connection is closed when the router gives up on a request (client gone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from router.upstream import (
    DEFAULT_MAX_ANSWER_BYTES,
    AnswerTooLarge,
    SSEEventTooLarge,
    SSESplitter,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
    make_upstream_client,
    sse_data,
)
from tests.conftest import write_config

TRANSPORTS = ["aiohttp", "h1", "pyreqwest", "httpx"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """One handler per connection; `closed` is set when the client closes its side."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self.handler(reader, writer)
                while await reader.read(65536):  # until the client closes its side
                    pass
                self.closed.set()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.closed.set()
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def read_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    await reader.readexactly(length)
    return head


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)


async def sse_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)  # the head goes out well before the first event
    event = b"data: first\n\n"
    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
    await writer.drain()


async def head_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
    await writer.drain()


async def closes_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.close()


@contextlib.asynccontextmanager
async def client(
    transport: str, read_timeout_s: float = 30.0, max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
) -> AsyncIterator[UpstreamClient]:
    """An upstream client of `transport`, closed afterwards."""
    upstream = make_upstream_client(transport, 1.0, read_timeout_s, max_answer_bytes)
    try:
        yield upstream
    finally:
        await upstream.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_refused_is_a_connect_error(transport: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(transport) as upstream:
        with pytest.raises(UpstreamError) as info:
            await upstream.send("POST", f"http://127.0.0.1:{port}/v1/x", {}, b"{}", False)
        assert type(info.value) is UpstreamError


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_closed_without_answer_is_a_connect_error(transport: str) -> None:
    async with RawServer(closes_without_answer) as server, client(transport) as upstream:
        with pytest.raises(UpstreamError) as info:
            await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert type(info.value) is UpstreamError


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_answer_within_the_read_timeout_is_a_timeout(transport: str) -> None:
    async with RawServer(never_answers) as server, client(transport, read_timeout_s=0.5) as upstream:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as info:
            await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert isinstance(info.value, UpstreamTimeout)
        assert 0.4 < time.monotonic() - started < 5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_body_that_stops_coming_is_a_timeout(transport: str) -> None:
    async with RawServer(head_then_stall) as server, client(transport, read_timeout_s=0.5) as upstream:
        with pytest.raises(UpstreamError) as info:
            response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
            await response.read()
        assert isinstance(info.value, UpstreamTimeout)


async def events_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Six events 0.1 s apart (0.6 s in all), then nothing."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    for n in range(6):
        await asyncio.sleep(0.1)
        event = b"data: %d\n\n" % n
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_read_timeout_bounds_each_wait_of_a_stream_not_the_whole_stream(transport: str) -> None:
    async with RawServer(events_then_stall) as server, client(transport, read_timeout_s=0.35) as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", True)
        received = b""
        try:
            with pytest.raises(UpstreamTimeout):
                async for chunk in response.iter_chunks():
                    received += chunk
        finally:
            await response.close()
        assert received == b"".join(b"data: %d\n\n" % n for n in range(6))


def answering(answer: bytes, chunked: bool = False) -> Handler:
    """A handler that answers one request with `answer` as its body (chunked: in 64 KiB chunks)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        if not chunked:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(answer))
            writer.write(answer)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for start in range(0, len(answer), 65536):
                piece = answer[start : start + 65536]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    return handler


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("chunked", [False, True])
async def test_an_answer_over_the_bound_is_an_error_and_one_at_it_is_read(transport: str, chunked: bool) -> None:
    bound = 256 * 1024
    async with client(transport, max_answer_bytes=bound) as upstream:
        async with RawServer(answering(b"x" * bound, chunked)) as server:
            response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
            assert await response.read() == b"x" * bound
        async with RawServer(answering(b"x" * (bound + 1), chunked)) as server:
            response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
            with pytest.raises(AnswerTooLarge, match=r"larger than 0\.25 MB"):
                await response.read()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_head_comes_before_the_first_event_and_close_drops_the_connection(transport: str) -> None:
    async with RawServer(sse_then_wait) as server, client(transport) as upstream:
        started = time.monotonic()
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", True)
        assert time.monotonic() - started < 0.25  # not held back until the first event arrives
        assert response.status == 200 and response.headers.get("content-type") == "text/event-stream"
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"data: first\n\n"
        await response.close()
        await asyncio.wait_for(server.closed.wait(), 2)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelled_stream_read_drops_the_connection(transport: str) -> None:
    async with RawServer(sse_then_wait) as server, client(transport) as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", True)

        async def relay() -> None:
            try:
                async for _ in response.iter_chunks():
                    pass
            finally:
                await response.close()

        task = asyncio.create_task(relay())
        await asyncio.sleep(0.5)  # after the first event, waiting for more
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 2)


@pytest.mark.parametrize(
    "transport",
    [
        "aiohttp",
        "h1",
        "httpx",
        pytest.param(
            "pyreqwest",
            marks=pytest.mark.xfail(
                strict=True,
                reason="pyreqwest 0.15 keeps its Rust task (and the upstream request) running after a cancel "
                "that comes before the response head; the reason it is not the default transport",
            ),
        ),
    ],
)
async def test_cancel_while_waiting_for_the_answer_drops_the_connection(transport: str) -> None:
    async with RawServer(never_answers) as server, client(transport) as upstream:
        task = asyncio.create_task(upstream.send("POST", server.url + "/v1/x", {}, b"{}", False))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 2)


# --- the router: a client that goes away cancels the upstream request -----------------------------


class HangingUpstream:
    """A backend that reads each request and never answers; `closed` is set when the router hangs up."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.received = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            self.received.set()
            while conn.recv(65536):
                pass
            self.closed.set()


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_client_gone_before_the_answer_cancels_the_upstream_request(router_factory, tmp_path, server, stream):
    backend = HangingUpstream()
    config = write_config(tmp_path / "c.yaml", {"hang": {"url": backend.base_url, "override": ["m"]}})
    router = router_factory(config=config, env={"SERVER": server})
    key = router.add_user("gone")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()
    with socket.create_connection(("127.0.0.1", router.port)) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body)
        )
        assert backend.received.wait(10), "the request did not reach the backend"
    assert backend.closed.wait(5), "the upstream request went on after the client left"
    row = router.wait_for_logs(1)[0]
    assert row["status_code"] == 499 and row["error"] == "client disconnected"
    assert httpx.get(f"{router.url}/healthz", timeout=10).status_code == 200


def test_sse_splitter_handles_split_and_joined_events():
    splitter = SSESplitter()
    assert splitter.feed(b'data: {"a"') == []
    assert splitter.feed(b": 1}\n\ndata: [DONE]\n\n") == [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]
    assert splitter.feed(b"data: x\r\n\r\n") == [b"data: x\n\n"]
    assert splitter.feed(b"data: tail") == [] and splitter.rest() == b"data: tail"
    assert sse_data(b"event: x\ndata: a\ndata: b\n\n") == b"a\nb"
    assert sse_data(b": comment\n\n") is None


@pytest.mark.parametrize("first", [0, 50, 99, 100, 101, 150])
def test_sse_splitter_refuses_an_event_over_its_bound_however_it_is_cut(first: int) -> None:
    """An event of 101 bytes against a bound of 100: cut after `first` bytes, or whole in one chunk."""
    event = b"data: " + b"x" * 93 + b"\n\n"  # 101 bytes
    fitting = b"data: " + b"x" * 92 + b"\n\n"  # 100 bytes
    splitter = SSESplitter(100)
    assert splitter.feed(fitting) == [fitting] and splitter.is_clean(fitting)
    assert not splitter.is_clean(event)  # not passed on as it is: split, where the bound is checked
    with pytest.raises(SSEEventTooLarge):
        splitter.feed(event[:first])
        splitter.feed(event[first:])
    splitter = SSESplitter(100)
    assert splitter.feed(fitting[:first]) + splitter.feed(fitting[first:]) == [fitting]


# --- one client for every user: nothing an upstream set comes back on another request -------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cookies_an_upstream_sets_are_not_sent_back(transport: str) -> None:
    """The pool serves every user: a Set-Cookie in one user's answer must not ride along on the next
    request (another user's) as a Cookie header."""
    heads: list[bytes] = []

    async def sets_a_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            heads.append(await read_head(reader))
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                b"set-cookie: session=user-a; Path=/\r\n\r\n{}"
            )
            await writer.drain()

    async with RawServer(sets_a_cookie) as server, client(transport) as upstream:
        for _ in range(2):
            # a host name: aiohttp's jar keeps no cookies of a bare IP address
            url = server.url.replace("127.0.0.1", "localhost") + "/v1/x"
            response = await upstream.send("POST", url, {}, b"{}", False)
            assert await response.read() == b"{}"
    assert len(heads) == 2
    assert b"cookie" not in heads[1].lower().replace(b"set-cookie", b""), heads[1]
