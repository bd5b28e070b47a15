"""`requestLogged` over a real WebSocket (the `websockets` client) against a running router:
auth at connection_init, filtering, both protocols, several subscribers, a stuck subscriber, and
what happens when a subscriber's bounded queue overflows (the oldest entries are dropped).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tests.conftest import ADMIN_PASSWORD, RouterProcess
from tests.test_graphql_api import CREATE_PERMISSION, CREATE_USER, GqlEnv, start_env, stop_env

QUEUE_SIZE = 4  # SUBSCRIBER_QUEUE_SIZE of this module's router
TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
LOG_FIELDS = "id requestId userId userName backendId backendName model endpoint statusCode totalTokens latencyMs"


@pytest.fixture(scope="module")
def genv(tmp_path_factory) -> Iterator[GqlEnv]:
    gql_env, databases = start_env(
        tmp_path_factory.mktemp("graphql-ws"),
        {
            "SUBSCRIBER_QUEUE_SIZE": str(QUEUE_SIZE),
            "LOG_FLUSH_INTERVAL_S": "0.005",
            # The stuck-subscriber tests fatten each message with 5,000 aliases: allow that here.
            "GRAPHQL_MAX_ALIASES": "10000",
            "GRAPHQL_MAX_TOKENS": "50000",
            "GRAPHQL_MAX_QUERY_KB": "256",
        },
        in_thread=True,
    )
    yield gql_env
    stop_env(gql_env, databases)


@pytest.fixture
def router(genv: GqlEnv) -> RouterProcess:
    return genv.router


# --- helpers ----------------------------------------------------------------------------------


async def agql(router: RouterProcess, query: str, variables: dict | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{router.url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {ADMIN_PASSWORD}"},
        )
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


async def new_user(router: RouterProcess, *backends: str) -> tuple[str, str]:
    """(user id, API key) of a new user allowed exactly the named backends."""
    data = await agql(router, CREATE_USER, {"i": {"name": f"ws-{uuid.uuid4().hex[:8]}"}})
    user_id, key = data["createUser"]["user"]["id"], data["createUser"]["apiKey"]
    ids = {b["name"]: b["id"] for b in (await agql(router, "{ backends { id name } }"))["backends"]}
    for name in backends:
        await agql(router, CREATE_PERMISSION, {"u": user_id, "b": ids[name]})
    return user_id, key


class V1:
    """/v1 clients (the openai SDK), one per API key, closed after the test."""

    def __init__(self, router: RouterProcess) -> None:
        self.router = router
        self.clients: dict[str, openai.AsyncOpenAI] = {}

    async def chat(self, key: str, model: str = "test-model") -> str:
        """One chat completion; returns the request id the router logged it under."""
        if key not in self.clients:
            self.clients[key] = openai.AsyncOpenAI(base_url=self.router.v1, api_key=key, max_retries=0, timeout=30)
        raw = await self.clients[key].chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        return raw.headers["x-request-id"]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


@pytest.fixture
async def v1(router) -> AsyncIterator[V1]:
    clients = V1(router)
    yield clients
    await clients.close()


async def subscribers(router: RouterProcess) -> int:
    return (await agql(router, "{ liveSubscribers }"))["liveSubscribers"]


async def wait_subscribers(router: RouterProcess, count: int, timeout: float = 10.0) -> None:
    """Until the router has registered `count` requestLogged subscriptions on its bus."""
    deadline = time.monotonic() + timeout
    while (current := await subscribers(router)) != count:
        assert time.monotonic() < deadline, f"{current} subscribers, expected {count}"
        await asyncio.sleep(0.02)


class Subscriber:
    """A GraphQL-over-WebSocket client speaking graphql-transport-ws or the legacy graphql-ws."""

    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol

    @classmethod
    async def connect(
        cls, router: RouterProcess, token: str | None = ADMIN_PASSWORD, protocol: str = TRANSPORT_WS, **kwargs: Any
    ) -> Subscriber:
        ws = await connect(f"ws://127.0.0.1:{router.port}/graphql", subprotocols=[protocol], **kwargs)
        assert ws.subprotocol == protocol
        payload = {"Authorization": f"Bearer {token}"} if token else {}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        return cls(ws, protocol)

    async def acknowledged(self) -> None:
        message = await self.message()
        assert message["type"] == "connection_ack", message

    async def subscribe(self, query: str, variables: dict | None = None, op_id: str = "1") -> None:
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": variables or {}}
        await self.ws.send(json.dumps({"id": op_id, "type": kind, "payload": payload}))

    async def message(self, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if message["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
            elif message["type"] not in ("pong", "ka"):
                return message

    async def next_log(self, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.message(timeout)
        assert message["type"] in ("next", "data"), message
        assert not message["payload"].get("errors"), message
        return message["payload"]["data"]["requestLogged"]

    async def close(self) -> None:
        await self.ws.close()


async def open_subscription(
    router: RouterProcess, args: str = "", fields: str = LOG_FIELDS, protocol: str = TRANSPORT_WS, **kwargs: Any
) -> Subscriber:
    before = await subscribers(router)
    sub = await Subscriber.connect(router, protocol=protocol, **kwargs)
    await sub.acknowledged()
    await sub.subscribe(f"subscription {{ requestLogged{args} {{ {fields} }} }}")
    await wait_subscribers(router, before + 1)
    return sub


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-password", "123.forged"])
async def test_websocket_without_valid_token_is_closed(router, token):
    sub = await Subscriber.connect(router, token=token)
    with pytest.raises(ConnectionClosed) as closed:
        await sub.message()
    assert closed.value.rcvd.code == 4403
    assert await subscribers(router) == 0


async def test_legacy_protocol_without_valid_token_gets_connection_error(router):
    sub = await Subscriber.connect(router, token="wrong-password", protocol=LEGACY_WS)
    message = await sub.message()
    assert message["type"] == "connection_error"
    assert message["payload"]["code"] == "UNAUTHENTICATED"
    with pytest.raises(ConnectionClosed):
        await sub.message()


async def test_session_token_from_login_works_over_websocket(router):
    login = await agql(router, "mutation($p: String!) { login(password: $p) { token } }", {"p": ADMIN_PASSWORD})
    sub = await Subscriber.connect(router, token=login["login"]["token"])
    await sub.acknowledged()
    # Queries and mutations work over the socket too.
    await sub.subscribe("{ liveSubscribers }")
    message = await sub.message()
    assert message["type"] == "next" and message["payload"]["data"] == {"liveSubscribers": 0}
    await sub.close()


# --- delivery ---------------------------------------------------------------------------------


async def test_subscription_receives_only_the_filtered_requests(router, v1):
    alice, alice_key = await new_user(router, "alpha", "beta")
    _bob, bob_key = await new_user(router, "alpha", "beta")
    by_user = await open_subscription(router, f'(userId: "{alice}")')
    by_backend = await open_subscription(router, '(backendId: "%s")' % await _backend_id(router, "beta"))
    try:
        await v1.chat(bob_key)  # neither alice's nor beta's
        request_id = await v1.chat(alice_key)
        log = await by_user.next_log()
        assert log["requestId"] == request_id  # bob's, logged earlier, was filtered out
        assert (log["userId"], log["backendName"], log["model"], log["statusCode"]) == (
            alice,
            "alpha",
            "test-model",
            200,
        )
        assert log["endpoint"] == "/v1/chat/completions" and log["totalTokens"] > 0 and log["latencyMs"] > 0
        beta_request = await v1.chat(bob_key, "beta-model")
        assert (await by_backend.next_log())["requestId"] == beta_request
    finally:
        await by_user.close()
        await by_backend.close()
    await wait_subscribers(router, 0)  # the subscriptions' queues left the bus with their clients


async def _backend_id(router: RouterProcess, name: str) -> str:
    return next(b["id"] for b in (await agql(router, "{ backends { id name } }"))["backends"] if b["name"] == name)


async def test_legacy_graphql_ws_protocol(router, v1):
    user, key = await new_user(router, "alpha")
    sub = await open_subscription(router, f'(userId: "{user}")', protocol=LEGACY_WS)
    try:
        request_id = await v1.chat(key)
        assert (await sub.next_log())["requestId"] == request_id
    finally:
        await sub.close()


async def test_two_concurrent_subscribers_each_get_every_request(router, v1):
    user, key = await new_user(router, "alpha")
    first = await open_subscription(router, f'(userId: "{user}")')
    second = await open_subscription(router, f'(userId: "{user}")', fields="id requestId model")
    try:
        request_ids = [await v1.chat(key) for _ in range(3)]
        got_first = [(await first.next_log())["requestId"] for _ in request_ids]
        got_second = [(await second.next_log())["requestId"] for _ in request_ids]
        assert got_first == got_second == request_ids
    finally:
        await first.close()
        await second.close()


class StuckClient:
    """A graphql-transport-ws client on a plain socket that takes nothing off it unless told to.

    (An asyncio client keeps reading into its own buffers; this one leaves the data in the kernel,
    whose small receive buffer soon makes the router's sends wait, like a frozen browser tab.)
    """

    def __init__(self, router: RouterProcess) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", router.port))
        uri = parse_uri(f"ws://127.0.0.1:{router.port}/graphql")
        self.protocol = ClientProtocol(uri, subprotocols=[Subprotocol(TRANSPORT_WS)], max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.messages: list[dict[str, Any]] = []
        while self.protocol.state is not State.OPEN:
            self._receive()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the router")
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.messages.append(json.loads(event.data))
        self._flush()  # pongs

    def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self._flush()

    def read(self) -> dict[str, Any]:
        """The next message (blocking: call it in a thread)."""
        while not self.messages:
            self._receive()
        return self.messages.pop(0)

    def close(self) -> None:
        self.sock.close()

    @classmethod
    async def subscribe(cls, router: RouterProcess, query: str) -> StuckClient:
        before = await subscribers(router)
        client = await asyncio.to_thread(cls, router)
        client.send({"type": "connection_init", "payload": {"Authorization": f"Bearer {ADMIN_PASSWORD}"}})
        assert (await asyncio.to_thread(client.read))["type"] == "connection_ack"
        client.send({"id": "1", "type": "subscribe", "payload": {"query": query}})
        await wait_subscribers(router, before + 1)
        return client


async def test_stuck_subscriber_delays_neither_v1_nor_other_subscribers(router, v1):
    user, key = await new_user(router, "alpha")
    # Subscribes to everything, then never reads; its messages are made large (aliases) so that
    # it stops the router's sends to it after a few requests.
    fat = " ".join(f"f{i}: endpoint" for i in range(5000))
    stuck = await StuckClient.subscribe(router, f"subscription {{ requestLogged {{ requestId {fat} }} }}")
    healthy = await open_subscription(router, f'(userId: "{user}")')
    try:
        latencies, request_ids = [], []
        for _ in range(5 * QUEUE_SIZE):
            started = time.perf_counter()
            request_ids.append(await v1.chat(key))
            latencies.append(time.perf_counter() - started)
            assert (await healthy.next_log())["requestId"] == request_ids[-1]  # each one, at once
        assert max(latencies) < 2.0, latencies
    finally:
        await healthy.close()
        stuck.close()


def _requests_to_overflow(message_size: int) -> int:
    """Enough messages to fill the router's socket send buffer (at most tcp_wmem's max) and the queue."""
    try:
        send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        send_buffer_max = 4 << 20
    return max(10 * QUEUE_SIZE, send_buffer_max // message_size + 4 * QUEUE_SIZE)


async def test_overflowing_subscriber_loses_the_oldest_entries(router, v1):
    """A client too slow for its queue misses older logs, never the newest (see subscriptions.py).

    When the client stops reading, the router's sends to it wait, its bounded queue on the bus
    (SUBSCRIBER_QUEUE_SIZE) fills, and the bus drops the oldest queued entries; /v1 and the other
    subscriber carry on. When the client reads again it gets what was sent before it stalled, a
    gap, then the newest entries, in order.
    """
    user, key = await new_user(router, "alpha")
    fat = " ".join(f"f{i}: endpoint" for i in range(5000))  # ~150 KB per message
    slow = await StuckClient.subscribe(
        router, f'subscription {{ requestLogged(userId: "{user}") {{ requestId {fat} }} }}'
    )
    healthy = await open_subscription(router, f'(userId: "{user}")', fields="requestId")
    try:
        sent = []
        for _ in range(_requests_to_overflow(message_size=150_000)):
            started = time.perf_counter()
            sent.append(await v1.chat(key))
            assert time.perf_counter() - started < 2.0
            assert (await healthy.next_log())["requestId"] == sent[-1]
        got: list[str] = []
        while not got or got[-1] != sent[-1]:
            message = await asyncio.to_thread(slow.read)
            assert message["type"] == "next", message
            got.append(message["payload"]["data"]["requestLogged"]["requestId"])
        assert len(got) < len(sent), "nothing was dropped"
        assert got == [r for r in sent if r in got]  # in order, the newest included
        assert got[-QUEUE_SIZE:] == sent[-QUEUE_SIZE:]  # the queue kept the newest entries
        assert got[0] == sent[0]
    finally:
        await healthy.close()
        slow.close()
