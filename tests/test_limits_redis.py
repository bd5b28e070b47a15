"""Limits shared by two router processes through one Redis (and one PostgreSQL), and what happens when
Redis goes away: each process falls back to its own counters, /v1 keeps answering, and sharing
resumes when Redis is back."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import httpx
import pytest

from tests.conftest import RouterProcess, require_redis, until, write_config
from tests.test_scale_out import RedisServer, pg_databases, wait_for_log  # noqa: F401 - pg_databases is a fixture

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


def start_pair(tmp_path, upstream, env: dict[str, str]) -> tuple[RouterProcess, RouterProcess]:
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    a = RouterProcess(tmp_path / "a", env, config).start()
    b = RouterProcess(tmp_path / "b", env).start()
    return a, b


@pytest.fixture
def pair(tmp_path, upstream_factory, pg_databases):  # noqa: F811 - the fixture imported above
    upstream = upstream_factory(name="alpha", models=["test-model"], stream_delay_s=0.3, stream_chunks=6)
    env = {
        **pg_databases,
        "REDIS_URL": require_redis(),
        "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
        "LOG_FLUSH_INTERVAL_S": "0.05",
        "BUDGET_SYNC_INTERVAL_S": "0.5",
    }
    a, b = start_pair(tmp_path, upstream, env)
    a.upstream = upstream  # tests wait on what it received
    yield a, b
    for router in (a, b):
        router.stop()


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
    # User concurrency: a stream held on A makes B refuse at once.
    key = new_user(a, b, "cora", {"maxConcurrent": 1})
    streams_before = len([r for r in a.upstream.received if isinstance(r.body, dict) and r.body.get("stream")])
    holding = threading.Thread(target=chat, args=(a, key), kwargs={"stream": True})
    holding.start()
    # Poll B only once A's stream holds the slot (a check on B could otherwise take it from A first).
    until(
        lambda: (
            len([r for r in a.upstream.received if isinstance(r.body, dict) and r.body.get("stream")]) > streams_before
        ),
        what="A's stream never reached the upstream",
    )
    until(lambda: chat(b, key).status_code == 429, what="B never saw A's slot")
    holding.join()
    until(lambda: chat(b, key).status_code == 200, what="the slot was not freed")

    # TPM: a long stream's reservation on A leaves no room on B until it is settled.
    key = new_user(a, b, "tina", {"tpm": 300})
    holding = threading.Thread(target=chat, args=(a, key), kwargs={"stream": True, "max_tokens": 290})
    holding.start()
    until(lambda: chat(b, key, max_tokens=5).status_code == 429, what="B admitted past A's reservation")
    refused = chat(b, key, max_tokens=5)
    assert refused.json()["error"]["type"] in ("tokens", "requests") and refused.headers["retry-after"]
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
    until(lambda: b.gql_ok("{ backends { limits { maxConcurrent } } }")["backends"][0]["limits"]["maxConcurrent"] == 1)
    holding = threading.Thread(target=chat, args=(a, key), kwargs={"stream": True})
    holding.start()
    until(lambda: a.gql_ok("{ backends { quota { inFlight } } }")["backends"][0]["quota"]["inFlight"] == 1)
    started = time.monotonic()
    queued = chat(b, key)
    waited = time.monotonic() - started
    holding.join()
    assert queued.status_code == 200 and waited > 0.5  # it waited for A's slot (a stream of ~1.8 s)


def test_redis_going_away_falls_back_to_per_process_counters(tmp_path, upstream, pg_databases):  # noqa: F811
    redis_server = RedisServer(tmp_path / "redis").start()
    env = {**pg_databases, "REDIS_URL": redis_server.url, "REDIS_PREFIX": "limits-outage"}
    a, b = start_pair(tmp_path, upstream, env)
    try:
        key = new_user(a, b, "olga", {"rpm": 3})
        assert [chat(r, key).status_code for r in (a, b, a, b)] == [200, 200, 200, 429]

        redis_server.stop()
        # Every request is answered; each process now counts on its own (up to the full limit each).
        statuses = [chat(r, key).status_code for r in (a, b) * 4]
        assert set(statuses) <= {200, 429} and Counter(statuses)[200] >= 1
        for router in (a, b):
            wait_for_log(router, "Redis unavailable for limits")
        assert Counter(chat(r, key).status_code for r in (a, a, a, a)) == {429: 4}  # A's own minute is full

        mark = len(b.log())
        redis_server.start()
        wait_for_log(b, "limits are shared across processes", after=mark)
        wait_for_log(a, "limits are shared across processes")
        # Shared again (each logged it as it switched back): a fresh Redis has no counts, so the two
        # processes together admit 3.
        statuses = [chat(r, key).status_code for r in (a, b) * 3]
        assert Counter(statuses) == {200: 3, 429: 3}, statuses
    finally:
        for router in (a, b):
            router.stop()
        redis_server.stop()


def test_workers_without_redis_say_counters_are_per_process(router_factory, upstream, tmp_path):
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config, start=False, process=True)
    # serve says it before its workers start: no need to wait for them
    router.start(extra_args=["--workers", "2"], logged="budget counters are per worker")
    assert "rate limits, concurrency limits and budget counters are per worker" in router.log()
