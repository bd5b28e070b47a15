"""Limits every request meets before the app sees it, with either server (granian or uvicorn).

- Request line + headers: at most `MAX_REQUEST_HEADER_KB` (431), and complete within
  `CLIENT_HEADER_TIMEOUT_S` of the connection's first byte (else the connection is closed).
  Granian does both itself (`HTTP1Settings`); for uvicorn, `limited_httptools_protocol` adds them.
- Body: at most `MAX_REQUEST_BODY_MB` on /v1 and `MAX_ADMIN_BODY_MB` elsewhere (413), and complete
  within `CLIENT_BODY_TIMEOUT_S` of the headers (408, connection closed). `RequestLimits` reads
  the body before the app runs, so a slow or huge body never reaches a handler.
- WebSocket messages: at most `MAX_ADMIN_BODY_MB` (close 1009).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router import errors


class RequestLimits:
    """ASGI wrapper: bounded, timed request bodies and WebSocket messages."""

    def __init__(self, app: ASGIApp, v1_body_bytes: int, other_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.v1_body_bytes = v1_body_bytes
        self.other_body_bytes = other_body_bytes
        self.body_timeout_s = body_timeout_s
        # An app that takes the read body directly (app.V1FastPath) gets the server's own receive.
        self._with_body = getattr(app, "with_body", None)

    def __getattr__(self, name: str) -> Any:  # `state` and friends of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            is_v1 = scope["path"].startswith("/v1/")
            limit = self.v1_body_bytes if is_v1 else self.other_body_bytes
            first = await receive()  # a request without a body answers at once
            if first["type"] == "http.request" and first.get("more_body", False):
                declared = _declared_length(scope)
                body = first.get("body", b"")
                try:
                    if declared is not None and declared == len(body) and declared <= limit:
                        # granian sends a small body whole, then an empty end: no network wait, no deadline
                        end = await receive()
                        if end["type"] != "http.request" or end.get("more_body", False) or end.get("body"):
                            body = await _read_rest(first, replay(end, receive), limit, declared)
                    else:
                        async with asyncio.timeout(self.body_timeout_s):
                            body = await _read_rest(first, receive, limit, declared)
                except TimeoutError:
                    message = f"The request body did not arrive within {self.body_timeout_s:g} s."
                    await _refuse(scope, send, is_v1, 408, message)
                    return
                except _TooLarge:
                    await _refuse(scope, send, is_v1, 413, f"Request body is larger than {limit / 1024 / 1024:g} MB.")
                    return
                except _Disconnected:
                    return
                first = {"type": "http.request", "body": body, "more_body": False}
            elif first["type"] == "http.request" and len(first.get("body", b"")) > limit:
                await _refuse(scope, send, is_v1, 413, f"Request body is larger than {limit / 1024 / 1024:g} MB.")
                return
            if self._with_body is not None:
                await self._with_body(scope, first, receive, send)
            else:
                await self.app(scope, replay(first, receive), send)
        elif kind == "websocket":
            await self.app(scope, _bounded_messages(receive, send, self.other_body_bytes), send)
        else:
            await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _read_rest(first: Message, receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise _TooLarge
    chunks = [first.get("body", b"")]
    size = len(chunks[0])
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def replay(first: Message, receive: Receive) -> Receive:
    """A receive that gives `first` (a message already read), then what `receive` gives."""
    pending: Message | None = first

    async def replayed() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replayed


async def _refuse(scope: Scope, send: Send, is_v1: bool, status: int, message: str) -> None:
    """413/408 in the shape of the API that was called, then the connection is closed."""
    close = {"connection": "close"}
    if is_v1:
        from router import protocols

        code = "request_too_large" if status == 413 else "request_timeout"
        error = errors.ApiError(status, message, "invalid_request_error", code)
        adapter = protocols.ADAPTERS.get(scope["path"])
        response = adapter.error_response(error, close) if adapter else error.response(close)
    else:
        code = "PAYLOAD_TOO_LARGE" if status == 413 else "REQUEST_TIMEOUT"
        body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})
        response = Response(body, status, close, media_type="application/json")
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _bounded_messages(receive: Receive, send: Send, limit: int) -> Receive:
    async def bounded() -> Message:
        message = await receive()
        if message["type"] == "websocket.receive":
            size = len(message.get("bytes") or b"") + len(message.get("text") or "")
            if size > limit:
                await send({"type": "websocket.close", "code": 1009, "reason": "message too big"})
                return {"type": "websocket.disconnect", "code": 1009}
        return message

    return bounded


# --- uvicorn --------------------------------------------------------------------------------


def limited_connection(max_head_bytes: int, head_timeout_s: float, **kwargs: Any) -> asyncio.Protocol:
    """One connection of `limited_httptools_protocol`: `partial(limited_connection, limits)` is a protocol
    factory that uvicorn's spawned workers can be handed (a class made at run time does not pickle)."""
    protocol: asyncio.Protocol = limited_httptools_protocol(max_head_bytes, head_timeout_s)(**kwargs)
    return protocol


@functools.cache
def limited_httptools_protocol(max_head_bytes: int, head_timeout_s: float) -> type:
    """uvicorn's httptools protocol with a request-head size limit (431) and a head deadline."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0  # raw bytes received while the head is incomplete (bounds what the parser buffers)
        _head_counted = 0  # request line + header bytes as parsed (exact)
        _in_head = True
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._in_head:
                super().data_received(data)
                return
            if self._head_timer is None:
                self._arm_head_timer()
            self._head_bytes += len(data)
            try:
                self.parser.feed_data(data)  # at most one read's worth past the limit is parsed
            except httptools.HttpParserUpgrade:  # as uvicorn does
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if self._head_counted > max_head_bytes:
                    self._send_431()
                else:
                    self.send_400_response("Invalid HTTP request received.")
                return
            finally:
                self._unset_keepalive_if_required()
            if self._in_head and self._head_bytes > max_head_bytes:
                self._send_431()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_counted = 0

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, size: int) -> None:
            self._head_counted += size
            if self._head_counted > max_head_bytes:
                raise ValueError("request head too large")  # stops the parser: answered with 431

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0

        def _arm_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self.transport.close()

        def _send_431(self) -> None:
            message = b"Request header fields too large."
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message)
            )
            self.transport.close()
            self._cancel_head_timer()

    return LimitedHttpToolsProtocol
