"""Limits shared by two router processes through one Redis (and one PostgreSQL), the `quotaEvents`
subscription over real WebSockets (graphql-transport-ws) on both, and what happens when Redis goes
away: each process falls back to its own counters, /v1 keeps answering, and sharing resumes when
Redis is back.

The tests share one pair of router processes per module (`pair`), each with its own users; their
Redis is a private redis-server where there is one (so that the outage test may stop it), else
TEST_REDIS_URL's with a prefix of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import RouterProcess, require_redis, until, write_config
from tests.test_graphql_subscriptions import Subscriber
from tests.test_scale_out import RedisServer, new_pg_databases, wait_for_log
from tests.upstream import UpstreamServer

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(router: RouterProcess, key: str, **body) -> httpx.Response:
    return httpx.post(
        f"{router.v1}/chat/completions",
        json={"model": "test-model", "messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def limits_of(router: RouterProcess, kind: str, name: str, limits: dict) -> None:
    """setUserLimits / setBackendLimits by name (kind "user" or "backend")."""
    rows = router.gql_ok(f"{{ {kind}s {{ id name }} }}")[f"{kind}s"]
    ident = next(r["id"] for r in rows if r["name"] == name)
    field, arg = ("setUserLimits", "userId") if kind == "user" else ("setBackendLimits", "backendId")
    router.gql_ok(
        f"mutation($id: ID!, $l: LimitsInput!) {{ {field}({arg}: $id, limits: $l) {{ id }} }}",
        {"id": ident, "l": limits},
    )


class Pair(tuple[RouterProcess, RouterProcess]):
    """(A, B), A with config.yaml's backend alpha; their upstream, and their private Redis (or None)."""

    upstream: UpstreamServer
    redis_server: RedisServer | None


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:
    """Two router processes on the same PostgreSQL databases and Redis, for the whole module.

    Their upstream holds every stream after its first chunk until `upstream.release_streams()`
    (`hold_new_streams()` holds the next ones again): a test lets a stream end once it has seen
    what it needs (a slot taken, tokens reserved, a request queued), not after a fixed delay."""
    tmp = tmp_path_factory.mktemp("pair")
    shared_redis = require_redis()
    redis_server = RedisServer(tmp / "redis").start() if shutil.which("redis-server") else None
    upstream = UpstreamServer(name="alpha", models=["test-model"], stream_chunks=6, hold_streams=True).start()
    routers: list[RouterProcess] = []
    try:
        with new_pg_databases() as databases:
            env = {
                **databases,
                "REDIS_URL": redis_server.url if redis_server else shared_redis,
                "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
                "LOG_FLUSH_INTERVAL_S": "0.05",
                "BUDGET_SYNC_INTERVAL_S": "0.5",
            }
            config = write_config(tmp / "config.yaml", {"alpha": {"url": upstream.base_url}})
            try:
                routers.append(RouterProcess(tmp / "a", env, config).start())
                routers.append(RouterProcess(tmp / "b", env).start())
                pair = Pair(routers)
                pair.upstream, pair.redis_server = upstream, redis_server
                yield pair
            finally:
                for router in routers:
                    router.stop()
    finally:
        upstream.stop()
        if redis_server is not None:
            redis_server.stop()


def new_user(a: RouterProcess, b: RouterProcess, name: str, limits: dict) -> str:
    """A user with `limits`, known to both routers with its limits.

    Its key is made again after the limits are set: B accepting that key means B's catalog is at
    least as new as the limits (GraphQL's `limits` read the database, which may be ahead of it).
    """
    a.add_user(name)
    limits_of(a, "user", name, limits)
    user_id = next(u["id"] for u in a.gql_ok("{ users { id name } }")["users"] if u["name"] == name)
    key = a.gql_ok("mutation($id: ID!) { regenerateApiKey(id: $id) { apiKey } }", {"id": user_id})
    key = key["regenerateApiKey"]["apiKey"]
    b.wait_for_key(key)
    until(lambda: quota_limits(b, name) == limits, what="b did not see the limits")
    return key


def quota_limits(router: RouterProcess, name: str) -> dict:
    users = router.gql_ok("{ users { name limits { rpm tpm maxConcurrent budgetUsd } } }")["users"]
    limits = next(u["limits"] for u in users if u["name"] == name)
    return {k: v for k, v in limits.items() if v is not None}


def test_rpm_4_across_two_processes_admits_exactly_4(pair):
    a, b = pair
    key = new_user(a, b, "rita", {"rpm": 4})
    statuses = [chat(router, key).status_code for router in (a, b) * 5]
    assert Counter(statuses) == {200: 4, 429: 6}, statuses
    both = [r.gql_ok("{ users { name quota { requestsThisMinute } } }")["users"] for r in (a, b)]
    assert all(next(u for u in users if u["name"] == "rita")["quota"] == {"requestsThisMinute": 4} for users in both)


def test_concurrency_tpm_budget_and_backend_queue_across_processes(pair):
    a, b = pair
    upstream = pair.upstream
    # User concurrency: a stream held on A makes B refuse at once.
    key = new_user(a, b, "cora", {"maxConcurrent": 1})
    streams_before = len([r for r in upstream.received if isinstance(r.body, dict) and r.body.get("stream")])
    upstream.hold_new_streams()
    holding = threading.Thread(target=chat, args=(a, key), kwargs={"stream": True})
    holding.start()
    # Poll B only once A's stream holds the slot (a check on B could otherwise take it from A first).
    until(
        lambda: (
            len([r for r in upstream.received if isinstance(r.body, dict) and r.body.get("stream")]) > streams_before
        ),
        what="A's stream never reached the upstream",
    )
    until(lambda: chat(b, key).status_code == 429, what="B never saw A's slot")
    upstream.release_streams()
    holding.join()
    until(lambda: chat(b, key).status_code == 200, what="the slot was not freed")

    # TPM: a long stream's reservation on A leaves no room on B until it is settled.
    key = new_user(a, b, "tina", {"tpm": 300})
    upstream.hold_new_streams()
    holding = threading.Thread(target=chat, args=(a, key), kwargs={"stream": True, "max_tokens": 290})
    holding.start()
    until(lambda: chat(b, key, max_tokens=5).status_code == 429, what="B admitted past A's reservation")
    refused = chat(b, key, max_tokens=5)
    assert refused.json()["error"]["type"] in ("tokens", "requests") and refused.headers["retry-after"]
    upstream.release_streams()
    holding.join()
    until(lambda: chat(b, key, max_tokens=5).status_code == 200, what="the reservation was not settled")

    # Budget: spend on A, refused on B.
    a.gql_ok(
        'mutation { createModelPrice(input: {model: "test-*", inputPerMTok: 100000, outputPerMTok: 100000}) { id } }'
    )
    key = new_user(a, b, "bea", {"budgetUsd": 0.5})
    assert chat(a, key).status_code == 200
    until(lambda: chat(b, key).status_code == 429, what="B did not see A's spend")
    assert chat(b, key).json()["error"]["code"] == "insufficient_quota"

    # Backend maxConcurrent: B queues behind A's stream instead of failing.
    limits_of(a, "backend", "alpha", {"maxConcurrent": 1})
    try:
        # The limit first, then the user: B taking quinn's key shows that B's catalog (which its limiter reads,
        # unlike GraphQL's `limits`: the database) is at least as new as the limit.
        key = new_user(a, b, "quinn", {})
        until(
            lambda: b.gql_ok("{ backends { limits { maxConcurrent } } }")["backends"][0]["limits"]["maxConcurrent"] == 1
        )
        upstream.hold_new_streams()
        holding = threading.Thread(target=chat, args=(a, key), kwargs={"stream": True})
        holding.start()
        until(lambda: a.gql_ok("{ backends { quota { inFlight } } }")["backends"][0]["quota"]["inFlight"] == 1)
        answers: list[httpx.Response] = []
        queued = threading.Thread(target=lambda: answers.append(chat(b, key)))
        queued.start()
        queued.join(0.5)
        # B waits for A's slot while A's stream holds it...
        assert queued.is_alive() and not answers, [(r.status_code, r.text) for r in answers]
        upstream.release_streams()
        queued.join(30)
        holding.join()
        assert [r.status_code for r in answers] == [200]  # ...and is served once A's stream ends
    finally:
        upstream.release_streams()
        limits_of(a, "backend", "alpha", {})  # the module's other tests go on without a backend limit


# --- quotaEvents: a refusal on one process reaches the subscribers of both, filtered by user ---------


QUOTA_FIELDS = "kind subject subjectId subjectName userId backendId limit retryAfterS at suppressedBefore"


async def next_event(sub: Subscriber, timeout: float = 10.0) -> dict[str, Any]:
    message = await sub.message(timeout)
    assert message["type"] == "next" and not message["payload"].get("errors"), message
    return message["payload"]["data"]["quotaEvents"]


async def subscribe(router, args: str = "") -> Subscriber:
    sub = await Subscriber.connect(router)
    await sub.acknowledged()
    await sub.subscribe(f"subscription {{ quotaEvents{args} {{ {QUOTA_FIELDS} }} }}")
    return sub


async def refused_until_seen(router, key: str, sub: Subscriber) -> dict[str, Any]:
    """Requests refused until `sub` gets an event: once a second one passes the throttle (and a subscription
    just opened may not be registered yet when the first is sent)."""
    for _ in range(20):
        assert (await asyncio.to_thread(chat, router, key)).status_code == 429
        with contextlib.suppress(TimeoutError):
            return await next_event(sub, timeout=1.2)
    raise AssertionError("no quota event reached the subscriber")


async def test_quota_events_reach_subscribers_of_every_process(pair) -> None:
    a, b = pair
    key = new_user(a, b, "quincy", {"rpm": 1})
    other_key = new_user(a, b, "olive", {"rpm": 1})
    users = {u["name"]: u["id"] for u in a.gql_ok("{ users { id name } }")["users"]}
    on_a = await subscribe(a)
    on_b = await subscribe(b, f'(userId: "{users["quincy"]}")')
    only_olive = await subscribe(b, f'(userId: "{users["olive"]}")')
    try:
        assert (await asyncio.to_thread(chat, a, key)).status_code == 200
        seen_b = await refused_until_seen(a, key, on_b)
        assert (seen_b["kind"], seen_b["subject"], seen_b["subjectName"]) == ("RPM", "USER", "quincy")
        assert seen_b["subjectId"] == seen_b["userId"] == users["quincy"] and seen_b["backendId"] is not None
        assert seen_b["limit"] == 1 and 1 <= seen_b["retryAfterS"] <= 60
        seen_a = await next_event(on_a)
        assert seen_a["subjectName"] == "quincy" and seen_a["kind"] == "RPM"

        # A flood of 15 refusals: about one event a second, each counting the refusals left out before it.
        started = time.monotonic()
        statuses = await asyncio.gather(*(asyncio.to_thread(chat, a, key) for _ in range(15)))
        assert {r.status_code for r in statuses} == {429}
        events = counted = 0
        while counted < 15:
            later = await refused_until_seen(a, key, on_b)
            events, counted = events + 1, counted + 1 + later["suppressedBefore"]
        assert events <= time.monotonic() - started + 1, (events, counted)

        # The filtered subscriber got none of quincy's: its first event is olive's.
        assert (await asyncio.to_thread(chat, b, other_key)).status_code == 200
        olive = await refused_until_seen(b, other_key, only_olive)
        assert olive["subjectName"] == "olive"
    finally:
        for sub in (on_a, on_b, only_olive):
            await sub.close()
    refused = await Subscriber.connect(b, token="wrong-password")
    await refused.subscribe(f"subscription {{ quotaEvents {{ {QUOTA_FIELDS} }} }}")
    with pytest.raises(ConnectionClosed):
        await refused.message()


def test_redis_going_away_falls_back_to_per_process_counters(pair):
    a, b = pair
    redis_server = pair.redis_server
    if redis_server is None:
        pytest.skip("needs the redis-server program (apt-get install redis-server) to run a Redis that it stops")
    key = new_user(a, b, "olga", {"rpm": 3})
    assert [chat(r, key).status_code for r in (a, b, a, b)] == [200, 200, 200, 429]

    before = {router.port: len(router.log()) for router in (a, b)}
    redis_server.stop()
    try:
        # Every request is answered; each process now counts on its own (up to the full limit each).
        statuses = [chat(r, key).status_code for r in (a, b) * 4]
        assert set(statuses) <= {200, 429} and Counter(statuses)[200] >= 1
        for router in (a, b):
            wait_for_log(router, "Redis unavailable for limits", after=before[router.port])
        assert Counter(chat(r, key).status_code for r in (a, a, a, a)) == {429: 4}  # A's own minute is full

        mark = len(b.log())
    finally:
        redis_server.start()
    wait_for_log(b, "limits are shared across processes", after=mark)
    wait_for_log(a, "limits are shared across processes", after=before[a.port])
    # Shared again (each logged it as it switched back): a fresh Redis has no counts, so the two
    # processes together admit 3.
    statuses = [chat(r, key).status_code for r in (a, b) * 3]
    assert Counter(statuses) == {200: 3, 429: 3}, statuses


def test_workers_without_redis_say_counters_are_per_process(router_factory, upstream, tmp_path):
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config, start=False, process=True)
    # serve says it before its workers start: no need to wait for them
    router.start(extra_args=["--workers", "2"], logged="budget counters are per worker")
    assert "rate limits, concurrency limits and budget counters are per worker" in router.log()
