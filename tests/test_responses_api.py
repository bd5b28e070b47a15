"""The Responses API through the real router: the official openai SDK against local upstreams that
serve it as vLLM does (typed SSE events, stored responses, usage details)."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from tests.clients import openai_client
from tests.conftest import RouterProcess, require_redis, write_config
from tests.upstream import Scripted

INPUT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def two_backends(upstream_factory, tmp_path):
    """Two upstreams serving the same model: round-robin alternates between them."""
    a = upstream_factory(name="a", models=["m"], cached_tokens=3, reasoning_tokens=2)
    b = upstream_factory(name="b", models=["m"], cached_tokens=3, reasoning_tokens=2)
    config = write_config(tmp_path / "c.yaml", {"a": {"url": a.base_url}, "b": {"url": b.base_url}})
    return a, b, config


def test_create_plain_and_streamed_with_usage_details(router_factory, two_backends):
    config = two_backends[2]
    router = router_factory(config=config)
    client = openai_client(router, router.add_user("alice"))

    response = client.responses.create(model="m", input=INPUT)
    assert response.output_text == "tok0 tok1 tok2 "
    assert response.usage.input_tokens_details.cached_tokens == 3

    events = list(client.responses.create(model="m", input=INPUT, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "tok0 tok1 tok2 "
    streamed_id = events[0].response.id

    rows = router.wait_for_logs(2)
    assert [r["endpoint"] for r in rows] == ["/v1/responses", "/v1/responses"]
    assert {r["response_id"] for r in rows} == {response.id, streamed_id}
    for row in rows:
        assert row["status_code"] == 200 and row["completion_tokens"] == 3 and row["prompt_tokens"] > 0
        assert (row["cached_tokens"], row["reasoning_tokens"]) == (3, 2)
    assert next(r for r in rows if r["stream"])["ttft_ms"] is not None


def test_stream_reaches_the_client_byte_for_byte(router_factory, upstream_factory, tmp_path):
    usage = {
        "input_tokens": 4,
        "output_tokens": 1,
        "total_tokens": 5,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    created = {"id": "resp_x1", "object": "response", "status": "in_progress", "usage": None}
    delta = {"delta": "héllo", "item_id": "m", "output_index": 0, "content_index": 0}
    events = [
        ("response.created", {"type": "response.created", "sequence_number": 0, "response": created}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1, **delta}),
        (
            "response.completed",
            {"type": "response.completed", "sequence_number": 2, "response": {**created, "usage": usage}},
        ),
    ]
    expected = b"".join(f"event: {n}\n".encode() + b"data: " + json.dumps(d).encode() + b"\n\n" for n, d in events)
    up = upstream_factory(name="s", models=["m"], script=lambda path, body: Scripted(events=events))
    router = router_factory(config=write_config(tmp_path / "c.yaml", {"s": {"url": up.base_url}}))
    key = router.add_user("alice")
    with httpx.stream(
        "POST",
        f"{router.v1}/responses",
        json={"model": "m", "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        received = b"".join(response.iter_bytes())
    assert received == expected
    row = router.wait_for_logs(1)[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (4, 1, 1)
    assert row["response_id"] == "resp_x1"


def test_stored_responses_stay_with_their_backend(router_factory, two_backends):
    config = two_backends[2]
    router = router_factory(config=config)
    client = openai_client(router, router.add_user("alice"))
    created = [client.responses.create(model="m", input=INPUT) for _ in range(4)]
    servers = [r.metadata["server"] for r in created]
    assert sorted(servers) == ["a", "a", "b", "b"]  # round-robin spread them

    for response, server in zip(created, servers, strict=True):
        follow_up = client.responses.create(model="m", input="and then?", previous_response_id=response.id)
        assert follow_up.metadata["server"] == server
        assert follow_up.output_text.startswith(f"(after {response.id})")
        streamed = list(client.responses.create(model="m", input="more", previous_response_id=response.id, stream=True))
        assert streamed[-1].response.metadata["server"] == server
        assert client.responses.retrieve(response.id).metadata["server"] == server
        items = client.responses.input_items.list(response.id)
        assert items.data[0].content[0].text == "hello there"
    cancelled = client.responses.cancel(created[0].id)
    assert cancelled.status == "cancelled"
    client.responses.delete(created[1].id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created[1].id)

    count = client.post("/responses/input_tokens", body={"model": "m", "input": "one two three"}, cast_to=object)
    assert count["object"] == "response.input_tokens" and count["input_tokens"] > 0
    # 4 creates; per response a follow-up, a stream, a retrieve and its input items; cancel, delete, 404, count
    rows = router.wait_for_logs(4 + 4 * 4 + 4)
    assert len(rows) == 24, [r["endpoint"] for r in rows]
    endpoints = {r["endpoint"] for r in rows}
    assert {"/v1/responses/{id}", "/v1/responses/{id}/input_items", "/v1/responses/{id}/cancel"} <= endpoints


def test_other_users_get_the_404_of_an_unknown_id(router_factory, two_backends):
    config = two_backends[2]
    router = router_factory(config=config)
    alice = openai_client(router, router.add_user("alice"))
    bob_key = router.add_user("bob")
    mine = alice.responses.create(model="m", input=INPUT)
    unknown = "resp_" + uuid.uuid4().hex

    def as_bob(method: str, path: str) -> httpx.Response:
        return httpx.request(method, f"{router.v1}{path}", headers={"Authorization": f"Bearer {bob_key}"}, timeout=10)

    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/input_items")):
        theirs = as_bob(method, f"/responses/{mine.id}{suffix}")
        nobody = as_bob(method, f"/responses/{unknown}{suffix}")
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json() == json.loads(nobody.text.replace(unknown, mine.id))
    refused = httpx.post(
        f"{router.v1}/responses",
        json={"model": "m", "input": "x", "previous_response_id": mine.id},
        headers={"Authorization": f"Bearer {bob_key}"},
        timeout=10,
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "previous_response_not_found"
    assert alice.responses.retrieve(mine.id).id == mine.id  # bob's DELETE never reached the backend


def test_bindings_survive_a_restart_through_the_request_log(router_factory, two_backends, tmp_path):
    config = two_backends[2]
    first = router_factory(config=config, data_dir=tmp_path / "r")
    key = first.add_user("alice")
    client = openai_client(first, key)
    created = [client.responses.create(model="m", input=INPUT) for _ in range(2)]
    first.wait_for_logs(2)
    first.stop()
    same_databases = {k: first.env[k] for k in ("CORE_DB_URL", "ANALYTICS_DB_URL") if k in first.env}  # PostgreSQL
    second = router_factory(env=same_databases, config=config, data_dir=tmp_path / "r")
    client = openai_client(second, key)
    for response in created:
        assert client.responses.retrieve(response.id).metadata == response.metadata
        follow_up = client.responses.create(model="m", input="again", previous_response_id=response.id)
        assert follow_up.metadata["server"] == response.metadata["server"]


def test_bindings_are_shared_through_redis(two_backends, tmp_path):
    """Two routers with their own databases (personal mode: the same local user and backends) and one Redis."""
    config = two_backends[2]
    env = {
        "REDIS_URL": require_redis(),
        "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
        "ENABLE_ACCOUNT_MANAGEMENT": "false",
    }
    first = RouterProcess(tmp_path / "one", env, config).start()
    second = RouterProcess(tmp_path / "two", env, config).start()
    try:
        created = [openai_client(first, "local").responses.create(model="m", input=INPUT) for _ in range(4)]
        client = openai_client(second, "local")
        for response in created:
            assert client.responses.retrieve(response.id).metadata["server"] == response.metadata["server"]
    finally:
        first.stop()
        second.stop()
