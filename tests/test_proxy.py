"""router/proxy.py, the /v1 request path: the real router (in-process) before real local upstreams, driven
by the openai SDK and httpx, and what admins see and users receive at its edges."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections import Counter

import httpx
import pytest

from router.errors import ApiError
from router.proxy import parse_payload
from tests.clients import openai_client
from tests.conftest import require_postgres, write_config
from tests.gc_probe import left_for_the_gc
from tests.upstream import Scripted

MESSAGES = [{"role": "user", "content": "hello there"}]


def post(router, path: str, body, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or router.api_key}", **kwargs.pop("headers", {})}
    if isinstance(body, (bytes, str)):
        return httpx.post(f"{router.v1}{path}", content=body, headers=headers, timeout=30, **kwargs)
    return httpx.post(f"{router.v1}{path}", json=body, headers=headers, timeout=30, **kwargs)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    return error


# --- the SDK works unchanged --------------------------------------------------------------------


def test_openai_sdk_models_chat_stream_completions_embeddings(router_with_backend, upstream):
    client = openai_client(router_with_backend)

    assert {m.id for m in client.models.list()} == {"test-model", "shared-model"}
    assert all(m.owned_by == "alpha" for m in client.models.list())

    chat = client.chat.completions.create(model="test-model", messages=MESSAGES)
    assert chat.choices[0].message.content == "alpha says: hello there"
    assert chat.usage.total_tokens > 0

    chunks = list(client.chat.completions.create(model="test-model", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    # The router asked the upstream for usage, but this client did not: no usage-only chunk reaches it.
    assert all(c.usage is None for c in chunks)
    assert upstream.requests_to("/v1/chat/completions")[-1].body["stream_options"] == {"include_usage": True}

    completion = client.completions.create(model="test-model", prompt="once upon")
    assert completion.choices[0].text == "alpha completes"

    embedding = client.embeddings.create(model="test-model", input=["a", "b"])
    assert len(embedding.data) == 2 and embedding.data[0].embedding == [0.1, 0.2, 0.3]

    rows = router_with_backend.wait_for_logs(4)
    by_endpoint = Counter(r["endpoint"] for r in rows)
    assert by_endpoint == {"/v1/chat/completions": 2, "/v1/completions": 1, "/v1/embeddings": 1}
    stream_row = next(r for r in rows if r["stream"])
    assert stream_row["completion_tokens"] == 3 and stream_row["prompt_tokens"] > 0
    assert stream_row["ttft_ms"] is not None and stream_row["user_name"] == "alice"
    assert all(r["backend_name"] == "alpha" and r["status_code"] == 200 for r in rows)


def test_stream_with_client_requested_usage_keeps_the_usage_chunk(router_with_backend):
    client = openai_client(router_with_backend)
    chunks = list(
        client.chat.completions.create(
            model="test-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_upstream_receives_request_id_and_its_key_not_the_users(router_factory, upstream_factory, tmp_path):
    secured = upstream_factory(name="secured", models=["m"], required_key="upstream-secret")
    config = write_config(tmp_path / "c.yaml", {"secured": {"url": secured.base_url, "api_key": "${UP_KEY}"}})
    router = router_factory(config=config, env={"UP_KEY": "upstream-secret"})
    key = router.add_user("bob")
    response = post(
        router, "/chat/completions", {"model": "m", "messages": MESSAGES}, key, headers={"X-Request-ID": "req-123"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-123"
    echoed = response.json()["echo"]["headers"]
    assert echoed["Authorization"] == "Bearer upstream-secret"
    assert echoed["X-Request-ID"] == "req-123"
    assert key not in json.dumps(echoed)
    assert "upstream-secret" not in router.log()


# --- errors -------------------------------------------------------------------------------------


def test_auth_failures(router_with_backend):
    router = router_with_backend
    body = {"model": "test-model", "messages": MESSAGES}
    assert_openai_error(httpx.post(f"{router.v1}/chat/completions", json=body), 401)
    assert_openai_error(post(router, "/chat/completions", body, key="sk-not-a-key"), 401)
    assert_openai_error(httpx.get(f"{router.v1}/models"), 401)
    router.cli("users", "modify", "alice", "--deactivate")
    deadline = time.monotonic() + 10
    while post(router, "/chat/completions", body).status_code != 401 and time.monotonic() < deadline:
        time.sleep(0.05)
    error = assert_openai_error(post(router, "/chat/completions", body), 401)
    assert "deactivated" in error["message"]


def test_bad_requests(router_with_backend):
    router = router_with_backend
    assert assert_openai_error(post(router, "/chat/completions", b"{not json"), 400)["code"] == "invalid_json"
    assert assert_openai_error(post(router, "/chat/completions", b"[1,2]"), 400)["code"] == "invalid_json"
    error = assert_openai_error(post(router, "/chat/completions", {"messages": MESSAGES}), 400)
    assert "'model'" in error["message"]
    error = assert_openai_error(post(router, "/chat/completions", {"model": "test-model"}), 400)
    assert "'messages'" in error["message"]
    error = assert_openai_error(post(router, "/embeddings", {"model": "test-model"}), 400)
    assert "'input'" in error["message"]
    assert_openai_error(post(router, "/chat/completions", {"model": "nope", "messages": MESSAGES}), 404)
    assert_openai_error(httpx.get(f"{router.v1}/nothing-here"), 404)


def test_oversized_body_is_refused(router_factory, upstream, tmp_path):
    config = write_config(tmp_path / "c.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config, env={"MAX_REQUEST_BODY_MB": "0.01"})
    key = router.add_user("carol")
    big = {"model": "test-model", "messages": [{"role": "user", "content": "x" * 20_000}]}
    assert assert_openai_error(post(router, "/chat/completions", big, key), 413)["code"] == "request_too_large"
    # A streamed body without Content-Length is cut off too.
    chunked = httpx.post(
        f"{router.v1}/chat/completions",
        content=iter([json.dumps(big).encode()]),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert_openai_error(chunked, 413)
    assert not upstream.requests_to("/v1/chat/completions")


def test_permissions_limit_models_and_backends(router_factory, upstream_factory, tmp_path):
    alpha = upstream_factory(name="alpha", models=["a-model", "shared"])
    beta = upstream_factory(name="beta", models=["b-model", "shared"])
    config = write_config(tmp_path / "c.yaml", {"alpha": {"url": alpha.base_url}, "beta": {"url": beta.base_url}})
    router = router_factory(config=config)
    key = router.add_user("dave", permissions="alpha")

    assert {m.id for m in openai_client(router, key).models.list()} == {"a-model", "shared"}
    error = assert_openai_error(post(router, "/chat/completions", {"model": "b-model", "messages": MESSAGES}, key), 403)
    assert error["type"] == "permission_error"
    error = assert_openai_error(
        post(router, "/chat/completions", {"model": "[beta]b-model", "messages": MESSAGES}, key), 403
    )
    for _ in range(4):  # "shared" is on both, but dave may only use alpha
        assert (
            post(router, "/chat/completions", {"model": "shared", "messages": MESSAGES}, key).json()["echo"]["server"]
            == "alpha"
        )


def test_model_filter_override_and_append(router_factory, upstream_factory, tmp_path):
    up = upstream_factory(name="up", models=["llama-3-8b", "llama-3-70b", "qwen-7b"])
    config = write_config(
        tmp_path / "c.yaml",
        {
            "filtered": {"url": up.base_url, "filter": "llama 70*", "append": ["extra-model"]},
            "fixed": {"url": up.base_url, "override": ["only-this"]},
        },
    )
    router = router_factory(config=config)
    key = router.add_user("erin")
    models = {m.id: m.owned_by for m in openai_client(router, key).models.list()}
    assert models == {"llama-3-70b": "filtered", "extra-model": "filtered", "only-this": "fixed"}
    upstream_listing = [r for r in up.requests_to("/v1/models")]
    assert len(upstream_listing) >= 1  # asked for "filtered"; never for "fixed" (override)
    response = post(router, "/chat/completions", {"model": "only-this", "messages": MESSAGES}, key)
    assert response.status_code == 200 and response.json()["model"] == "only-this"


def test_auto_mode_routes_to_the_named_backend_and_strips_the_prefix(router_factory, upstream_factory, tmp_path):
    alpha = upstream_factory(name="alpha", models=["shared"])
    beta = upstream_factory(name="beta", models=["shared"])
    config = write_config(tmp_path / "c.yaml", {"alpha": {"url": alpha.base_url}, "beta": {"url": beta.base_url}})
    router = router_factory(config=config)
    key = router.add_user("frank")
    for _ in range(3):
        response = post(router, "/chat/completions", {"model": "[beta]shared", "messages": MESSAGES}, key)
        assert response.json()["echo"]["server"] == "beta"
        assert response.json()["echo"]["body"]["model"] == "shared"
    assert_openai_error(post(router, "/chat/completions", {"model": "[gamma]shared", "messages": MESSAGES}, key), 404)


def test_proxy_mode_only_to_allowed_targets(router_factory, upstream_factory, tmp_path):
    allowed = upstream_factory(name="allowed", models=["m"])
    other = upstream_factory(name="other", models=["m"])
    config = write_config(tmp_path / "c.yaml", {"alpha": {"url": allowed.base_url}})
    router = router_factory(config=config, env={"PROXY_ALLOWLIST": f"http://127.0.0.1:{allowed.port}/v1"})
    key = router.add_user("grace")
    limited = router.add_user("heidi", permissions="alpha")
    body = {"model": "anything", "messages": MESSAGES}

    response = post(
        router,
        f"/chat/completions?proxy={allowed.base_url}",
        body,
        key,
        headers={"X-Upstream-Authorization": "Bearer target-key"},
    )
    assert response.status_code == 200, response.text
    echo = response.json()["echo"]
    assert echo["server"] == "allowed" and echo["headers"]["Authorization"] == "Bearer target-key"
    assert key not in json.dumps(echo)

    bracket = post(router, "/chat/completions", {"model": f"[{allowed.base_url}]m", "messages": MESSAGES}, key)
    assert bracket.json()["echo"]["body"]["model"] == "m"

    for target in (
        other.base_url,
        f"http://127.0.0.1:{allowed.port}/v1evil",
        "http://127.0.0.1@evil.example/v1",
        "file:///etc/passwd",
    ):
        assert_openai_error(post(router, f"/chat/completions?proxy={target}", body, key), 403)
    assert_openai_error(post(router, f"/chat/completions?proxy={allowed.base_url}", body, limited), 403)
    assert not other.received


def test_proxy_mode_is_off_without_allowlist(router_with_backend, upstream):
    response = post(
        router_with_backend, f"/chat/completions?proxy={upstream.base_url}", {"model": "x", "messages": MESSAGES}
    )
    assert "disabled" in assert_openai_error(response, 403)["message"]


# --- balancing and failover -----------------------------------------------------------------------


def test_weighted_round_robin_distribution(router_factory, upstream_factory, tmp_path):
    heavy = upstream_factory(name="heavy", models=["m"])
    light = upstream_factory(name="light", models=["m"])
    config = write_config(
        tmp_path / "c.yaml",
        {"heavy": {"url": heavy.base_url, "weight": 3}, "light": {"url": light.base_url, "weight": 1}},
    )
    router = router_factory(config=config)
    key = router.add_user("ivan")
    servers = Counter(
        post(router, "/chat/completions", {"model": "m", "messages": MESSAGES}, key).json()["echo"]["server"]
        for _ in range(40)
    )
    assert servers == {"heavy": 30, "light": 10}


def test_failover_from_a_dead_and_a_failing_backend(router_factory, upstream_factory, tmp_path):
    good = upstream_factory(name="good", models=["m"])
    failing = upstream_factory(name="failing", models=["m"])
    dead = upstream_factory(name="dead", models=["m"])
    config = write_config(
        tmp_path / "c.yaml",
        {
            "dead": {"url": dead.base_url, "weight": 5},
            "failing": {"url": failing.base_url, "weight": 5},
            "good": {"url": good.base_url, "weight": 1},
        },
    )
    router = router_factory(config=config)
    key = router.add_user("judy")
    dead.stop()  # connection refused from now on
    failing.fail_status = 503
    for _ in range(6):
        response = post(router, "/chat/completions", {"model": "m", "messages": MESSAGES}, key)
        assert response.status_code == 200, response.text
        assert response.json()["echo"]["server"] == "good"
    rows = router.wait_for_logs(6)
    assert max(r["attempts"] for r in rows) >= 2
    # After 3 failures each, dead and failing are skipped: later requests need only one attempt.
    assert rows[-1]["attempts"] == 1
    assert "marked unhealthy" in router.log()


def test_all_backends_down_gives_502_then_503(router_factory, upstream_factory, tmp_path):
    dead = upstream_factory(name="dead", models=["m"])
    config = write_config(tmp_path / "c.yaml", {"dead": {"url": dead.base_url}})
    router = router_factory(config=config)
    key = router.add_user("ken")
    dead.stop()
    codes = [post(router, "/chat/completions", {"model": "m", "messages": MESSAGES}, key).status_code for _ in range(4)]
    assert codes[:3] == [502, 502, 502] and codes[3] == 503


def test_upstream_error_with_body_is_passed_through(router_factory, upstream_factory, tmp_path):
    picky = upstream_factory(name="picky", models=["m"], fail_status=422)
    config = write_config(tmp_path / "c.yaml", {"picky": {"url": picky.base_url, "override": ["m"]}})
    router = router_factory(config=config)
    key = router.add_user("leo")
    response = post(router, "/chat/completions", {"model": "m", "messages": MESSAGES}, key)
    assert response.status_code == 422 and response.json()["error"]["message"] == "picky failing"
    assert router.wait_for_logs(1)[0]["status_code"] == 422


def test_client_disconnect_mid_stream_closes_the_upstream(router_factory, upstream_factory, tmp_path):
    slow = upstream_factory(name="slow", models=["m"], stream_chunks=200, stream_delay_s=0.05)
    config = write_config(tmp_path / "c.yaml", {"slow": {"url": slow.base_url}})
    router = router_factory(config=config)
    key = router.add_user("mallory")
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", f"{router.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    # Leaving the block closed our connection after one event of 200 (10 s of stream).
    assert slow.stream_cancelled.wait(5), "the upstream stream was not closed"
    row = router.wait_for_logs(1)[0]
    assert row["status_code"] == 499 and row["error"] == "client disconnected"


@pytest.mark.parametrize("leaving", ["while-waiting", "while-sending"])
async def test_a_client_leaving_a_stream_on_starlettes_path_is_a_499(tmp_path, upstream_factory, leaving) -> None:
    """A body that was not read ahead takes Starlette's way (app.V1FastPath.with_body). There the
    client's leaving shows as an `http.disconnect` while the relay waits for upstream (ASGI before 2.4)
    or as a `send` that fails (2.4 on). Either way the row says 499 and the upstream is closed."""
    from starlette.requests import ClientDisconnect

    from tests.inprocess import in_process
    from tests.test_storage_security import request_log_rows

    slow = upstream_factory(name="slow", models=["m"], stream_chunks=200, stream_delay_s=0.05)
    async with in_process(tmp_path, {"slow": {"url": slow.base_url}}) as router:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4" if leaving == "while-sending" else "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"authorization", f"Bearer {router.api_key}".encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        got_an_event = asyncio.Event()
        messages = [{"type": "http.request", "body": body[10:], "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await got_an_event.wait()
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            if got_an_event.is_set() and leaving == "while-sending":
                raise OSError("the client is gone")
            sent.append(message)
            if message.get("body"):
                got_an_event.set()

        first = {"type": "http.request", "body": body[:10], "more_body": True}  # not read ahead
        try:
            await asyncio.wait_for(router.app.app.with_body(scope, first, receive, send), 10)
        except ClientDisconnect:
            assert leaving == "while-sending"  # Starlette's word for the failed send, to the server
        assert sent[0]["status"] == 200 and b"data: " in sent[1]["body"]
        assert await asyncio.to_thread(slow.stream_cancelled.wait, 5), "the upstream stream was not closed"
        await router.runtime.writer.flush()
    [row] = request_log_rows(tmp_path)
    assert (row["status_code"], row["error"]) == (499, "client disconnected")


def test_a_client_leaving_mid_stream_leaves_no_reference_cycles(router_factory, upstream_factory, tmp_path):
    slow = upstream_factory(name="slow", models=["m"], stream_chunks=200, stream_delay_s=0.05)
    router = router_factory(config=write_config(tmp_path / "c.yaml", {"slow": {"url": slow.base_url}}))
    key = router.add_user("mallory")
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    with left_for_the_gc(_router_owned) as owned:
        for _ in range(3):
            with httpx.stream("POST", f"{router.v1}/chat/completions", json=body, headers=headers, timeout=30) as r:
                assert next(r.iter_lines()).startswith("data: ")
        rows = router.wait_for_logs(3)
        time.sleep(0.2)  # the relays' last steps after their rows were queued
    assert [row["status_code"] for row in rows] == [499] * 3
    assert owned == [], "\n".join(owned)


def test_a_client_leaving_after_the_final_event_is_not_a_disconnect(router_factory, upstream_factory, tmp_path):
    """The OpenAI SDK closes its connection at `[DONE]`, often before the upstream ends the stream: the
    client got the whole answer, so the row says 200 with its usage, not 499 (and the upstream is closed)."""
    lingering = upstream_factory(name="lingering", models=["m"], linger_after_end_s=30)
    router = router_factory(config=write_config(tmp_path / "c.yaml", {"lingering": {"url": lingering.base_url}}))
    key = router.add_user("carol")
    stream = openai_client(router, key).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)  # the SDK stops reading at [DONE] and closes the response
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert lingering.stream_cancelled.wait(5), "the upstream stream was not closed"

    lingering.stream_cancelled.clear()
    body = {"model": "m", "max_tokens": 16, "stream": True, "messages": MESSAGES}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{router.v1}/messages", json=body, headers=headers, timeout=30) as response:
        for line in response.iter_lines():  # a client that leaves at message_stop
            if line == "event: message_stop":
                break
    assert lingering.stream_cancelled.wait(5), "the upstream stream was not closed"
    rows = router.wait_for_logs(2)
    assert [(r["endpoint"], r["status_code"], r["error"]) for r in sorted(rows, key=lambda r: r["id"])] == [
        ("/v1/chat/completions", 200, None),
        ("/v1/messages", 200, None),
    ]
    assert all(r["completion_tokens"] == 3 for r in rows)


# --- lifecycle --------------------------------------------------------------------------------------


def test_graceful_stop_loses_no_log_row_and_restart_keeps_data(router_factory, upstream_factory, tmp_path):
    slow = upstream_factory(name="slow", models=["m"], stream_chunks=10, stream_delay_s=0.05)
    config = write_config(tmp_path / "c.yaml", {"slow": {"url": slow.base_url}})
    # SIGTERM to a real process; rows wait in memory until the graceful stop writes them
    router = router_factory(config=config, env={"LOG_FLUSH_INTERVAL_S": "5"}, process=True)
    key = router.add_user("nina")
    results: list[int] = []

    def call() -> None:
        with httpx.stream(
            "POST",
            f"{router.v1}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "m", "messages": MESSAGES, "stream": True},
            timeout=30,
        ) as response:
            results.append(len(list(response.iter_lines())))

    for _ in range(5):
        post(router, "/chat/completions", {"model": "m", "messages": MESSAGES}, key)
    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    slow.requests_to("/v1/chat/completions")  # streams are now in flight
    deadline = time.monotonic() + 5
    while len(slow.requests_to("/v1/chat/completions")) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    # uvicorn re-raises the signal after its graceful shutdown: the exit status says "terminated".
    assert router.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "llm-router stopped" in router.log()
    for thread in threads:
        thread.join(10)
    assert len(results) == 3 and all(n > 10 for n in results)  # in-flight streams were finished
    rows = router.request_logs()
    assert len(rows) == 8 and all(r["status_code"] == 200 for r in rows)

    restarted = router_factory(config=config, data_dir=router.data_dir, env=router.env)
    assert restarted.request_logs() == rows
    response = post(restarted, "/chat/completions", {"model": "m", "messages": MESSAGES}, key)
    assert response.status_code == 200  # the user and its key survived the restart


def test_postgres_urls(router_factory, upstream, tmp_path):
    from tests.conftest import create_pg_database, drop_pg_database

    server = require_postgres()
    core, analytics = create_pg_database(server), create_pg_database(server)
    try:
        config = write_config(tmp_path / "c.yaml", {"alpha": {"url": upstream.base_url}})
        router = router_factory(config=config, env={"CORE_DB_URL": core, "ANALYTICS_DB_URL": analytics})
        key = router.add_user("oscar")
        chat = openai_client(router, key).chat.completions.create(model="test-model", messages=MESSAGES)
        assert chat.choices[0].message.content.startswith("alpha")
        rows = router.wait_for_logs(1)
        assert rows[0]["user_name"] == "oscar" and rows[0]["total_tokens"] > 0
        router.stop()
    finally:
        drop_pg_database(server, core)
        drop_pg_database(server, analytics)


def test_bad_config_file_stops_start_up(router_factory, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("servers:\n  alpha:\n    url: not-a-url\n")
    router = router_factory(config=config, start=False, process=True)  # serve's start-up
    with pytest.raises(RuntimeError) as failure:
        router.start()
    assert "bad.yaml: servers.alpha.url" in str(failure.value)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_json"),
        (b"[]", "invalid_json"),
        (b'{"messages": []}', "missing_required_parameter"),
        (b'{"model": "m"}', "missing_required_parameter"),
        (b'{"model": 3, "messages": []}', "missing_required_parameter"),
    ],
)
def test_parse_payload_errors(body, code):
    with pytest.raises(ApiError) as error:
        parse_payload(body, "/v1/chat/completions")
    assert error.value.status == 400 and error.value.code == code


HI = [{"role": "user", "content": "hi"}]


def chunk(content: str | None, usage: dict | None = None) -> dict:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    data: dict = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
    if usage is not None:
        data["usage"] = usage
    return data


USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


@pytest.fixture
def scripted(upstream_factory, router_factory, tmp_path):
    """A router in front of an upstream whose answer each test sets: `set(Scripted(...))`."""
    replies: list[Scripted] = []
    up = upstream_factory(name="s", models=["m"], script=lambda path, body: replies[-1] if replies else None)

    def make(env: dict[str, str] | None = None):
        router = router_factory(config=write_config(tmp_path / "c.yaml", {"s": {"url": up.base_url}}), env=env)
        router.api_key = router.add_user("alice")
        return router, replies.append

    return make


def test_upstream_account_headers_stop_at_the_router(scripted):
    headers = {
        "x-ratelimit-remaining-requests": "99",
        "x-litellm-key-spend": "0.5",
        "x-litellm-model-api-base": "http://secret-upstream",
        "openai-processing-ms": "12",
        "Set-Cookie": "a=b",
    }
    router, answer = scripted()
    answer(Scripted(body={"choices": [], "usage": USAGE}, headers=headers))
    response = post(router, "/chat/completions", {"model": "m", "messages": HI})
    assert response.status_code == 200
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["content-type"].startswith("application/json")
    for name in ("x-ratelimit-remaining-requests", "x-litellm-key-spend", "x-litellm-model-api-base", "set-cookie"):
        assert name not in response.headers

    extended, answer = scripted({"UPSTREAM_RESPONSE_HEADERS": "x-litellm-*, X-Custom"})
    answer(Scripted(body={"choices": []}, headers={**headers, "x-custom": "1"}))
    response = post(extended, "/chat/completions", {"model": "m", "messages": HI})
    assert response.headers["x-litellm-key-spend"] == "0.5" and response.headers["x-custom"] == "1"
    assert "x-ratelimit-remaining-requests" not in response.headers


def test_usage_the_client_did_not_ask_for_is_removed_even_beside_choices(scripted):
    """LiteLLM puts `usage` on a final chunk whose choices are not empty: keep the chunk, drop the field."""
    router, answer = scripted()
    answer(Scripted(events=[(None, chunk("Hel")), (None, chunk("lo", USAGE)), (None, b"[DONE]")]))
    client = openai_client(router)
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content for c in chunks) == "Hello"
    assert all(c.usage is None for c in chunks)
    asked = list(
        client.chat.completions.create(model="m", messages=HI, stream=True, stream_options={"include_usage": True})
    )
    assert asked[-1].usage.total_tokens == 6
    rows = router.wait_for_logs(2)
    assert [r["total_tokens"] for r in rows] == [6, 6]


def test_unknown_paths_are_answered_and_logged(router_with_backend):
    router = router_with_backend
    assert httpx.head(f"{router.url}/", timeout=10).status_code == 200
    auth = {"Authorization": f"Bearer {router.api_key}"}
    probes = [("POST", "/v1/nope"), ("GET", "/v1/realtime"), ("PUT", "/not-a-route"), ("HEAD", "/xyz")]
    for method, path in probes:
        response = httpx.request(method, f"{router.url}{path}", headers=auth, timeout=10)
        assert response.status_code == 404
        if method != "HEAD":
            assert response.json()["error"]["code"] == "unknown_url"
    long_path = "/v1/" + "x" * 5000
    assert httpx.get(f"{router.url}{long_path}", timeout=10).status_code == 404
    rows = router.wait_for_logs(5)
    assert [(r["endpoint"], r["status_code"]) for r in rows[:4]] == [(p, 404) for _, p in probes]
    assert rows[0]["user_name"] == "alice" and "POST /v1/nope" in rows[0]["error"]
    assert len(rows[4]["endpoint"]) <= 64 and len(rows[4]["error"]) < 300 and rows[4]["user_name"] is None
    assert "POST /v1/nope" in router.log()  # the per-request line names method and path


@pytest.mark.parametrize(
    ("reply", "stream"),
    [
        (Scripted(raw=b"<html>oops</html>", headers={"Content-Type": "text/html"}), False),
        (Scripted(raw=b'{"choices": [', headers={"Content-Type": "application/json"}), False),
        (Scripted(raw=b"<html>oops</html>", headers={"Content-Type": "text/html"}), True),
        (Scripted(events=[(None, b"<html>not json</html>")]), True),
        (Scripted(raw=b"", headers={"Content-Type": "text/event-stream"}), True),
    ],
)
def test_a_malformed_upstream_answer_is_a_502_with_an_error_row(scripted, reply, stream):
    router, answer = scripted()
    answer(reply)
    response = post(router, "/chat/completions", {"model": "m", "messages": HI, "stream": stream})
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_gateway" and "Backend 's'" in error["message"]
    row = router.wait_for_logs(1)[0]
    assert row["status_code"] == 502 and row["error"]


def test_an_answer_over_max_upstream_answer_mb_is_a_502_and_one_under_it_passes(scripted):
    router, answer = scripted({"MAX_UPSTREAM_ANSWER_MB": "1"})
    text = "x" * (900 * 1024)
    answer(Scripted(body={"choices": [{"message": {"role": "assistant", "content": text}}]}))
    assert (
        post(router, "/chat/completions", {"model": "m", "messages": HI}).json()["choices"][0]["message"]["content"]
        == text
    )
    answer(Scripted(body={"choices": [{"message": {"role": "assistant", "content": text * 2}}]}))
    response = post(router, "/chat/completions", {"model": "m", "messages": HI})
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (
        error["code"] == "bad_gateway" and "Backend 's'" in error["message"] and "larger than 1 MB" in error["message"]
    )
    statuses = {row["status_code"]: row for row in router.wait_for_logs(2)}
    assert statuses.keys() == {200, 502} and "larger than 1 MB" in statuses[502]["error"]


def test_an_oversized_stream_event_breaks_the_stream_off(scripted):
    router, answer = scripted({"SSE_MAX_EVENT_MB": "1"})
    huge = chunk("x" * (2 * 1024 * 1024))
    answer(Scripted(events=[(None, chunk("ok")), (None, huge), (None, b"[DONE]")]))
    with httpx.stream(
        "POST",
        f"{router.v1}/chat/completions",
        json={"model": "m", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {router.api_key}"},
        timeout=30,
    ) as response:
        body = b"".join(response.iter_bytes())
    assert body.startswith(b"data: ") and b'"ok"' in body and b"x" * 1000 not in body
    last = json.loads(body.strip().split(b"\n\n")[-1][len(b"data: ") :])
    assert "larger than" in last["error"]["message"]
    row = router.wait_for_logs(1)[0]
    assert row["status_code"] == 502 and "larger than" in row["error"]


# --- nothing a request leaves behind needs the cyclic GC -------------------------------------------


def _router_owned(obj: object) -> str | None:
    """What the router's code made: its classes, or functions, methods, coroutines and frames of its
    modules (not the test client's, not the test upstream's); None for anything else."""
    func = getattr(obj, "__func__", obj)
    code = next(
        (c for name in ("__code__", "cr_code", "ag_code", "gi_code", "f_code") if (c := getattr(func, name, None))),
        None,
    )
    module = getattr(type(obj), "__module__", "") or ""
    if module.startswith(("router.", "graphql_schema.")) or (code is not None and "/router/" in code.co_filename):
        return f"{type(obj).__qualname__} {getattr(func, '__qualname__', '')}"
    return None


async def test_requests_leave_no_reference_cycles(tmp_path, upstream, upstream_factory) -> None:
    """Every request's objects are freed by reference counting: a cycle per request (the h1 client's
    parser and its exchange had one) made the GC pause the event loop for ms every ~2,000 requests."""
    from tests.inprocess import in_process

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{unused.getsockname()[1]}/v1"  # nothing listens there
    failing = upstream_factory(name="failing", models=["failing-model"], fail_status=500)
    slow = upstream_factory(name="slow", models=["slow-model"], stream_delay_s=1.0)
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    broken = upstream_factory(name="broken", script=lambda path, body: Scripted(events=[(None, chunk)], abort=True))
    servers = {
        "alpha": {"url": upstream.base_url},
        "down": {"url": down, "override": ["down-model"]},
        "failing": {"url": failing.base_url, "override": ["failing-model"]},
        "slow": {"url": slow.base_url, "override": ["slow-model"]},
        "broken": {"url": broken.base_url, "override": ["broken-model"]},
        "chat-only": {"url": upstream.base_url, "override": ["chat-only-model"], "apis": ["chat_completions"]},
    }
    async with in_process(tmp_path, servers, env={"UPSTREAM_TIMEOUT_S": "0.2"}) as router:
        assert (await router.chat("test-model")).status_code == 200  # warm: pools, caches
        with left_for_the_gc(_router_owned) as owned:
            for _ in range(5):
                assert (await router.chat("down-model")).status_code in (502, 503)  # then cooling down
                assert (await router.chat("failing-model")).status_code in (500, 502, 503)
                assert (await router.chat("slow-model", stream=True)).status_code in (502, 503, 504)  # no first event
                cut = await router.chat("broken-model", stream=True)  # the upstream drops the connection mid-stream
                assert cut.status_code == 200 and b"error" in cut.content
                translated = await router.client.post(
                    "/v1/messages",
                    json={"model": "chat-only-model", "max_tokens": 5, "messages": MESSAGES, "stream": True},
                    headers={"x-api-key": router.api_key},
                )
                assert translated.status_code == 200 and b"message_start" in translated.content
                assert (await router.chat("test-model")).status_code == 200
                assert (await router.chat("test-model", stream=True)).status_code == 200
                assert (await router.chat("no-such-model")).status_code == 404
                refused = {"Authorization": "Bearer x"}
                assert (await router.client.post("/v1/chat/completions", json={}, headers=refused)).status_code == 401
    assert owned == [], "\n".join(owned)


async def test_failing_over_from_a_backend_at_its_limits_leaves_no_reference_cycles(tmp_path, upstream_factory) -> None:
    from tests.inprocess import in_process

    full, spare = (upstream_factory(name=n, models=["shared-model"]) for n in ("full", "spare"))
    servers = {"full": {"url": full.base_url}, "spare": {"url": spare.base_url}}
    async with in_process(tmp_path, servers) as router:
        backends = (await router.gql("{ backends { id name } }"))["data"]["backends"]
        full_id = next(b["id"] for b in backends if b["name"] == "full")
        mutation = "mutation($id: ID!, $l: LimitsInput!) { setBackendLimits(backendId: $id, limits: $l) { id } }"
        assert "errors" not in await router.gql(mutation, {"id": full_id, "l": {"rpm": 1}})
        for _ in range(3):  # warm: whichever comes first, "full" has had its one request a minute
            assert (await router.chat("shared-model")).status_code == 200
        with left_for_the_gc(_router_owned) as owned:
            for _ in range(4):
                assert (await router.chat("shared-model")).status_code == 200
    assert owned == [], "\n".join(owned)
    assert sum(r.path.endswith("/chat/completions") for r in full.received) == 1
