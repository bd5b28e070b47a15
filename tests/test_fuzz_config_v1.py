"""Fuzzing, bounded in examples (FUZZ_EXAMPLES, default 150: a few seconds each): config.yaml, /v1 bodies.

The loader either returns a ConfigFile or raises ConfigError (never another exception). Every /v1
answer is a success from the upstream or a well-formed OpenAI error, and the router stays up.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import ConfigError, ConfigFile, load_config_file
from tests.inprocess import in_process
from tests.upstream import UpstreamServer

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["http://h/v1", "https://u:p@h:8443/v1", "${KEY}", "${UNSET}", "*", "ftp://x", "http://h:0/v1"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

# --- config.yaml ---------------------------------------------------------------------------------

server_keys = st.sampled_from(["url", "api_key", "filter", "override", "append", "weight", "apis", "other"])
servers = st.dictionaries(
    st.one_of(st.text(max_size=12), st.integers(), st.sampled_from(["alpha", "b-1", "[x]"])),
    st.one_of(json_values, st.dictionaries(server_keys, json_values, max_size=7)),
    max_size=4,
)
documents = st.one_of(
    st.fixed_dictionaries({"servers": servers}, optional={"prune": json_values, "extra": json_values}),
    json_values,
)


@FUZZ
@given(document=documents, raw=st.one_of(st.none(), st.text(max_size=200)))
def test_config_loader_only_raises_config_error(document: Any, raw: str | None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yaml"
        path.write_text(raw if raw is not None else yaml.safe_dump(document))
        try:
            loaded = load_config_file(str(path), {"KEY": "sk-x"})
        except ConfigError as exc:
            assert str(exc)
        else:
            assert isinstance(loaded, ConfigFile)
            for spec in loaded.servers:
                assert spec.base_url.startswith(("http://", "https://"))


# --- /v1 request bodies --------------------------------------------------------------------------


class TolerantUpstream(UpstreamServer):
    """The test upstream, answering what it cannot handle with an OpenAI-shaped 400 (as real ones do)."""

    async def _guarded(self, handler: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:
            error = {"message": f"upstream rejects: {exc.__class__.__name__}", "type": "invalid_request_error"}
            return web.json_response({"error": {**error, "code": None}}, status=400)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(super()._chat, request)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(super()._completions, request)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(super()._embeddings, request)


models = st.one_of(
    st.sampled_from(["test-model", "[alpha]test-model", "[alpha]", "[nope]x", "[", "missing"]), json_values
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"model": models},
        optional={
            "messages": st.one_of(
                json_values, st.lists(st.fixed_dictionaries({"role": json_values, "content": json_values}))
            ),
            "prompt": json_values,
            "input": json_values,
            "stream": st.one_of(st.booleans(), json_values),
            "stream_options": json_values,
            "max_tokens": json_values,
            "n": json_values,
        },
    ).map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
)
endpoints = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])


def assert_well_formed(status: int, content_type: str, content: bytes) -> None:
    if status == 200 and content_type.startswith("text/event-stream"):
        assert content.rstrip().endswith(b"data: [DONE]"), content[-200:]
        return
    assert content_type.startswith("application/json"), (status, content_type, content[:200])
    body = json.loads(content)
    if status == 200:
        assert "choices" in body or "data" in body, body
        return
    assert 400 <= status < 600, status
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and "code" in error, body


def test_v1_bodies_get_openai_answers_and_the_router_stays_up(tmp_path: Path) -> None:
    upstream = TolerantUpstream(name="alpha", models=["test-model"]).start()
    loop = asyncio.new_event_loop()
    context = in_process(tmp_path, {"alpha": {"url": upstream.base_url}})
    try:
        router = loop.run_until_complete(context.__aenter__())
    except BaseException:  # also the skip of the TEST_DB=postgres run: nothing may stay open
        loop.close()
        upstream.stop()
        raise
    headers = {"Authorization": f"Bearer {router.api_key}", "Content-Type": "application/json"}
    try:

        @FUZZ
        @given(endpoint=endpoints, body=bodies)
        def check(endpoint: str, body: bytes) -> None:
            response = loop.run_until_complete(router.client.post(endpoint, content=body, headers=headers))
            assert_well_formed(response.status_code, response.headers.get("content-type", ""), response.content)

        check()
        health = loop.run_until_complete(router.client.get("/healthz"))
        assert health.status_code == 200
        # Up and answering (a backend may be cooling down after upstream failures the fuzzing provoked).
        models = loop.run_until_complete(router.client.get("/v1/models", headers=headers))
        assert models.status_code == 200 and models.json()["data"]
        last = loop.run_until_complete(router.chat("test-model"))
        assert_well_formed(last.status_code, last.headers.get("content-type", ""), last.content)
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()
        upstream.stop()


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_v1_body_is_a_clear_answer(tmp_path: Path, depth: int) -> None:
    upstream = TolerantUpstream(name="alpha", models=["test-model"]).start()

    async def run() -> None:
        async with in_process(tmp_path, {"alpha": {"url": upstream.base_url}}) as router:
            body = b'{"model": "test-model", "messages": ' + b"[" * depth + b"]" * depth + b"}"
            headers = {"Authorization": f"Bearer {router.api_key}"}
            response = await router.client.post("/v1/chat/completions", content=body, headers=headers)
            assert response.status_code < 500
            assert_well_formed(response.status_code, response.headers["content-type"], response.content)

    try:
        asyncio.run(run())
    finally:
        upstream.stop()
