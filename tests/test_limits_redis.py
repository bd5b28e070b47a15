"""Limits shared by two router processes through one Redis (and one PostgreSQL), and what happens when
Redis goes away: each process falls back to its own counters, /v1 keeps answering, and sharing
resumes when Redis is back.

The tests share one pair of router processes per module (`pair`), each with its own users; their
Redis is a private redis-server where there is one (so that the outage test may stop it), else
TEST_REDIS_URL's with a prefix of their own.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RouterProcess, require_redis, until, write_config
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
    key = a.add_user(name)
    limits_of(a, "user", name, limits)
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
    key = new_user(a, b, "quinn", {})
    limits_of(a, "backend", "alpha", {"maxConcurrent": 1})
    try:
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
        assert queued.is_alive() and not answers  # B waits for A's slot while A's stream holds it...
        upstream.release_streams()
        queued.join(30)
        holding.join()
        assert [r.status_code for r in answers] == [200]  # ...and is served once A's stream ends
    finally:
        upstream.release_streams()
        limits_of(a, "backend", "alpha", {})  # the module's other tests go on without a backend limit


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
