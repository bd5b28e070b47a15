"""The pooled HTTP client that talks to backends, behind one small interface.

The proxy only sees `UpstreamClient`/`UpstreamResponse`. Four transports implement it: `h1`, the
router's own HTTP/1.1 client (router/upstream_h1.py, the default: the cheapest per request, see
benchmarks/README.md), aiohttp, pyreqwest and httpx (fallbacks, `UPSTREAM_TRANSPORT`).
"""

from __future__ import annotations

import http.cookiejar
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported where a transport is made: h1 (the default) needs neither (~0.15 s of start-up)
    import aiohttp
    import httpx


class UpstreamError(Exception):
    """The backend could not be reached, or the connection broke (router.errors.upstream_error answers it)."""


class UpstreamTimeout(UpstreamError):
    """The backend did not answer (or send the next byte) in time."""


DEFAULT_MAX_ANSWER_BYTES = 256 * 1024 * 1024  # MAX_UPSTREAM_ANSWER_MB's default


class AnswerTooLarge(UpstreamError):
    """A backend's answer (decompressed) is larger than the router keeps in memory for one request."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the backend's answer is larger than {max_bytes / 1024 / 1024:g} MB (MAX_UPSTREAM_ANSWER_MB)")


def _bounded(chunks: list[bytes], chunk: bytes, size: int, max_bytes: int) -> int:
    """Add `chunk` to an answer being read whole; its new size, or AnswerTooLarge."""
    size += len(chunk)
    if size > max_bytes:
        raise AnswerTooLarge(max_bytes)
    chunks.append(chunk)
    return size


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class UpstreamClient(Protocol):
    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, stream: bool
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived."""
        ...

    async def aclose(self) -> None: ...


# --- aiohttp ----------------------------------------------------------------------------------


class _AiohttpResponse:
    __slots__ = ("_errors", "_max_bytes", "_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, errors: tuple[type[Exception], ...], max_bytes: int) -> None:
        self._resp = resp
        self._errors = errors
        self._max_bytes = max_bytes
        self.status = resp.status
        self.headers = resp.headers

    async def read(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in self._resp.content.iter_any():
                size = _bounded(chunks, chunk, size, self._max_bytes)
        except self._errors as exc:
            raise _as_upstream_error(exc) from exc
        except AnswerTooLarge:
            self._resp.close()  # not read to the end: not back into the pool
            raise
        finally:
            self._resp.release()
        return b"".join(chunks)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except self._errors as exc:
            raise _as_upstream_error(exc) from exc

    async def close(self) -> None:
        # close(), not release(): a half-read stream must not go back into the pool.
        if not self._resp.closed:
            self._resp.close()


def _as_upstream_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):  # aiohttp.ServerTimeoutError included (a subclass)
        return UpstreamTimeout("upstream timed out")
    return UpstreamError(f"upstream connection failed: {exc.__class__.__name__}: {exc}")


class AiohttpUpstream:
    """One aiohttp session (connection pool) for every backend."""

    def __init__(
        self,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int = 1000,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        self._max_answer_bytes = max_answer_bytes
        import aiohttp

        self._errors: tuple[type[Exception], ...] = (TimeoutError, aiohttp.ClientError)
        self._send_errors = (*self._errors, OSError)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),  # one pool for every user: no upstream cookie rides along
        )

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, stream: bool
    ) -> UpstreamResponse:
        try:
            resp = await self._session.request(method, url, headers=headers, data=body, allow_redirects=False)
        except self._send_errors as exc:
            raise _as_upstream_error(exc) from exc
        return _AiohttpResponse(resp, self._errors, self._max_answer_bytes)

    async def aclose(self) -> None:
        await self._session.close()


# --- httpx ------------------------------------------------------------------------------------


def _httpx_error(exc: httpx.HTTPError) -> UpstreamError:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout("upstream timed out")
    return UpstreamError(f"upstream connection failed: {exc}")


class _HttpxResponse:
    __slots__ = ("_errors", "_max_bytes", "_resp", "headers", "status")

    def __init__(self, resp: httpx.Response, errors: type[httpx.HTTPError], max_bytes: int) -> None:
        self._resp = resp
        self._errors = errors
        self._max_bytes = max_bytes
        self.status = resp.status_code
        self.headers = resp.headers

    async def read(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in self._resp.aiter_bytes():
                size = _bounded(chunks, chunk, size, self._max_bytes)
            return b"".join(chunks)
        except self._errors as exc:
            raise _httpx_error(exc) from exc
        finally:
            await self._resp.aclose()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_bytes():
                yield chunk
        except self._errors as exc:
            raise _httpx_error(exc) from exc

    async def close(self) -> None:
        await self._resp.aclose()


class HttpxUpstream:
    def __init__(
        self,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int = 1000,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        self._max_answer_bytes = max_answer_bytes
        import httpx

        self._errors = httpx.HTTPError
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
        )
        # One pool for every user: cookies an upstream sets are not kept (nor sent on later requests).
        self._client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=()))

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, stream: bool
    ) -> UpstreamResponse:
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            resp = await self._client.send(request, stream=True)
        except self._errors as exc:
            raise _httpx_error(exc) from exc
        return _HttpxResponse(resp, self._errors, self._max_answer_bytes)

    async def aclose(self) -> None:
        await self._client.aclose()


# --- pyreqwest --------------------------------------------------------------------------------


class _PyreqwestResponse:
    """A response whose body is read in Rust; `close` drops the connection if the body was not read."""

    __slots__ = ("_errors", "_max_bytes", "_request", "_resp", "headers", "status")

    def __init__(self, resp: Any, request: Any | None, errors: type[Exception], max_bytes: int) -> None:
        self._resp = resp
        self._errors = errors
        self._max_bytes = max_bytes
        self._request = request  # the streamed request (its `__aexit__` closes), None when fully read
        self.status: int = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        """The whole answer. The bound is checked on its Content-Length before reading and on its
        size after: pyreqwest reads a chunked answer whole in Rust (h1, the default, stops at it)."""
        try:
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise AnswerTooLarge(self._max_bytes)
            body: bytes = (await self._resp.bytes()).to_bytes()
            if len(body) > self._max_bytes:
                raise AnswerTooLarge(self._max_bytes)
            return body
        except self._errors as exc:
            raise _pyreqwest_error(exc) from exc
        finally:
            await self.close()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        reader = self._resp.body_reader
        try:
            while (chunk := await reader.read_chunk()) is not None:
                yield chunk.to_bytes()
        except self._errors as exc:
            raise _pyreqwest_error(exc) from exc

    async def close(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            await request.__aexit__(None, None, None)


def _pyreqwest_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):  # connect, read, pool and write timeouts all derive from it
        return UpstreamTimeout("upstream timed out")
    return UpstreamError(f"upstream connection failed: {exc.__class__.__name__}: {exc}")


class PyreqwestUpstream:
    """Rust's reqwest (hyper) through pyreqwest: about half aiohttp's CPU per non-stream request.

    Not the default: cancelling a request while it waits for the response head (a client that
    went away from a non-stream request) does not close the upstream connection; the upstream
    keeps generating until it answers or `UPSTREAM_TIMEOUT_S` passes (pyreqwest 0.15 leaves its
    Rust task running). Streams are closed at once.
    """

    def __init__(
        self,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int = 1000,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        self._max_answer_bytes = max_answer_bytes
        from pyreqwest.client import ClientBuilder
        from pyreqwest.exceptions import PyreqwestError

        self._errors = PyreqwestError
        self._client = (
            ClientBuilder()
            .connect_timeout(timedelta(seconds=connect_timeout_s))
            .read_timeout(timedelta(seconds=read_timeout_s))
            .max_connections(max_connections)
            .follow_redirects(False)
            .gzip(True)
            .build()
        )

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, stream: bool
    ) -> UpstreamResponse:
        builder = self._client.request(method, url).headers(headers)
        if body is not None:
            builder = builder.body_bytes(body)
        try:
            if not stream:
                return _PyreqwestResponse(await builder.build().send(), None, self._errors, self._max_answer_bytes)
            # A read buffer of 0: return at the response head, not after the first 64 KiB of the stream.
            request = builder.streamed_read_buffer_limit(0).build_streamed()
            return _PyreqwestResponse(await request.__aenter__(), request, self._errors, self._max_answer_bytes)
        except self._errors as exc:
            raise _pyreqwest_error(exc) from exc

    async def aclose(self) -> None:
        await self._client.close()


def make_upstream_client(
    transport: str,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
) -> UpstreamClient:
    """The client `UPSTREAM_TRANSPORT` names; `max_answer_bytes` bounds an answer read whole."""
    if transport == "h1":
        from router.upstream_h1 import H1Upstream

        return H1Upstream(connect_timeout_s, read_timeout_s, max_answer_bytes=max_answer_bytes)
    if transport == "pyreqwest":
        return PyreqwestUpstream(connect_timeout_s, read_timeout_s, max_answer_bytes=max_answer_bytes)
    if transport == "httpx":
        return HttpxUpstream(connect_timeout_s, read_timeout_s, max_answer_bytes=max_answer_bytes)
    return AiohttpUpstream(connect_timeout_s, read_timeout_s, max_answer_bytes=max_answer_bytes)


# --- server-sent events -----------------------------------------------------------------------


DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEEventTooLarge(UpstreamError):
    """One stream event grew beyond the bound: the upstream is broken (or hostile)."""

    def __init__(self, limit: int) -> None:
        super().__init__("invalid", f"an upstream stream event is larger than {limit} bytes")


class SSESplitter:
    """Cuts a byte stream into whole SSE events (each ending with a blank line), in linear time.

    Each byte is scanned once: an unfinished event is kept as a list of pieces, not re-joined per
    chunk. CRLF line ends become LF (a CR at a chunk's end waits for the next chunk). An event
    larger than `max_event_bytes` raises SSEEventTooLarge.
    """

    __slots__ = ("_cr", "_max", "_parts", "_size")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._cr = False  # the previous chunk ended with CR
        self._max = max_event_bytes

    def _normalise(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" not in chunk:
            return chunk
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        return chunk.replace(b"\r\n", b"\n")

    def feed(self, chunk: bytes) -> list[bytes]:
        chunk = self._normalise(chunk)
        if not chunk:
            return []
        events: list[bytes] = []
        start = 0
        if self._parts:
            if self._parts[-1].endswith(b"\n") and chunk.startswith(b"\n"):
                start = 1  # the blank line straddles the boundary
            else:
                end = chunk.find(b"\n\n")
                if end < 0:
                    self._keep(chunk)
                    return events
                start = end + 2
            self._check(self._size + start)  # the event's last piece counts too
            events.append(b"".join(self._parts) + chunk[:start])
            self._parts, self._size = [], 0
        while True:
            end = chunk.find(b"\n\n", start)
            if end < 0:
                break
            self._check(end + 2 - start)
            events.append(chunk[start : end + 2])
            start = end + 2
        if start < len(chunk):
            self._keep(chunk[start:] if start else chunk)
        return events

    def _keep(self, piece: bytes) -> None:
        self._check(self._size + len(piece))
        self._size += len(piece)
        self._parts.append(piece)

    def _check(self, event_bytes: int) -> None:
        if event_bytes > self._max:
            self._parts, self._size = [], 0
            raise SSEEventTooLarge(self._max)

    def is_clean(self, chunk: bytes) -> bool:
        """True when `chunk` is whole events, none of them too large, and nothing is buffered: it can be
        passed on as it is. (A chunk longer than the largest event may hold one: it goes through `feed`.)"""
        return (
            not self._parts
            and not self._cr
            and len(chunk) <= self._max
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
        )

    def rest(self) -> bytes:
        """Whatever is left when the stream ends without a final blank line."""
        rest = b"".join(self._parts) + (b"\r" if self._cr else b"")
        self._parts, self._size, self._cr = [], 0, False
        return rest


def sse_event_around(chunk: bytes, start: int, at: int) -> tuple[int, int]:
    """Where the event holding byte `at` (not a line break) begins and ends in `chunk`, whole events
    (LF line ends, ending with a blank line) cut as `SSESplitter.feed` cuts them from `start` (where
    one begins), without cutting the events before it.

    A run of line breaks is cut in pairs from its start (each pair ends an event), so the event
    begins after the last pair: one byte earlier when the run is odd.
    """
    blank = chunk.rfind(b"\n\n", start, at)
    if blank < 0:
        begin = start
    else:
        run = blank
        while run > start and chunk[run - 1] == 10:  # the run of line breaks ending with this pair
            run -= 1
        begin = blank + 2 if (blank - run) % 2 == 0 else blank + 1
    return begin, chunk.find(b"\n\n", at) + 2


def sse_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (lines joined), or None if it has none."""
    if event.startswith(b"data:") and event.find(b"\n") == len(event) - 2 and event.endswith(b"\n\n"):
        return event[5:-2].lstrip(b" ")  # one `data:` line and the blank line (the common event)
    parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if not parts:
        return None
    return b"\n".join(parts)


def last_sse_event(relayed: bytes) -> bytes:
    """The last event of whole events as relayed (its lines, without the blank line that ends it)."""
    body = relayed.replace(b"\r\n", b"\n").rstrip(b"\n")
    cut = body.rfind(b"\n\n")
    return body if cut < 0 else body[cut + 2 :]


def sse_event_name(event: bytes) -> str | None:
    """The `event:` name of one event, or None if it has none."""
    if not event.startswith(b"event:") and b"\nevent:" not in event:
        return None
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip().decode(errors="replace")
    return None
