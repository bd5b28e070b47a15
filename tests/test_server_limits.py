"""Server-level limits (issue 15, items 2 and 4) with each server the router can run on: request
head size (431), clients that send heads or bodies too slowly, body limits on every route and
WebSocket message size. Each attack runs while another user's request is timed."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ADMIN_PASSWORD

SERVERS = ["granian", "uvicorn"]


def healthz_ms(router) -> float:
    started = time.perf_counter()
    assert httpx.get(f"{router.url}/healthz", timeout=30).status_code == 200
    return (time.perf_counter() - started) * 1000


def baseline_ms(router, n: int = 20) -> float:
    return statistics.median(healthz_ms(router) for _ in range(n))


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout` passes: AssertionError)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {timeout} s") from None
    return data


@pytest.mark.parametrize("server", SERVERS)
def test_a_huge_request_head_gets_431_and_does_not_hold_other_requests(router_factory, server):
    router = router_factory(env={"SERVER": server})
    baseline = baseline_ms(router)
    result: dict[str, object] = {}

    def attack() -> None:
        with socket.create_connection(("127.0.0.1", router.port)) as sock:
            sent = 0
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while sent < 64 * 1024 * 1024:
                    sock.sendall(b"a" * 65536)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            result["sent"] = sent
            result["answer"] = read_until_closed(sock, 10)

    thread = threading.Thread(target=attack)
    thread.start()
    during = [healthz_ms(router)]  # the attack may be refused before this answers: still one sample
    while thread.is_alive():
        during.append(healthz_ms(router))
    thread.join()
    assert result["answer"].startswith(b"HTTP/1.1 431"), result["answer"][:200]
    assert result["sent"] < 16 * 1024 * 1024  # refused early, not after reading 64 MB
    assert max(during) < 50 * baseline + 1000, (baseline, during)  # before the limit: ~5 s


@pytest.mark.parametrize("server", SERVERS)
def test_a_head_just_under_the_limit_is_served(router_factory, server):
    router = router_factory(env={"SERVER": server, "MAX_REQUEST_HEADER_KB": "16"})
    ok = httpx.get(f"{router.url}/healthz", headers={"X-Pad": "a" * 12_000}, timeout=10)
    assert ok.status_code == 200
    refused = httpx.get(f"{router.url}/healthz", headers={"X-Pad": "a" * 40_000}, timeout=10)
    assert refused.status_code == 431


@pytest.mark.parametrize("server", SERVERS)
def test_half_sent_requests_are_closed_within_the_client_timeouts(router_factory, server):
    router = router_factory(env={"SERVER": server, "CLIENT_HEADER_TIMEOUT_S": "1", "CLIENT_BODY_TIMEOUT_S": "1"})
    half_sent = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # head never finished
        b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model"',  # body
        b'POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"query"',
        b"",  # connected, nothing sent
    ]
    sockets = []
    for i in range(12):
        sock = socket.create_connection(("127.0.0.1", router.port))
        sock.sendall(half_sent[i % len(half_sent)])
        sockets.append(sock)
    started = time.monotonic()
    baseline = baseline_ms(router, 5)
    answers = []
    for sock in sockets:
        with sock:
            answers.append(read_until_closed(sock, 8))
    assert time.monotonic() - started < 8
    bodies = [a for a in answers if a]
    assert all(a.startswith(b"HTTP/1.1 408") for a in bodies), bodies  # bodies too slow: 408, then closed
    assert len(bodies) == 6
    assert healthz_ms(router) < 50 * baseline + 1000  # responsive: the half-sent requests hold no worker


@pytest.mark.parametrize("server", SERVERS)
def test_every_route_has_a_body_limit(router_factory, server):
    router = router_factory(env={"SERVER": server, "MAX_ADMIN_BODY_MB": "1", "MAX_REQUEST_BODY_MB": "2"})
    big = {"query": "{ __typename }", "variables": {"pad": "x" * 1_200_000}}
    response = httpx.post(f"{router.url}/graphql", json=big, timeout=30)  # no token needed to be refused
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b"x" * 100_000

    response = httpx.post(f"{router.url}/graphql", content=chunks(), timeout=30)
    assert response.status_code == 413
    response = httpx.post(f"{router.v1}/chat/completions", content=b"x" * 2_200_000, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    ok = httpx.post(
        f"{router.url}/graphql",
        json={"query": "{ __typename }"},
        headers={"Authorization": f"Bearer {ADMIN_PASSWORD}"},
        timeout=30,
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("server", SERVERS)
def test_websocket_messages_are_bounded(router_factory, server):
    router = router_factory(env={"SERVER": server, "MAX_ADMIN_BODY_MB": "1"})

    async def run() -> int | None:
        url = f"ws://127.0.0.1:{router.port}/graphql"
        async with connect(url, subprotocols=["graphql-transport-ws"], max_size=None) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"pad": "x" * 1_500_000}}))
            try:
                await asyncio.wait_for(ws.recv(), 10)
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return None

    assert asyncio.run(run()) == 1009
    assert healthz_ms(router) < 5000


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        ({"type": "http.request", "body": b"", "more_body": False}, b'{"a":1}'),  # granian's way
        ({"type": "http.request", "body": b"", "more_body": True}, b'{"a":1}'),  # the end after another message
        ({"type": "http.request", "body": b"23", "more_body": False}, b'{"a":1}23'),  # more than declared
        ({"type": "http.request", "body": b"x" * 100, "more_body": False}, 413),
        ({"type": "http.disconnect"}, None),
    ],
)
async def test_a_whole_first_body_is_read_with_what_follows_it(end, expected) -> None:
    """A first message with the whole declared body: what comes after it (the empty end, or anything
    else) is read as any body is; the app gets the body in one message, or is not called."""
    from router.server_limits import RequestLimits

    body = b'{"a":1}'
    messages = [{"type": "http.request", "body": body, "more_body": True}, end]
    if end.get("more_body"):
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    seen: list = []
    sent: list = []

    async def app(scope, receive, send) -> None:
        seen.append(await receive())

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/graphql", "headers": [(b"content-length", b"7")]}
    await RequestLimits(app, v1_body_bytes=50, other_body_bytes=50, body_timeout_s=5)(scope, receive, send)
    if expected == 413:
        assert not seen and sent[0]["status"] == 413
    elif expected is None:
        assert not seen and not sent
    else:
        assert seen == [{"type": "http.request", "body": expected, "more_body": False}] and not messages
