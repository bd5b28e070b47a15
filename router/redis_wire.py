"""A minimal pipelined Redis client (RESP2) for the limits' request path.

redis-py spends far more CPU per command than the limits' one script costs (its command packer,
connection pool, response parser and per-command coroutines). This client keeps one connection,
writes every command of one event-loop turn in one `write` (corked until the turn ends), and
reads replies with a small parser into futures (or callbacks) in order. It knows nothing about
commands: callers hand it encoded bytes (`encode`, or bytes they prebuilt).

A reply not received within `reply_timeout_s` closes the connection (every waiter then fails with
ConnectionError), so a Redis that hangs is noticed as one that went away.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

Reply = Any  # int | bytes | str | None | list[Reply] | ReplyError
Waiter = asyncio.Future[Reply] | Callable[[Reply], None] | None  # None: the reply is dropped


class ReplyError(Exception):
    """An error reply of Redis (`-ERR …`, `-NOSCRIPT …`); returned in place of a reply, or raised by `call`."""


class _Incomplete(Exception):
    pass


_INCOMPLETE = _Incomplete()


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def encode(*args: str | bytes | int | float) -> bytes:
    """One command as RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buf: bytes, pos: int) -> tuple[Reply, int]:
    """The reply starting at `pos` and where the next starts; _Incomplete when it has not all arrived."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _INCOMPLETE
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            raise _INCOMPLETE
        return buf[end + 2 : stop], stop + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 43:  # + status
        return buf[pos + 1 : end].decode(), end + 2
    if kind == 45:  # - error
        return ReplyError(buf[pos + 1 : end].decode(errors="replace")), end + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items: list[Reply] = []
        at = end + 2
        for _ in range(count):
            item, at = parse(buf, at)
            items.append(item)
        return items, at
    raise ValueError(f"not a RESP reply: {bytes(buf[pos : pos + 20])!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, connection: RedisWire) -> None:
        self.connection = connection

    def data_received(self, data: bytes) -> None:
        self.connection._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection._lost(self, exc)


class RedisWire:
    """One pipelined connection to the Redis of `url` (redis://, rediss:// or unix://), opened on first use."""

    def __init__(self, url: str, connect_timeout_s: float = 1.0, reply_timeout_s: float = 1.0) -> None:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        self.unix_path = parsed.path if parsed.scheme == "unix" else None
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.ssl = parsed.scheme == "rediss"
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        db = query.get("db", [""])[0] if self.unix_path else parsed.path.lstrip("/")
        self.db = int(db) if db else 0
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiters: deque[Waiter] = deque()
        self._out: list[bytes] = []
        self._out_waiters: list[Waiter] = []
        self._flush_scheduled = False
        self._buf = b""
        self._waiting_since = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.connected = False

    # --- connecting ---

    async def connect(self) -> None:
        """Open the connection (AUTH, SELECT) unless open; ConnectionError / TimeoutError if Redis is away."""
        if self.connected:
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.unix_path:
            opening = loop.create_unix_connection(lambda: _Protocol(self), self.unix_path)
        else:
            context = ssl.create_default_context() if self.ssl else None
            opening = loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=context)
        transport, protocol = await asyncio.wait_for(opening, self.connect_timeout_s)
        self._transport, self._protocol, self._buf = transport, protocol, b""
        self.connected = True
        self._watchdog = loop.call_later(self.reply_timeout_s / 4, self._check_replies)
        hello: list[bytes] = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            hello.append(encode("AUTH", *auth))
        if self.db:
            hello.append(encode("SELECT", self.db))
        for command in hello:
            reply = await self.call_raw(command)
            if isinstance(reply, ReplyError):
                self.close()
                raise ConnectionError(f"Redis refused the connection's setup: {reply}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(ConnectionError("connection closed"))

    # --- sending ---

    def send(self, command: bytes, waiter: Waiter = None) -> None:
        """Queue one encoded command to go out at the end of this event-loop turn; its reply goes to `waiter`.

        ConnectionError when not connected (await `connect` first).
        """
        if not self.connected:
            raise ConnectionError("not connected to Redis")
        self._out.append(command)
        self._out_waiters.append(waiter)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        waiters, self._out_waiters = self._out_waiters, []
        if not out:
            return
        if self._transport is None or not self.connected:
            for waiter in waiters:
                _resolve(waiter, ConnectionError("connection lost"))
            return
        if not self._waiters:
            self._waiting_since = time.monotonic()
        self._waiters.extend(waiters)
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def call_raw(self, command: bytes) -> Reply:
        """One encoded command's reply (an error reply is returned, not raised)."""
        await self.connect()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.send(command, future)
        return await future

    async def call(self, *args: str | bytes | int | float) -> Reply:
        """One command's reply; ReplyError raised."""
        reply = await self.call_raw(encode(*args))
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    # --- receiving ---

    def _received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos, size = 0, len(buf)
        waiters = self._waiters
        try:
            while pos < size:
                reply, pos = parse(buf, pos)
                waiter = waiters.popleft() if waiters else None
                if waiter is not None:
                    _resolve(waiter, reply)
        except _Incomplete:
            pass
        except ValueError as exc:
            self._buf = b""
            if self._transport is not None:
                self._transport.abort()
            self._fail(ConnectionError(str(exc)))
            return
        self._buf = buf[pos:] if pos < size else b""
        self._waiting_since = time.monotonic()

    def _check_replies(self) -> None:
        if not self.connected:
            return
        if self._waiters and time.monotonic() - self._waiting_since > self.reply_timeout_s:
            if self._transport is not None:
                self._transport.abort()
            self._fail(TimeoutError(f"no reply from Redis within {self.reply_timeout_s:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self.reply_timeout_s / 4, self._check_replies)

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._fail(ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.connected = False
        self._transport = self._protocol = None
        self._buf = b""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiters = list(self._waiters) + self._out_waiters
        self._waiters.clear()
        self._out, self._out_waiters = [], []
        for waiter in waiters:
            _resolve(waiter, exc)


def _resolve(waiter: Waiter, reply: Reply | BaseException) -> None:
    if waiter is None:
        return
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            if isinstance(reply, (ConnectionError, TimeoutError)):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)
    else:
        waiter(reply)
