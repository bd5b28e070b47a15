"""Limits enforced by the real router in front of a real upstream, seen through the official openai SDK:
RPM, TPM reservation and settlement (plain and streamed), user concurrency and the SDK honouring
Retry-After, budgets, and the fair queue of a backend at its maxConcurrent."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime

import httpx
import openai
import pytest

from tests.clients import openai_client
from tests.conftest import until, write_config

MESSAGES = [{"role": "user", "content": "hello there"}]


def set_user_limits(router, name: str, limits: dict) -> None:
    users = router.gql_ok("{ users { id name } }")["users"]
    uid = next(u["id"] for u in users if u["name"] == name)
    router.gql_ok(
        "mutation($id: ID!, $l: LimitsInput!) { setUserLimits(userId: $id, limits: $l) { id } }",
        {"id": uid, "l": limits},
    )


def set_backend_limits(router, name: str, limits: dict) -> None:
    backends = router.gql_ok("{ backends { id name } }")["backends"]
    bid = next(b["id"] for b in backends if b["name"] == name)
    router.gql_ok(
        "mutation($id: ID!, $l: LimitsInput!) { setBackendLimits(backendId: $id, limits: $l) { id } }",
        {"id": bid, "l": limits},
    )


def quota(router, name: str) -> dict:
    users = router.gql_ok(
        "{ users { name quota { requestsThisMinute tokensThisMinute inFlight spentUsd periodStart periodEnd } } }"
    )["users"]
    return next(u["quota"] for u in users if u["name"] == name)


def chat(router, key: str | None = None, **body) -> httpx.Response:
    return httpx.post(
        f"{router.v1}/chat/completions",
        json={"model": "test-model", "messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {key or router.api_key}"},
        timeout=30,
    )


def start_slow_router(router_factory, upstream_factory, tmp_path, chunks: int = 3, delay_s: float = 0.0):
    """A router whose backend holds every stream after its first chunk until `router.upstream.release_streams()`,
    then sends `chunks` chunks `delay_s` apart: a stream holds its slot (and its reservation) until the test
    has seen what it needs."""
    upstream = upstream_factory(
        name="alpha", models=["test-model"], stream_delay_s=delay_s, stream_chunks=chunks, hold_streams=True
    )
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config, env={"LIMITS_DEFAULT_MAX_TOKENS": "100"})
    router.api_key = router.add_user("alice")
    router.upstream = upstream
    return router


@pytest.fixture
def slow_router(router_factory, upstream_factory, tmp_path):
    """A router whose backend holds streams until the test releases them."""
    return start_slow_router(router_factory, upstream_factory, tmp_path)


def test_rpm_headers_and_the_openai_sdk_error(router_with_backend):
    router = router_with_backend
    unlimited = chat(router)
    assert unlimited.status_code == 200 and "x-ratelimit-limit-requests" not in unlimited.headers
    set_user_limits(router, "alice", {"rpm": 2})
    client = openai_client(router)
    first = client.chat.completions.with_raw_response.create(model="test-model", messages=MESSAGES)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "x-ratelimit-limit-tokens" not in first.headers  # no TPM limit: no tokens trio
    second = client.chat.completions.with_raw_response.create(model="test-model", messages=MESSAGES, stream=True)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    list(second.parse())

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="test-model", messages=MESSAGES)
    error = refused.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded" and error.type == "requests"
    assert 55 <= int(error.response.headers["retry-after"]) <= 60
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    rows = router.wait_for_logs(4)
    assert [r["status_code"] for r in rows] == [200, 200, 200, 429]
    assert rows[-1]["user_name"] == "alice" and "2 requests per minute" in rows[-1]["error"]
    assert quota(router, "alice")["requestsThisMinute"] == 2


def test_tpm_reserves_then_settles_plain_and_streamed(router_factory, upstream_factory, tmp_path):
    router = start_slow_router(router_factory, upstream_factory, tmp_path, chunks=10)  # streams held until released
    set_user_limits(router, "alice", {"tpm": 250})
    plain = chat(router, max_tokens=150)
    assert plain.status_code == 200
    reserved = 250 - int(plain.headers["x-ratelimit-remaining-tokens"])
    assert reserved >= 150  # the prompt estimate plus max_tokens was reserved...
    used = plain.json()["usage"]["total_tokens"]
    assert quota(router, "alice")["tokensThisMinute"] == used  # ...and replaced by the real usage

    # Two long streams in flight at once: the second is admitted (there was room), the third is not.
    headers = {"Authorization": f"Bearer {router.api_key}"}
    body = {"model": "test-model", "messages": MESSAGES, "stream": True, "max_tokens": 150}
    url = f"{router.v1}/chat/completions"
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body, headers=headers) as one:
        assert one.status_code == 200
        with http.stream("POST", url, json=body, headers=headers) as two:
            assert two.status_code == 200 and two.headers["x-ratelimit-remaining-tokens"] == "0"
            three = http.post(url, json=body, headers=headers)
            assert three.status_code == 429
            assert three.json()["error"]["type"] == "tokens"
            assert three.json()["error"]["code"] == "rate_limit_exceeded"
            assert quota(router, "alice")["tokensThisMinute"] > 250  # overshoot by at most one request
            router.upstream.release_streams()
            list(two.iter_bytes())
        list(one.iter_bytes())
    # Settled with the streams' real usage: far below the limit again.
    deadline = time.monotonic() + 5
    while quota(router, "alice")["tokensThisMinute"] > 100:
        assert time.monotonic() < deadline, quota(router, "alice")
        time.sleep(0.05)
    assert chat(router, max_tokens=150).status_code == 200


def test_user_concurrency_429_and_the_sdk_retries_after_retry_after(router_factory, upstream_factory, tmp_path):
    router = start_slow_router(router_factory, upstream_factory, tmp_path, chunks=8)  # held until released
    set_user_limits(router, "alice", {"maxConcurrent": 1})
    holding = threading.Thread(target=lambda: chat(router, stream=True))
    holding.start()
    deadline = time.monotonic() + 5
    while quota(router, "alice")["inFlight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    refused = chat(router)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "in flight at once" in refused.json()["error"]["message"]

    def release_after_the_sdks_first_refusal() -> None:  # its retry comes the Retry-After (1 s) later
        try:
            until(lambda: sum(r["status_code"] == 429 for r in router.request_logs()) >= 2, 30)
        finally:
            router.upstream.release_streams()

    releasing = threading.Thread(target=release_after_the_sdks_first_refusal)
    releasing.start()
    reply = openai_client(router, max_retries=6).chat.completions.create(model="test-model", messages=MESSAGES)
    releasing.join()
    holding.join()
    assert reply.choices[0].message.content == "alpha says: hello there"
    deadline = time.monotonic() + 10
    rows = router.request_logs()
    while not any(r["status_code"] == 200 and not r["stream"] for r in rows):  # the SDK's success
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
        rows = router.request_logs()
    # The SDK's own attempts (after our refusal): each retry came the Retry-After (1 s) after the last.
    plain = sorted((r for r in rows if not r["stream"]), key=lambda r: str(r["created_at"]))[1:]
    starts = [datetime.fromisoformat(str(r["created_at"])) for r in plain]
    assert len(plain) >= 2 and plain[0]["status_code"] == 429, plain
    assert all((later - earlier).total_seconds() >= 0.9 for earlier, later in itertools.pairwise(starts)), starts
    refusals = [r for r in rows if r["status_code"] == 429]
    assert len(refusals) >= 2  # ours and at least one of the SDK's attempts
    assert quota(router, "alice")["inFlight"] == 0


def test_budget_refuses_with_insufficient_quota(router_with_backend):
    router = router_with_backend
    router.gql_ok(
        'mutation { createModelPrice(input: {model: "test-model", inputPerMTok: 100000, outputPerMTok: 100000}) '
        "{ id } }"
    )
    set_user_limits(router, "alice", {"budgetUsd": 0.5, "budgetPeriod": "DAY"})
    client = openai_client(router)
    client.chat.completions.create(model="test-model", messages=MESSAGES)  # costs ~ $1: over budget after it
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="test-model", messages=MESSAGES)
    assert refused.value.code == "insufficient_quota" and refused.value.type == "insufficient_quota"
    assert "budget of $0.5" in refused.value.message
    state = quota(router, "alice")
    assert state["spentUsd"] > 0.5 and state["periodEnd"] is not None
    # The rollups have it too (what a restarted router seeds its counter from).
    router.wait_for_logs(2)
    [usage] = router.gql_ok("{ usage { costUsd } }")["usage"]
    assert usage["costUsd"] == pytest.approx(state["spentUsd"])


def test_backend_queue_is_fair_and_visible(router_factory, upstream_factory, tmp_path):
    # Streams are held until the queue is as below; then each holds the slot 6 x 0.12 s (long enough that
    # waiting for all of alice's would break the latency bound below, as with the 1.8 s slots before).
    router = start_slow_router(router_factory, upstream_factory, tmp_path, chunks=6, delay_s=0.12)
    slot_s = 0.72
    bob = router.add_user("bob")
    set_backend_limits(router, "alpha", {"maxConcurrent": 1})
    finished: list[tuple[str, float]] = []
    lock = threading.Lock()

    def stream(who: str, key: str) -> None:
        started = time.monotonic()
        response = chat(router, key, stream=True)
        with lock:
            finished.append(
                (who if response.status_code == 200 else f"{who}: {response.text}", time.monotonic() - started)
            )

    flood = [threading.Thread(target=stream, args=(f"alice{i}", router.api_key)) for i in range(5)]
    for thread in flood:
        thread.start()

    def backend_quota() -> dict:
        return router.gql_ok("{ backends { quota { queued inFlight } } }")["backends"][0]["quota"]

    until(lambda: backend_quota() == {"queued": 4, "inFlight": 1}, 10, "alice's five did not take the slot and queue")
    metrics = httpx.get(f"{router.url}/metrics").text
    [depth] = [
        line for line in metrics.splitlines() if line.startswith('llm_router_backend_queue_depth{backend="alpha"}')
    ]
    assert float(depth.split()[-1]) >= 2
    bob_thread = threading.Thread(target=stream, args=("bob", bob))
    bob_thread.start()
    until(lambda: backend_quota()["queued"] == 5, 10, "bob did not queue behind alice's four")
    router.upstream.release_streams()
    for thread in [*flood, bob_thread]:
        thread.join(60)
    order = [who for who, _ in finished]
    assert "bob" in order, finished
    # Bob waited for the request in its slot and at most one more of alice's, not all four.
    assert order.index("bob") <= 2, order
    bob_latency = dict(finished)["bob"]
    assert bob_latency < 3 * slot_s + 2.0, finished


def test_a_client_leaving_the_queue_leaves_at_once(slow_router):
    router = slow_router
    set_backend_limits(router, "alpha", {"maxConcurrent": 1})
    holding = threading.Thread(target=lambda: chat(router, stream=True))
    holding.start()
    until(
        lambda: router.gql_ok("{ backends { quota { inFlight } } }")["backends"][0]["quota"]["inFlight"],
        5,
        "the first stream did not take the backend's slot",
    )
    with pytest.raises(httpx.ReadTimeout):
        chat_timeout = httpx.post(
            f"{router.v1}/chat/completions",
            json={"model": "test-model", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {router.api_key}"},
            timeout=0.3,
        )
        del chat_timeout
    deadline = time.monotonic() + 3
    while router.gql_ok("{ backends { quota { queued } } }")["backends"][0]["quota"]["queued"]:
        assert time.monotonic() < deadline, "the disconnected client stayed in the queue"
        time.sleep(0.02)
    router.upstream.release_streams()
    holding.join()
    rows = router.wait_for_logs(2)
    assert any(r["status_code"] == 499 and "disconnected" in (r["error"] or "") for r in rows), rows
