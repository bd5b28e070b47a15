"""The h1 transport (router/upstream_h1.py) on the wire: what its pool reuses and what it never does.

What every transport must do (timeouts, connect errors, cancellation, cookies) is in test_upstream.py;
this module covers the client's own framing and pool against a raw asyncio server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import ssl
import zlib
from pathlib import Path

import pytest

from router.upstream import AnswerTooLarge, UpstreamError, UpstreamResponse
from router.upstream_h1 import MAX_HEAD_BYTES, MAX_HEADERS, H1Upstream
from tests.gc_probe import left_for_the_gc
from tests.test_upstream import RawServer, client, read_head

OK_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Counting(RawServer):
    """A RawServer that counts connections and keeps every request head it read."""

    def __init__(self, answer: bytes = OK_JSON, requests_per_connection: int = 100) -> None:
        self.connections = 0
        self.heads: list[bytes] = []
        self.answer = answer
        self.serving = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.serving += 1
            try:
                for _ in range(requests_per_connection):
                    self.heads.append(await read_head(reader))
                    writer.write(self.answer)
                    await writer.drain()
                writer.close()  # this many requests, then the backend closes the connection
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                self.serving -= 1

        super().__init__(handler)

    async def __aexit__(self, *exc: object) -> None:
        for _ in range(500):  # the client closed its connections: let their handlers see it and end
            if not self.serving:
                break
            await asyncio.sleep(0.01)
        await super().__aexit__(*exc)


async def test_a_connection_is_reused_once_its_answer_was_read() -> None:
    async with Counting() as server, client("h1") as upstream:
        for _ in range(3):
            response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
            assert await response.read() == b"{}"
    assert server.connections == 1 and len(server.heads) == 3


def _h1_object(obj: object) -> str | None:
    return type(obj).__name__ if type(obj).__module__ == "router.upstream_h1" else None


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_an_answer_read_whole_leaves_no_cycle_for_the_gc(stream: bool) -> None:
    """An exchange and its parser (which holds the exchange's callbacks) are freed by reference
    counting once the answer is whole: a cycle per request made the GC pause the loop for ms."""
    sse = b"data: one\n\ndata: [DONE]\n\n"
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(sse), sse)
        if stream
        else OK_JSON
    )
    async with Counting(answer) as server, client("h1") as upstream:
        with left_for_the_gc(_h1_object) as cyclic:
            for _ in range(20):
                response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", stream)
                if stream:
                    assert b"".join([chunk async for chunk in response.iter_chunks()]) == sse
                else:
                    assert await response.read() == b"{}"
    assert cyclic == []
    assert server.connections == 1


@pytest.mark.parametrize(
    "ending", ["stream closed half-read", "cancelled before the head", "refused head", "stream broken mid-way"]
)
async def test_an_exchange_ended_early_leaves_no_cycle_for_the_gc(ending: str) -> None:
    sse = b"data: one\n\n"
    answers = {
        "stream closed half-read": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(sse), sse),
        "cancelled before the head": b"",  # never answers
        "refused head": b"HTTP/1.1 200 OK\r\nx: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n",
        "stream broken mid-way": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\nzz\r\n" % (len(sse), sse),  # not a chunk size
    }
    async with Counting(answers[ending]) as server, client("h1") as upstream:
        with left_for_the_gc(_h1_object) as cyclic:
            for _ in range(5):
                if ending == "stream closed half-read":
                    response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", True)
                    assert await anext(response.iter_chunks()) == sse
                    await response.close()
                elif ending == "stream broken mid-way":
                    response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", True)
                    with pytest.raises(UpstreamError, match="invalid HTTP answer"):
                        [chunk async for chunk in response.iter_chunks()]
                elif ending == "cancelled before the head":
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(upstream.send("POST", server.url + "/v1/x", {}, b"{}", False), 0.05)
                else:
                    with pytest.raises(UpstreamError):
                        await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
            await asyncio.sleep(0.05)  # the closed connections' last callbacks
    assert cyclic == []


async def test_a_stream_closed_half_read_is_not_reused() -> None:
    sse = b"data: one\n\n"
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(sse), sse)
    )  # and no end: the stream goes on
    async with Counting(answer) as server, client("h1") as upstream:
        for _ in range(2):
            response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", True)
            chunks = response.iter_chunks()
            assert await anext(chunks) == sse
            await response.close()
    assert server.connections == 2


async def test_the_request_on_the_wire() -> None:
    async with Counting() as server, client("h1") as upstream:
        response = await upstream.send(
            "POST", server.url + "/v1/chat/completions?a=1", {"X-Request-ID": "r1"}, b'{"x":1}', False
        )
        await response.read()
        response = await upstream.send("GET", server.url + "/v1/models", {"Accept-Encoding": "identity"}, None, False)
        await response.read()
        port = server.url.rsplit(":", 1)[1]
    post, get = (head.split(b"\r\n") for head in server.heads)
    assert post[0] == b"POST /v1/chat/completions?a=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}".encode() in post
    assert b"Content-Length: 7" in post and b"X-Request-ID: r1" in post
    assert b"Accept-Encoding: gzip, deflate" in post
    assert get[0] == b"GET /v1/models HTTP/1.1"
    assert not any(line.lower().startswith(b"content-length") for line in get)
    assert [line for line in get if line.lower().startswith(b"accept-encoding")] == [b"Accept-Encoding: identity"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_answers_are_decompressed(encoding: str) -> None:
    body = b'{"choices": []}' * 200
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    answer = b"HTTP/1.1 200 OK\r\ncontent-encoding: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        encoding.encode(),
        len(packed),
        packed,
    )
    async with Counting(answer) as server, client("h1") as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert await response.read() == body


@pytest.mark.parametrize("stream", [False, True])
async def test_a_compressed_answer_stops_expanding_at_the_bound(stream: bool) -> None:
    """A 'gzip bomb' (64 MiB of zeros in ~64 KiB): decompressed in steps, refused past the bound."""
    packed = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
    answer = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(packed), packed)
    async with Counting(answer) as server, client("h1", max_answer_bytes=2 * 1024 * 1024) as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", stream)
        with pytest.raises(AnswerTooLarge):
            if stream:  # a stream's bound is on what it has buffered unread: read nothing
                await asyncio.wait_for(upstream_bytes_unread(response), 10)
            else:
                await response.read()


async def upstream_bytes_unread(response: UpstreamResponse) -> None:
    chunks = response.iter_chunks()
    await anext(chunks)  # the first piece came before the bound was passed; the next read fails
    await asyncio.sleep(0)
    async for _ in chunks:
        pass


async def test_an_answer_that_ends_with_the_connection_is_read_whole() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"a":')
        await writer.drain()
        writer.write(b" 1}")
        writer.close()

    async with RawServer(until_close) as server, client("h1") as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert await response.read() == b'{"a": 1}'


async def test_a_body_cut_short_is_an_error_not_a_short_answer() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}")
        writer.close()

    async with RawServer(cut) as server, client("h1") as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        with pytest.raises(UpstreamError, match="mid-answer"):
            await response.read()


async def test_an_interim_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK_JSON
    async with Counting(answer) as server, client("h1") as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert response.status == 200 and "link" not in response.headers
        assert await response.read() == b"{}"


async def test_a_huge_answer_head_is_refused() -> None:
    header = b"x-filler: " + b"a" * 8000 + b"\r\n"
    answer = b"HTTP/1.1 200 OK\r\n" + header * (MAX_HEAD_BYTES // len(header) + 2) + b"content-length: 2\r\n\r\n{}"
    async with Counting(answer) as server, client("h1") as upstream:
        with pytest.raises(UpstreamError, match="head is too large"):
            await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)


async def test_one_endless_header_is_refused_at_the_head_bound() -> None:
    """llhttp hands a header over only once it is whole: the bytes it holds count as they arrive."""
    answer = b"HTTP/1.1 200 OK\r\nx-endless: " + b"a" * (4 * MAX_HEAD_BYTES)
    async with Counting(answer) as server, client("h1") as upstream:
        with pytest.raises(UpstreamError, match="head is too large"):
            await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)


async def test_an_answer_has_at_most_max_headers_headers() -> None:
    def answer(count: int) -> bytes:
        fillers = b"".join(b"x-h%d: %d\r\n" % (i, i) for i in range(count - 1))
        return b"HTTP/1.1 200 OK\r\n" + fillers + b"content-length: 2\r\n\r\n{}"

    async with Counting(answer(MAX_HEADERS)) as server, client("h1") as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert len(response.headers) == MAX_HEADERS and await response.read() == b"{}"
    async with Counting(answer(MAX_HEADERS + 1)) as server, client("h1") as upstream:
        with pytest.raises(UpstreamError, match="head is too large"):
            await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)


async def test_answer_headers_keep_their_order_case_and_repeats() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Dup: 1\r\nSet-Thing:  a b \r\nx-dup: 2\r\nX-Latin: \xe9\r\n"
    answer = head + b"content-length: 2\r\n\r\n{}"
    async with Counting(answer) as server, client("h1") as upstream:
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert list(response.headers.items()) == [
            ("X-Dup", "1"),
            ("Set-Thing", "a b "),  # llhttp trims the leading whitespace only
            ("x-dup", "2"),
            ("X-Latin", "\xe9"),
            ("content-length", "2"),
        ]
        assert response.headers["x-DUP"] == "1" and response.headers.get("set-thing") == "a b "
        assert await response.read() == b"{}"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "a\r\nX-Injected: 1"},
        {"X-A": "a\nX-Injected: 1"},
        {"X-A": "a\rb"},
        {"X-A": "a\x00b"},
        {"X-Ok": "1", "X-B\r\nX-Injected": "1", "X-Ok-Too": "2"},
        {"X-Ok": "1", "X-B\n": "1"},
    ],
)
async def test_a_header_with_a_line_break_is_never_sent(headers: dict[str, str]) -> None:
    async with Counting() as server, client("h1") as upstream:
        with pytest.raises(UpstreamError, match="line break"):
            await upstream.send("POST", server.url + "/v1/x", headers, b"{}", False)
    assert server.heads == []


async def test_connections_are_bounded_and_a_request_waits_for_a_free_one() -> None:
    release, two_waiting = asyncio.Event(), asyncio.Event()
    connected = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connected
        connected += 1
        await read_head(reader)
        if connected == 2:
            two_waiting.set()
        await release.wait()
        writer.write(OK_JSON)
        await writer.drain()
        while True:  # keep serving this connection
            try:
                await read_head(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(OK_JSON)
            await writer.drain()

    async with RawServer(slow) as server:
        upstream = H1Upstream(1.0, 5.0, max_connections=2)
        try:

            async def one() -> bytes:
                response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
                return await response.read()

            tasks = [asyncio.create_task(one()) for _ in range(3)]
            await asyncio.wait_for(two_waiting.wait(), 5)
            while not upstream._slot_waiters:  # the third request queues for a slot, it does not connect
                await asyncio.sleep(0)
            assert connected == 2
            release.set()
            assert await asyncio.gather(*tasks) == [b"{}"] * 3
            assert connected == 2
        finally:
            await upstream.aclose()


async def test_a_pooled_connection_the_backend_closed_is_not_used() -> None:
    async with Counting(requests_per_connection=1) as server, client("h1") as upstream:  # answers once, then closes
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert await response.read() == b"{}"
        idle = next(iter(upstream._idle.values()))[0]
        for _ in range(200):  # the backend's close reaches the pooled connection
            if idle.closed:
                break
            await asyncio.sleep(0.01)
        response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
        assert await response.read() == b"{}"
    assert server.connections == 2


async def test_url_credentials_are_sent_as_basic_unless_a_key_is() -> None:
    async with Counting() as server, client("h1") as upstream:
        url = server.url.replace("http://", "http://us%40er:p%3Aw@") + "/v1/x"
        for headers in ({}, {"Authorization": "Bearer backend-key"}):
            response = await upstream.send("POST", url, headers, b"{}", False)
            await response.read()
    basic, keyed = (
        [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization")] for head in server.heads
    )
    assert basic == [b"Authorization: Basic " + base64.b64encode(b"us@er:p:w")]
    assert keyed == [b"Authorization: Bearer backend-key"]


# --- TLS (the hosted APIs) --------------------------------------------------------------------------


def self_signed(tmp_path: Path, host: str) -> tuple[Path, Path]:
    """A certificate for `host` and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.mark.parametrize("name_in_url, verified", [("localhost", True), ("127.0.0.1", False)])
async def test_https_verifies_the_backend_certificate_and_its_name(tmp_path: Path, name_in_url: str, verified: bool):
    cert_file, key_file = self_signed(tmp_path, "localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            heads.append(await read_head(reader))
            writer.write(OK_JSON)
            await writer.drain()
            await reader.read()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    upstream = H1Upstream(2.0, 5.0)
    upstream._ssl = ssl.create_default_context(cafile=str(cert_file))  # trust this test's certificate only
    try:
        url = f"https://{name_in_url}:{port}/v1/x"
        if verified:
            response = await upstream.send("POST", url, {}, b"{}", False)
            assert (response.status, await response.read()) == (200, b"{}")
            assert f"Host: localhost:{port}".encode() in heads[0]
        else:  # the certificate does not name 127.0.0.1: refused before any byte of the request is sent
            with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
                await upstream.send("POST", url, {}, b"{}", False)
            assert heads == []
    finally:
        await upstream.aclose()
        server.close()


async def test_a_cancel_at_any_point_keeps_the_open_connection_count_true() -> None:
    """Whether a request is cancelled while connecting, sending or reading, the pool's count of open
    connections (what bounds them) ends equal to the connections really open."""
    async with Counting() as server, client("h1") as upstream:
        assert isinstance(upstream, H1Upstream)

        async def one() -> None:
            response = await upstream.send("POST", server.url + "/v1/x", {}, b"{}", False)
            await response.read()

        for turns in range(60):
            task = asyncio.create_task(one())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for _ in range(5):  # closed transports report connection_lost on a later turn
                await asyncio.sleep(0)
            really_open = sum(1 for conns in upstream._idle.values() for conn in conns if not conn.closed)
            assert upstream._open == really_open, f"cancelled after {turns} turns"
