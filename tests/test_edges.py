"""What admins see and users receive at the edges of /v1: unknown paths, upstream headers, the usage
the router asked for, malformed upstream answers, oversized stream events, scripts on Responses."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from tests.conftest import write_config
from tests.upstream import Scripted

MESSAGES = [{"role": "user", "content": "hi"}]


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


def post(router, path: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{router.v1}{path}", json=body, headers={"Authorization": f"Bearer {router.api_key}"}, timeout=30
    )


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
    response = post(router, "/chat/completions", {"model": "m", "messages": MESSAGES})
    assert response.status_code == 200
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["content-type"].startswith("application/json")
    for name in ("x-ratelimit-remaining-requests", "x-litellm-key-spend", "x-litellm-model-api-base", "set-cookie"):
        assert name not in response.headers

    extended, answer = scripted({"UPSTREAM_RESPONSE_HEADERS": "x-litellm-*, X-Custom"})
    answer(Scripted(body={"choices": []}, headers={**headers, "x-custom": "1"}))
    response = post(extended, "/chat/completions", {"model": "m", "messages": MESSAGES})
    assert response.headers["x-litellm-key-spend"] == "0.5" and response.headers["x-custom"] == "1"
    assert "x-ratelimit-remaining-requests" not in response.headers


def test_usage_the_client_did_not_ask_for_is_removed_even_beside_choices(scripted):
    """LiteLLM puts `usage` on a final chunk whose choices are not empty: keep the chunk, drop the field."""
    router, answer = scripted()
    answer(Scripted(events=[(None, chunk("Hel")), (None, chunk("lo", USAGE)), (None, b"[DONE]")]))
    client = openai.OpenAI(base_url=router.v1, api_key=router.api_key, max_retries=0)
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content for c in chunks) == "Hello"
    assert all(c.usage is None for c in chunks)
    asked = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
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
    response = post(router, "/chat/completions", {"model": "m", "messages": MESSAGES, "stream": stream})
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_gateway" and "Backend 's'" in error["message"]
    row = router.wait_for_logs(1)[0]
    assert row["status_code"] == 502 and row["error"]


def test_an_oversized_stream_event_breaks_the_stream_off(scripted):
    router, answer = scripted({"SSE_MAX_EVENT_MB": "1"})
    huge = chunk("x" * (2 * 1024 * 1024))
    answer(Scripted(events=[(None, chunk("ok")), (None, huge), (None, b"[DONE]")]))
    with httpx.stream(
        "POST",
        f"{router.v1}/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {router.api_key}"},
        timeout=30,
    ) as response:
        body = b"".join(response.iter_bytes())
    assert body.startswith(b"data: ") and b'"ok"' in body and b"x" * 1000 not in body
    last = json.loads(body.strip().split(b"\n\n")[-1][len(b"data: ") :])
    assert "larger than" in last["error"]["message"]
    row = router.wait_for_logs(1)[0]
    assert row["status_code"] == 502 and "larger than" in row["error"]


def test_scripts_see_the_api_and_each_responses_event_by_name(router_with_backend, upstream):
    router = router_with_backend
    user_id = router.gql_ok("{ users { id name } }")["users"]
    alice = next(u["id"] for u in user_id if u["name"] == "alice")
    code = """
function onRequest(context) {
  context.request.headers['x-api-path'] = context.request.path;
  return context;
}
function onStreamChunk(context) {
  if (context.event === 'response.output_text.delta') context.chunk.delta = context.chunk.delta.toUpperCase();
  return context;
}
"""
    router.gql_ok(
        "mutation($in: CreateScriptInput!) { createScript(input: $in) { id } }",
        {
            "in": {
                "name": f"s-{uuid.uuid4().hex[:6]}",
                "type": "PER_USER",
                "userId": alice,
                "code": code,
                "isActive": True,
            }
        },
    )
    client = openai.OpenAI(base_url=router.v1, api_key=router.api_key, max_retries=0)
    deadline_events = None
    for _ in range(50):  # the catalog reload that activates the script takes a moment
        events = list(client.responses.create(model="test-model", input="hi", stream=True))
        deadline_events = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        if deadline_events == "TOK0 TOK1 TOK2 ":
            break
    assert deadline_events == "TOK0 TOK1 TOK2 "
    assert events[-1].type == "response.completed"
    assert upstream.requests_to("/v1/responses")[-1].headers["x-api-path"] == "/v1/responses"
