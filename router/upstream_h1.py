"""A lean HTTP/1.1 upstream client: asyncio protocols, llhttp's parser (httptools), one pool.

Why not aiohttp's client: per request it costs about as much CPU as the rest of the router
(benchmarks/README.md); the router needs a small part of it (one request shape, no cookies, no
redirects, no proxies, bodies already in memory). This client does that part and nothing else:

- connections are kept per (scheme, host, port) and reused last-in first-out; `max_connections`
  bounds them all (a request waits for a free slot); idle ones are dropped after `IDLE_S`;
- the connect timeout bounds connecting (TCP and TLS); the read timeout bounds every wait for
  the next bytes of the answer (head or body), like aiohttp's `sock_read`;
- cancelling a request at any point closes its connection at once (the backend sees the client
  leave), and a connection goes back to the pool only after its answer was read to the end;
- `gzip`/`deflate` answers are decompressed; header names and values are checked for line
  breaks before anything is sent; the answer's head is bounded (`MAX_HEAD_BYTES`), and so is its
  body (`max_answer_bytes`): a whole answer read at once, and what a stream has buffered unread,
  decompressed bytes counted (a small compressed answer cannot expand without bound);
- `user:password@` in a URL is sent as HTTP Basic unless an Authorization header is given (the
  backend's key wins; aiohttp refuses the pair with a ValueError).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from typing import Any, NoReturn, cast
from urllib.parse import unquote, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from router.upstream import (
    DEFAULT_MAX_ANSWER_BYTES,
    AnswerTooLarge,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

IDLE_S = 15.0  # an idle pooled connection older than this is closed, not reused (aiohttp's default)
MAX_HEAD_BYTES = 256 * 1024  # status line and headers of one answer
MAX_HEADERS = 500
_MAX_HEADER_STRINGS = 2 * MAX_HEADERS  # names and values, one after the other (`_Exchange.raw_headers`)
PAUSE_AT_BYTES = 1024 * 1024  # unread body bytes buffered before the socket stops being read
_JOIN_BELOW = 64 * 1024  # a body smaller than this is written with the head in one send
_CLOCK_RESOLUTION_S = 0.001  # a timer may fire this much before its time (libuv's are in ms)
_INFLATE_STEP = 256 * 1024  # decompressed bytes made per step (checked against the bound between steps)
_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]")  # a request target must be printable ASCII without spaces
_LINE_BREAK = re.compile(r"[\r\n\x00]")


@lru_cache(maxsize=4096)
def _split(url: str) -> tuple[tuple[str, str, int], str, str, str | None]:
    """((scheme, host, port), Host header, request target, Basic credentials or None) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"upstream connection failed: not an http(s) URL: {url!r}")
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header = f"{host_header}:{port}"
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    if _UNSAFE_TARGET.search(target):
        raise UpstreamError("upstream connection failed: the URL has characters a request line cannot carry")
    basic = None
    if parts.username is not None:  # user:password@ in a backend URL: HTTP Basic, as aiohttp and httpx send it
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        basic = "Basic " + base64.b64encode(userinfo.encode()).decode()
    return (scheme, host, port), host_header, target, basic


def _request_head(
    method: str, target: str, host: str, headers: dict[str, str], length: int | None, basic: str | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    encoding_asked = authorized = False
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
        lowered = name.lower()
        encoding_asked = encoding_asked or lowered == "accept-encoding"
        authorized = authorized or lowered == "authorization"
    # The header lines hold one CR and one LF each and no NUL unless a name or value has one: three
    # scans of their text instead of a regex search per name and per value (benchmarks/README.md).
    fields = "".join(lines[1:])
    if fields.count("\n") != len(headers) or fields.count("\r") != len(headers) or "\x00" in fields:
        for name, value in headers.items():
            if _LINE_BREAK.search(name) or _LINE_BREAK.search(value):
                raise UpstreamError(f"upstream connection failed: header {name!r} contains a line break")
    if not encoding_asked:  # what aiohttp asks for by default; answers are decompressed either way
        lines.append("Accept-Encoding: gzip, deflate\r\n")
    if basic is not None and not authorized:  # a backend key's Authorization wins over the URL's credentials
        lines.append(f"Authorization: {basic}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()  # UTF-8, as aiohttp sends header values


class _Connection(asyncio.Protocol):
    """One upstream connection; it carries one exchange at a time."""

    def __init__(self, pool: H1Upstream, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.exchange: _Exchange | None = None
        self.holds_slot = True  # counted in the pool's open connections until closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: this connection's framing cannot be trusted
            self.close()
            return
        exchange.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        if self.exchange is not None:
            self.exchange.eof()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Drop the connection now (half-read answers never go back to the pool)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool._lost(self)


class _Exchange:
    """One request's answer as it arrives: llhttp's callbacks fill it, the response reads it."""

    def __init__(
        self, conn: _Connection, loop: asyncio.AbstractEventLoop, read_timeout_s: float, head_only: bool, max_bytes: int
    ) -> None:
        self.conn = conn
        self.max_bytes = max_bytes
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.head_only = head_only
        # The parser holds this exchange's callbacks (bound methods): a reference cycle, broken
        # when nothing more can come for it (the answer is whole, released half-read, or the
        # request failed). Left to the cyclic GC, it cost ~5 µs per request and a pause of several
        # ms every ~2,000 (benchmarks/README.md, session 9).
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.status = 0
        self.raw_headers: list[str] = []  # name, value, name, value, ...: no tuple per header
        self.head_bytes = 0
        self.bytes_before_head = 0  # llhttp hands a header over only once it is whole: count what it holds
        self.headers: CIMultiDictProxy[str] | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.keep_alive = False  # read in llhttp's callback: the parser forgets it once the answer ended
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0  # when the current wait times out (0: when the timer fires)
        self.timer: asyncio.TimerHandle | None = None  # armed at or before the deadline, while reading
        self.decompress: Any = None

    # --- llhttp callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        """Per header of every answer (~20 from real backends): as little work as the bounds allow."""
        raw = self.raw_headers
        raw.append(name.decode("latin-1"))
        raw.append(value.decode("latin-1"))
        size = self.head_bytes = self.head_bytes + len(name) + len(value) + 4
        if size > MAX_HEAD_BYTES or len(raw) > _MAX_HEADER_STRINGS:
            raise UpstreamError("upstream connection failed: the answer's head is too large")

    def on_status(self, status: bytes) -> None:
        self.head_bytes += len(status)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise UpstreamError("upstream connection failed: the answer's head is too large")

    def on_headers_complete(self) -> None:
        assert self.parser is not None  # its own callback
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (103 Early Hints, ...): the real one follows
            self.raw_headers.clear()
            return
        if self.headers is not None:
            raise UpstreamError("upstream connection failed: a second answer to one request")
        self.status = status
        headers: CIMultiDict[str] = CIMultiDict()  # filled by add: from anything but a list it is slower
        add = headers.add
        pairs = iter(self.raw_headers)
        for name in pairs:  # (name, value) in arrival order
            add(name, next(pairs))
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self.decompress = zlib.decompressobj(47 if encoding != "deflate" else 15)
        self.headers = CIMultiDictProxy(headers)
        if self.head_only:
            self.complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        """Each HTTP chunk (as `_add`, inline: a stream's many small chunks); `feed` wakes the reader once."""
        if self.decompress is not None:
            self._inflate(body)
        elif body:
            self.chunks.append(body)
            self.buffered += len(body)
            if self.buffered > self.max_bytes:
                raise AnswerTooLarge(self.max_bytes)

    def _inflate(self, body: bytes) -> None:
        """Decompress in steps: a bomb fails at the bound instead of expanding in one call."""
        while body:
            piece = self.decompress.decompress(body, _INFLATE_STEP)
            body = self.decompress.unconsumed_tail
            if piece:
                self._add(piece)

    def _add(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > self.max_bytes:
            raise AnswerTooLarge(self.max_bytes)

    def on_message_complete(self) -> None:
        if self.status == 0:  # the end of an interim answer
            return
        if self.decompress is not None:
            rest = self.decompress.flush()
            if rest:
                self._add(rest)
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()
            self.parser = None  # nothing more to parse: the cycle ends here
        self.complete = True
        self._wake()

    # --- the connection's side ---

    def feed(self, data: bytes) -> None:
        if self.complete or self.error is not None or self.parser is None:
            self.conn.close()  # more than one answer's worth of bytes: never reuse this connection
            return
        if self.headers is None:
            self.bytes_before_head += len(data)
        try:
            self.parser.feed_data(data)
            if self.headers is None and self.bytes_before_head > MAX_HEAD_BYTES:  # e.g. one endless header
                raise UpstreamError("upstream connection failed: the answer's head is too large")
        except UpstreamError as exc:
            self.fail(exc)
        except httptools.HttpParserCallbackError as exc:
            self.fail(_callback_error(exc))
        except (httptools.HttpParserError, zlib.error) as exc:
            self.fail(UpstreamError(f"upstream connection failed: invalid HTTP answer: {exc}"))
        if self.chunks:
            if self.buffered > PAUSE_AT_BYTES and not self.paused:
                self.paused = True
                self.conn.pause_reading()
            self._wake()

    def eof(self) -> None:
        if self.complete or self.error is not None:
            return
        if self.headers is not None and self._ends_at_close():
            self.on_message_complete()
            return
        what = "closed the connection before answering" if self.headers is None else "closed the connection mid-answer"
        self.fail(UpstreamError(f"upstream connection failed: the backend {what}"))

    def _ends_at_close(self) -> bool:
        """An answer without Content-Length or chunked framing ends when the connection does."""
        assert self.headers is not None
        if "content-length" in self.headers:
            return False
        return "chunked" not in self.headers.get("transfer-encoding", "").lower()

    def fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.complete:
            # Kept as a message only: the frames it was raised through (llhttp's callbacks) hold
            # this exchange, and `raise_error` raises a copy, so no traceback ever leads back here.
            error.__traceback__ = error.__context__ = error.__cause__ = None
            self.error = error
        self.conn.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the reader's side ---

    async def wait(self) -> None:
        """Until something new arrived (head, body, end or error), at most the read timeout.

        One timer serves every wait of the answer (a stream waits once per chunk): a wait moves the
        deadline, the timer, when it fires early, moves itself to it (`_check_deadline`).
        """
        loop = self.loop
        self.waiter = waiter = loop.create_future()
        if self.timer is None:
            self.timer = loop.call_later(self.read_timeout_s, self._check_deadline)
            self.deadline = 0.0  # the timer's own time
        else:
            self.deadline = loop.time() + self.read_timeout_s
        try:
            await waiter
        except BaseException:
            self.conn.close()
            raise
        finally:
            # A timeout is the future's exception, and this frame is in its traceback: holding the
            # future here too would be a cycle.
            self.waiter = None
            del waiter

    def _check_deadline(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():  # nobody waits: the next wait arms the timer again
            return
        left = self.deadline - self.loop.time()
        if left <= _CLOCK_RESOLUTION_S:
            waiter.set_exception(UpstreamTimeout("upstream timed out"))
        else:
            self.timer = self.loop.call_later(left, self._check_deadline)

    def stop_timer(self) -> None:
        """The answer is done with (read, or given up): no timer keeps it alive."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def take(self) -> bytes | None:
        """The body bytes that arrived since the last call, b"" when none, None at the end."""
        if self.chunks:
            chunk = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
            self.chunks.clear()
            self.buffered = 0
            if self.paused:
                self.paused = False
                self.conn.resume_reading()
            return chunk
        if self.error is not None:
            self.raise_error()
        return None if self.complete else b""

    def raise_error(self) -> NoReturn:
        """Raise (a copy of) the error the exchange failed with: raised itself, it would hold the
        frames that raised it, and they this exchange, which holds it (a cycle for the GC)."""
        assert self.error is not None
        error = self.error
        raise type(error).__new__(type(error), *error.args)


def _callback_error(exc: httptools.HttpParserCallbackError) -> UpstreamError:
    """What one of llhttp's callbacks raised, or a generic error. Not worked out in `feed`'s frame:
    a local there holding the error would be reached from the error's own traceback (a cycle)."""
    cause = exc.__context__
    return cause if isinstance(cause, UpstreamError) else UpstreamError(f"upstream connection failed: {exc}")


class _H1Response:
    __slots__ = ("_exchange", "_released", "headers", "status")

    def __init__(self, exchange: _Exchange) -> None:
        assert exchange.headers is not None
        self._exchange = exchange
        self._released = False
        self.status = exchange.status
        self.headers: Mapping[str, str] = exchange.headers

    async def read(self) -> bytes:
        exchange = self._exchange
        parts: list[bytes] = []
        size = 0
        try:
            while (chunk := exchange.take()) is not None:
                if chunk:
                    parts.append(chunk)
                    size += len(chunk)
                    if size > exchange.max_bytes:
                        exchange.conn.close()  # the rest is not read: the connection is not reused
                        raise AnswerTooLarge(exchange.max_bytes)
                else:
                    await exchange.wait()
        finally:
            self._release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self)

    async def close(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            exchange = self._exchange
            if exchange.timer is not None:
                exchange.timer.cancel()
                exchange.timer = None
            exchange.conn.pool._release(exchange.conn, exchange.complete and exchange.keep_alive)
            exchange.parser = None  # a half-read answer's connection is closed: nothing more comes for it


class _Chunks:
    """A stream's body as it arrives, for `_H1Response.iter_chunks`: an iterator, not an async
    generator, so a stream pays for no generator frame and no asyncio first-iteration hook."""

    __slots__ = ("_response",)

    def __init__(self, response: _H1Response) -> None:
        self._response = response

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        response = self._response
        exchange = response._exchange
        try:
            while (chunk := exchange.take()) is not None:
                if chunk:
                    return chunk
                await exchange.wait()
        except BaseException:
            response._release()
            raise
        response._release()
        raise StopAsyncIteration


class H1Upstream:
    """The client: one pool of HTTP/1.1 connections for every backend."""

    def __init__(
        self,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int = 1000,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_answer_bytes = max_answer_bytes
        self._read_timeout_s = read_timeout_s
        self._max = max_connections
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._ssl: ssl.SSLContext | None = None
        self._closing = False

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, stream: bool
    ) -> UpstreamResponse:
        key, host, target, basic = _split(url)
        head = _request_head(method, target, host, headers, None if body is None else len(body), basic)
        conn = await self._connection(key)
        assert conn.transport is not None
        loop = asyncio.get_running_loop()
        exchange = _Exchange(conn, loop, self._read_timeout_s, method == "HEAD", self._max_answer_bytes)
        conn.exchange = exchange
        try:
            if body is not None and len(body) < _JOIN_BELOW:
                conn.transport.write(head + body)
            else:
                conn.transport.write(head)
                if body:
                    conn.transport.write(body)
            while exchange.headers is None:
                if exchange.error is not None:
                    exchange.raise_error()
                await exchange.wait()
        except BaseException:
            exchange.stop_timer()
            conn.close()
            conn.exchange = None
            exchange.parser = None  # nothing more comes for it (see _Exchange.__init__)
            raise
        return _H1Response(exchange)

    async def _connection(self, key: tuple[str, str, int]) -> _Connection:
        """A pooled connection to `key`, or a new one once the bound on open connections allows."""
        while True:
            conn = self._idle_connection(key)
            if conn is not None:
                return conn
            if self._closing:
                raise UpstreamError("upstream connection failed: the client is closed")
            if self._open < self._max:
                break
            if not self._close_oldest_idle():  # at the bound with nothing idle: wait for a release
                await self._slot_released()
        self._open += 1
        try:
            return await self._connect(key)
        except BaseException:  # a cancelled connect included: the connection never counted
            self._open -= 1
            self._wake_slot_waiter()
            raise

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to have been closed
                if not conn.closed and now - conn.idle_since < IDLE_S:
                    return conn
                conn.close()
        return None

    def _close_oldest_idle(self) -> bool:
        """Free a slot held by an idle connection to another backend; False when none is idle."""
        oldest = min((conns[0] for conns in self._idle.values() if conns), key=lambda c: c.idle_since, default=None)
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        oldest.close()
        return True

    async def _slot_released(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # woken, then cancelled: pass the wake-up on
                self._wake_slot_waiter()
            raise
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._tls() if scheme == "https" else None
        conn = _Connection(self, key)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(lambda: conn, host, port, ssl=tls, server_hostname=host if tls else None)
        except BaseException as exc:
            # The caller frees the slot; a connection_lost still to come (a cancel right after the
            # connection was made) must not free it a second time.
            conn.closed, conn.holds_slot = True, False
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout("upstream timed out") from exc
            if isinstance(exc, OSError):  # ssl.SSLError included
                raise UpstreamError(f"upstream connection failed: {exc.__class__.__name__}: {exc}") from exc
            raise
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, conn: _Connection, reusable: bool) -> None:
        conn.exchange = None
        if not reusable or conn.closed or self._closing:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._slot_waiters:
            self._wake_slot_waiter()

    def _lost(self, conn: _Connection) -> None:
        """A connection closed (by either side): its slot is free."""
        if conn.holds_slot:
            conn.holds_slot = False
            self._open -= 1
            self._wake_slot_waiter()

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closing = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
