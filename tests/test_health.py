"""Active health checks: a dead backend turns unhealthy and a revived one healthy, without any traffic."""

from __future__ import annotations

import time
import uuid

import pytest

from router.health import check_verdict
from router.model_lists import Probe
from router.routing import CHECK_FAILURES_TO_DOWN, CheckResult, HealthTracker
from tests.conftest import RouterProcess, require_redis, until, write_config
from tests.upstream import free_port

FAST_CHECKS = {"HEALTH_CHECK_INTERVAL_S": "0.3", "HEALTH_CHECK_TIMEOUT_S": "1", "HEALTH_COOLDOWN_S": "60"}
HEALTH = "health { healthy reason since retryAt lastCheck { at ok latencyMs error } }"


def backend_health(router: RouterProcess, name: str) -> dict:
    backends = router.gql_ok(f"{{ backends {{ name healthy {HEALTH} }} }}")["backends"]
    return next(b for b in backends if b["name"] == name)


def wait_for(router: RouterProcess, name: str, healthy: bool, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        backend = backend_health(router, name)
        if backend["healthy"] is healthy and backend["health"]["healthy"] is healthy:
            return backend
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not become {'healthy' if healthy else 'unhealthy'}: {backend}")
        time.sleep(0.1)


# --- pure decisions ---------------------------------------------------------------------------


def test_check_verdict():
    assert check_verdict(Probe(200, 3.0, ("m",))) is None
    assert check_verdict(Probe(404, 3.0, error="HTTP 404")) is None  # no /models, still serves
    assert check_verdict(Probe(429, 3.0, error="HTTP 429")) is None  # busy, not dead
    assert check_verdict(Probe(503, 3.0, error="HTTP 503")) == "HTTP 503 from /models"
    assert "refuses its configured API key" in (check_verdict(Probe(401, 3.0, error="HTTP 401")) or "")
    assert check_verdict(Probe(None, 5000.0, error="no answer within 5 s")) == "no answer within 5 s"


def test_checks_mark_down_and_up_without_waiting_for_the_cooldown():
    now, wall = [0.0], [1000.0]
    health = HealthTracker(threshold=3, cooldown_s=60, clock=lambda: now[0], wall=lambda: wall[0])
    failed = CheckResult(wall[0], False, 1.0, "refused")
    for _ in range(CHECK_FAILURES_TO_DOWN - 1):
        assert health.record_check(1, failed) is None and health.is_healthy(1)
    assert health.record_check(1, failed) is True
    status = health.status(1)
    assert not status.healthy and status.reason == "health check failed: refused"
    assert status.since == 1000.0 and status.retry_at == 1060.0 and status.last_check == failed
    now[0], wall[0] = 5.0, 1005.0
    assert health.record_check(1, failed) is None  # still down: the cooldown is extended, `since` kept
    assert health.status(1).since == 1000.0 and health.status(1).retry_at == 1065.0
    assert health.record_check(1, CheckResult(wall[0], True, 1.0)) is False  # back at once
    assert health.status(1).healthy and health.status(1).reason is None


def test_a_passing_check_does_not_override_failing_requests_before_the_cooldown():
    now = [0.0]
    health = HealthTracker(threshold=2, cooldown_s=30, clock=lambda: now[0])
    health.record_failure(1, "HTTP 500")
    assert health.record_failure(1, "HTTP 500")
    assert health.status(1).reason == "2 failed requests in a row, the last: HTTP 500"
    ok = CheckResult(0.0, True, 1.0)
    assert health.record_check(1, ok) is None and not health.is_healthy(1)  # /models answers, requests fail
    now[0] = 31.0
    assert health.record_check(1, ok) is False and health.is_healthy(1)


# --- the real router --------------------------------------------------------------------------


def test_dead_backend_turns_unhealthy_and_revived_one_healthy_without_traffic(
    router_factory, upstream_factory, tmp_path
):
    alpha = upstream_factory(name="alpha", models=["test-model"])
    config = write_config(tmp_path / "c.yaml", {"alpha": {"url": alpha.base_url}})
    router = router_factory(config=config, env=FAST_CHECKS)
    deadline = time.monotonic() + 10
    while backend_health(router, "alpha")["health"]["lastCheck"] is None:
        assert time.monotonic() < deadline, "no health check ran"
        time.sleep(0.1)
    assert backend_health(router, "alpha")["health"]["lastCheck"]["ok"] is True

    alpha.stop()
    down = wait_for(router, "alpha", healthy=False)["health"]
    assert down["reason"].startswith("health check failed:") and down["since"] and down["retryAt"]
    assert down["lastCheck"]["ok"] is False and down["lastCheck"]["error"]
    assert "backend alpha marked unhealthy: health check failed" in router.log()

    upstream_factory(name="alpha", models=["test-model"], port=alpha.port)  # back, on the same address
    up = wait_for(router, "alpha", healthy=True)["health"]  # well before the 60 s cooldown
    assert up["reason"] is None and up["since"] is None and up["lastCheck"]["ok"] is True
    assert "backend alpha is healthy again" in router.log()
    assert router.request_logs() == []  # no traffic did it


def test_test_backend_connection(router_factory, upstream_factory, tmp_path):
    good = upstream_factory(name="good", models=["m1", "m2"])
    locked = upstream_factory(name="locked", models=["m3"], required_key="right-key")
    config = write_config(
        tmp_path / "c.yaml",
        {
            "good": {"url": good.base_url},
            "locked": {"url": locked.base_url, "api_key": "wrong-key"},
            "dead": {"url": f"http://127.0.0.1:{free_port()}/v1"},
        },
    )
    router = router_factory(config=config, env={"HEALTH_CHECK_INTERVAL_S": "0"})
    ids = {b["name"]: b["id"] for b in router.gql_ok("{ backends { id name } }")["backends"]}
    query = (
        "mutation($id: ID!) { testBackendConnection(id: $id) "
        f"{{ ok reachable statusCode latencyMs models error backend {{ name {HEALTH} }} }} }}"
    )

    result = router.gql_ok(query, {"id": ids["good"]})["testBackendConnection"]
    assert result["ok"] and result["reachable"] and result["statusCode"] == 200
    assert result["models"] == ["m1", "m2"] and result["latencyMs"] > 0 and result["error"] is None
    assert result["backend"]["health"]["lastCheck"]["ok"] is True

    refused = router.gql_ok(query, {"id": ids["locked"]})["testBackendConnection"]
    assert not refused["ok"] and refused["reachable"] and refused["statusCode"] == 401
    assert "refuses its configured API key" in refused["error"] and refused["models"] == []

    dead = router.gql_ok(query, {"id": ids["dead"]})["testBackendConnection"]
    assert not dead["ok"] and not dead["reachable"] and dead["statusCode"] is None and dead["error"]
    missing = router.graphql(query, {"id": "999999"})
    assert missing["errors"][0]["extensions"]["code"] == "NOT_FOUND"


@pytest.mark.redis
def test_one_process_checks_per_round_and_all_see_the_results(upstream_factory, tmp_path):
    redis = require_redis()
    alpha = upstream_factory(name="alpha", models=["test-model"])
    env = {**FAST_CHECKS, "REDIS_URL": redis, "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}"}
    config = write_config(tmp_path / "c.yaml", {"alpha": {"url": alpha.base_url}})
    a = RouterProcess(tmp_path / "a", env, config).start()
    b = RouterProcess(tmp_path / "b", {**env, "CORE_DB_URL": "", "DATA_DIR": str(tmp_path / "a")}).start()
    try:
        # Both past start-up (which lists models once each): the first check rounds have run.
        until(lambda: len(alpha.requests_to("/v1/models")) >= 4, 15, "no health checks")
        # Ten more checks: one checker makes one per 0.3 s round, so they take nine rounds or more
        # (longer on a busy machine); two independent checkers would make them in about half that.
        before, started = len(alpha.requests_to("/v1/models")), time.monotonic()
        until(lambda: len(alpha.requests_to("/v1/models")) >= before + 10, 30, "health checks stopped")
        interval = float(FAST_CHECKS["HEALTH_CHECK_INTERVAL_S"])
        assert time.monotonic() - started >= 7 * interval, "more than one process checks each round"
        for router in (a, b):
            assert backend_health(router, "alpha")["health"]["lastCheck"]["ok"] is True
        alpha.stop()
        for router in (a, b):
            down = wait_for(router, "alpha", healthy=False)["health"]
            assert down["reason"].startswith("health check failed:") and down["since"]
    finally:
        a.stop()
        b.stop()
