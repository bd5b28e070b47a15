"""The floor: a bare ASGI proxy that only forwards the body and relays the answer (or the SSE stream).

No framework, no auth, no parsing, no logging: what a Python proxy on this server and client costs
at the least. `FLOOR_UPSTREAM` is the mock's base URL; `FLOOR_CLIENT` is aiohttp, h1 (the router's
own), h1-lean (h1 with a router's essentials: lean_floor.py), pyreqwest or pyqwest. Run it like
the router: `granian --interface asgi --loop uvloop --factory benchmarks.floor_app:create` or
`uvicorn --factory benchmarks.floor_app:create`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Forward = Callable[[str, bytes], Awaitable[tuple[int, bytes, AsyncIterator[bytes] | None]]]

_HEADERS = {"Content-Type": "application/json"}


def _aiohttp() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import aiohttp

    session: aiohttp.ClientSession | None = None

    async def forward(url: str, body: bytes) -> tuple[int, bytes, AsyncIterator[bytes] | None]:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        resp = await session.post(url, data=body, headers=_HEADERS)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()

            return resp.status, b"text/event-stream", chunks()
        data = await resp.read()
        resp.release()
        return resp.status, data, None

    async def close() -> None:
        if session is not None:
            await session.close()

    return forward, close


def _pyreqwest() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(1000).build()

    async def forward(url: str, body: bytes) -> tuple[int, bytes, AsyncIterator[bytes] | None]:
        if b'"stream":true' in body:
            request = client.post(url).body_bytes(body).headers(_HEADERS).streamed_read_buffer_limit(0).build_streamed()
            resp = await request.__aenter__()

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    while (chunk := await resp.body_reader.read_chunk()) is not None:
                        yield chunk.to_bytes()
                finally:
                    await request.__aexit__(None, None, None)

            return resp.status, b"text/event-stream", chunks()
        resp = await client.post(url).body_bytes(body).headers(_HEADERS).build().send()
        return resp.status, (await resp.bytes()).to_bytes(), None

    return forward, client.close


def _pyqwest() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    from pyqwest import Client, HTTPTransport

    transport = HTTPTransport(follow_redirects=False, enable_otel=False, enable_gzip=False)
    client = Client(transport)

    async def forward(url: str, body: bytes) -> tuple[int, bytes, AsyncIterator[bytes] | None]:
        if b'"stream":true' in body:
            context = client.stream("POST", url, _HEADERS, body)
            resp = await context.__aenter__()

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content:
                        yield bytes(chunk)
                finally:
                    await context.__aexit__(None, None, None)

            return resp.status, b"text/event-stream", chunks()
        resp = await client.post(url, _HEADERS, body)
        return resp.status, bytes(resp.content), None

    return forward, transport.aclose


def _h1() -> tuple[Forward, Callable[[], Awaitable[None]]]:
    """The router's own HTTP/1.1 client (router/upstream_h1.py), as the floor of the router's pairing."""
    from router.upstream_h1 import H1Upstream

    client = H1Upstream(10.0, 60.0)

    async def forward(url: str, body: bytes) -> tuple[int, bytes, AsyncIterator[bytes] | None]:
        resp = await client.send("POST", url, _HEADERS, body, b'"stream":true' in body)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return resp.status, b"text/event-stream", resp.iter_chunks()
        return resp.status, await resp.read(), None

    return forward, client.aclose


def _burn(ns: int) -> None:
    end = time.thread_time_ns() + ns
    while time.thread_time_ns() < end:
        pass


def create() -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    upstream = os.environ["FLOOR_UPSTREAM"].rstrip("/")
    client = os.environ.get("FLOOR_CLIENT", "aiohttp")
    # h1-lean: the h1 client with the essentials of a router (FLOOR_ESSENTIALS below), as its own floor
    forward, close = {"aiohttp": _aiohttp, "h1": _h1, "h1-lean": _h1, "pyreqwest": _pyreqwest, "pyqwest": _pyqwest}[
        client
    ]()

    # FLOOR_HOLD_HEAD=1: a stream's head goes out with its first event, not when the upstream's head
    # comes (the router waits for the first event: a stream that does not start well can fail over).
    hold_head = os.environ.get("FLOOR_HOLD_HEAD") == "1"
    # FLOOR_BURN_US=N: N µs of plain Python work per request before forwarding, to see how the served
    # cost of a request grows with the Python it runs (the router's own part is ~90 µs in-process).
    burn_ns = int(float(os.environ.get("FLOOR_BURN_US", "0")) * 1000)

    # FLOOR_ESSENTIALS=1 or FLOOR_CLIENT=h1-lean (h1 only): the least any router with auth and request
    # logging does besides forwarding, written as lean as Python allows (lean_floor.py).
    essentials = None
    if os.environ.get("FLOOR_ESSENTIALS") == "1" or client == "h1-lean":
        try:
            from benchmarks import lean_floor
        except ImportError:  # run as a script's module (own_cost.py puts benchmarks/ on the path)
            import lean_floor  # type: ignore[no-redef]

        essentials = lean_floor.create(upstream)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if burn_ns:
            _burn(burn_ns)
        if essentials is not None:
            await essentials(scope, receive, send)
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status, data, stream = await forward(upstream + scope["path"], b"".join(chunks))
        if stream is None:
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        start = {"type": "http.response.start", "status": status, "headers": [(b"content-type", data)]}
        if not hold_head:
            await send(start)
        async for chunk in stream:
            if hold_head and start:  # the head with the first event, as the router sends it
                await send(start)
                start = {}
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app
