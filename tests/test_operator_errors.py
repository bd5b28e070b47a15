"""Errors that tell an operator or a caller what to do: wrong base URL, unknown model, no healthy backend."""

from __future__ import annotations

import time

import httpx

from router import errors
from router.model_lists import close_model_names
from tests.conftest import write_config

MESSAGES = [{"role": "user", "content": "hello"}]


def test_close_model_names():
    available = ["gpt-4o-mini", "gpt-4o", "llama-3-70b", "llama-3-8b", "text-embedding-3-small"]
    assert close_model_names("gpt4o-mini", available)[0] == "gpt-4o-mini"
    assert close_model_names("GPT-4o", available)[0] == "gpt-4o"
    assert set(close_model_names("llama", available)) == {"llama-3-70b", "llama-3-8b"}
    assert close_model_names("claude-3", available) == []
    assert len(close_model_names("gpt", available * 3, limit=2)) == 2
    assert close_model_names("[local]gpt-4o", available)[0] == "gpt-4o"


def test_no_healthy_backend_names_backends_and_sets_retry_after():
    error = errors.no_healthy_backend("m", [("alpha", 1_000_030.2), ("beta", 1_000_090.0)], now=1_000_000.0)
    assert error.status == 503 and error.headers == {"Retry-After": "31"}
    assert "alpha until 1970-01-12T13:47:10Z" in error.message and "beta until" in error.message
    assert "Retry in 31 s" in error.message
    assert errors.no_healthy_backend("m").headers == {}


def test_paths_outside_v1_get_a_json_404_that_points_at_v1(router_with_backend):
    router = router_with_backend
    auth = {"Authorization": f"Bearer {router.api_key}"}
    for method, path, meant in [
        ("POST", "/chat/completions", "/v1/chat/completions"),
        ("POST", "/embeddings", "/v1/embeddings"),
        ("GET", "/models", "/v1/models"),
        ("POST", "/openai/chat/completions", "/v1/chat/completions"),
    ]:
        response = httpx.request(method, f"{router.url}{path}", json={"model": "m"}, headers=auth)
        assert response.status_code == 404 and response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "unknown_url" and error["type"] == "invalid_request_error"
        assert f"Did you mean {method} {meant}?" in error["message"] and "ends in /v1" in error["message"]
    other = httpx.get(f"{router.url}/nothing-here").json()["error"]
    assert other["code"] == "unknown_url" and "Did you mean" not in other["message"]
    inside = httpx.post(f"{router.v1}/chat/complete", json={}, headers=auth).json()["error"]
    assert inside["code"] == "unknown_url"


def test_unknown_model_lists_close_names_the_caller_may_use(router_factory, upstream_factory, tmp_path):
    open_ = upstream_factory(name="open", models=["llama-3-70b-instruct"])
    private = upstream_factory(name="private", models=["llama-3-8b-instruct"])
    config = write_config(tmp_path / "c.yaml", {"open": {"url": open_.base_url}, "private": {"url": private.base_url}})
    router = router_factory(config=config)
    key = router.add_user("uma", permissions="open")
    response = httpx.post(
        f"{router.v1}/chat/completions",
        json={"model": "llama-3-70b", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert "similar name: llama-3-70b-instruct." in message
    assert "llama-3-8b-instruct" not in message  # not hers to use


def test_503_says_which_backends_until_when_with_retry_after(router_factory, upstream_factory, tmp_path):
    flaky = upstream_factory(name="flaky", models=["m"])
    config = write_config(tmp_path / "c.yaml", {"flaky": {"url": flaky.base_url}})
    router = router_factory(
        config=config, env={"HEALTH_FAILURE_THRESHOLD": "1", "HEALTH_COOLDOWN_S": "40", "HEALTH_CHECK_INTERVAL_S": "0"}
    )
    key = router.add_user("val")
    flaky.fail_status = 500

    def chat() -> httpx.Response:
        body = {"model": "m", "messages": MESSAGES}
        return httpx.post(f"{router.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})

    assert chat().status_code == 500  # passed through, and flaky is now cooling down
    response = chat()
    assert response.status_code == 503
    assert 35 <= int(response.headers["retry-after"]) <= 40
    message = response.json()["error"]["message"]
    assert "Unhealthy: flaky until 20" in message and "Retry in" in message
    assert response.headers["x-request-id"]
    health = router.gql_ok("{ backends { health { healthy reason since retryAt } } }")["backends"][0]["health"]
    assert health["reason"] == "a failed request, the last: HTTP 500" and health["since"] and health["retryAt"]


def test_time_to_first_token_only_for_streams(router_with_backend):
    router = router_with_backend
    auth = {"Authorization": f"Bearer {router.api_key}"}
    httpx.post(f"{router.v1}/chat/completions", json={"model": "test-model", "messages": MESSAGES}, headers=auth)
    httpx.post(f"{router.v1}/embeddings", json={"model": "test-model", "input": "x"}, headers=auth)
    body = {"model": "test-model", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{router.v1}/chat/completions", json=body, headers=auth) as stream:
        stream.read()
    rows = router.wait_for_logs(3)
    deadline = time.monotonic() + 5
    while len(rows) < 3 and time.monotonic() < deadline:
        rows = router.wait_for_logs(3)
    ttft = {(r["endpoint"], bool(r["stream"])): r["ttft_ms"] for r in rows}
    assert ttft[("/v1/chat/completions", False)] is None and ttft[("/v1/embeddings", False)] is None
    assert ttft[("/v1/chat/completions", True)] is not None
