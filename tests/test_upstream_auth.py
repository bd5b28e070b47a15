"""A backend's authHeader: which header its upstream key goes in (router/upstream_auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.catalog import BackendEntry
from router.config import ConfigError, load_config_file
from router.proxy import Target, upstream_headers
from router.upstream_auth import api_key_problem, auth_header_problem, upstream_auth
from tests.conftest import write_config
from tests.inprocess import in_process

CREATE = "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id authHeader effectiveAuthHeader } }"
UPDATE = (
    "mutation($id: ID!, $i: UpdateBackendInput!) "
    "{ updateBackend(id: $id, input: $i) { authHeader effectiveAuthHeader } }"
)


@pytest.mark.parametrize(
    ("url", "setting", "expected"),
    [
        ("http://vllm:8000/v1", None, ("Authorization", "Bearer k")),
        ("https://api.anthropic.com/v1", None, ("x-api-key", "k")),
        ("https://anthropic.com.evil.example/v1", None, ("Authorization", "Bearer k")),
        ("https://api.anthropic.com/v1", "authorization", ("Authorization", "Bearer k")),
        ("http://vllm:8000/v1", "x-api-key", ("x-api-key", "k")),
        ("https://x.openai.azure.com/openai/v1", "api-key", ("api-key", "k")),
    ],
)
def test_the_key_goes_in_the_configured_header_or_the_one_the_url_implies(
    url: str, setting: str | None, expected: tuple[str, str]
) -> None:
    assert upstream_auth(url, setting, "k") == expected
    assert upstream_auth(url, setting, None) is None


def test_a_script_header_named_like_the_key_header_is_replaced_by_the_key() -> None:
    backend = BackendEntry(1, "az", "http://a/v1", "k1", None, None, None, 1, True, auth_header="api-key")
    headers = upstream_headers(Target.of(backend), "rid", {"API-KEY": "from-script", "x-other": "1"})
    assert [(k, v) for k, v in headers.items() if k.lower() == "api-key"] == [("api-key", "k1")]
    assert headers["x-other"] == "1"


@pytest.mark.parametrize(
    "name", ["host", "Content-Length", "transfer-encoding", "connection", "x-request-id", "a b", "x\r\ny", "x:y", "é"]
)
def test_headers_that_frame_the_request_or_are_not_tokens_are_refused(name: str) -> None:
    assert auth_header_problem(name)
    assert auth_header_problem("a" * 65)
    assert auth_header_problem("api-key") is None
    assert auth_header_problem("") is None  # from the URL


@pytest.mark.parametrize("key", ["k\r\nx-evil: 1", "k\n", " k", "k\x00", "clé"])
def test_keys_that_could_split_a_header_are_refused(key: str) -> None:
    assert api_key_problem(key)
    assert api_key_problem("sk-abc 123_~") is None


def test_config_yaml_auth_header(tmp_path: Path) -> None:
    server = {"url": "http://a/v1", "api_key": "k", "auth_header": "Api-Key"}
    path = write_config(tmp_path / "config.yaml", {"az": server})
    [spec] = load_config_file(str(path), {}).servers
    assert spec.auth_header == "api-key"
    path = write_config(tmp_path / "config.yaml", {"az": {"url": "http://a/v1", "auth_header": "host"}})
    with pytest.raises(ConfigError, match=r"servers\.az\.auth_header: 'host' cannot carry the key"):
        load_config_file(str(path), {})
    path = write_config(tmp_path / "config.yaml", {"az": {"url": "http://a/v1", "api_key": "k\nx: y"}})
    with pytest.raises(ConfigError, match=r"servers\.az\.api_key: must be printable ASCII"):
        load_config_file(str(path), {})


async def test_the_upstream_sees_the_key_in_the_configured_header(tmp_path: Path, upstream_factory) -> None:
    upstream = upstream_factory(name="azure", models=["gpt-x"])
    async with in_process(tmp_path) as router:
        created = await router.gql(
            CREATE, {"i": {"name": "azure", "baseUrl": upstream.base_url, "apiKey": "sekrit", "authHeader": "Api-Key"}}
        )
        backend = created["data"]["createBackend"]
        assert backend["authHeader"] == "api-key" and backend["effectiveAuthHeader"] == "api-key"
        await router.runtime.models.refresh_all()
        # the model list was asked with the same header
        assert upstream.requests_to("/v1/models")[-1].headers.get("api-key") == "sekrit"

        response = await router.chat("[azure]gpt-x")
        assert response.status_code == 200, response.text
        headers = {k.lower(): v for k, v in upstream.requests_to("/v1/chat/completions")[-1].headers.items()}
        assert headers["api-key"] == "sekrit"
        assert "authorization" not in headers and "x-api-key" not in headers

        for setting, sent, expected in [("x-api-key", "x-api-key", "sekrit"), (None, "authorization", "Bearer sekrit")]:
            updated = await router.gql(UPDATE, {"id": backend["id"], "i": {"authHeader": setting}})
            assert updated["data"]["updateBackend"] == {"authHeader": setting, "effectiveAuthHeader": sent}
            assert (await router.chat("[azure]gpt-x")).status_code == 200
            headers = {k.lower(): v for k, v in upstream.requests_to("/v1/chat/completions")[-1].headers.items()}
            assert headers[sent] == expected
            assert "api-key" not in headers


async def test_config_yaml_auth_header_reaches_the_upstream(tmp_path: Path, upstream_factory) -> None:
    upstream = upstream_factory(name="az", models=["gpt-x"])
    servers = {"az": {"url": upstream.base_url, "api_key": "k1", "auth_header": "x-api-key", "override": ["gpt-x"]}}
    async with in_process(tmp_path, servers) as router:
        assert (await router.chat("[az]gpt-x")).status_code == 200
        headers = {k.lower(): v for k, v in upstream.requests_to("/v1/chat/completions")[-1].headers.items()}
        assert headers["x-api-key"] == "k1" and "authorization" not in headers
        backends = await router.gql("{ backends { name authHeader } }")
        assert backends["data"]["backends"] == [{"name": "az", "authHeader": "x-api-key"}]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("authHeader", "Host", "authHeader 'host' cannot carry the key"),
        ("authHeader", "x-key\r\nx-evil: 1", "authHeader must be an HTTP header name"),
        ("authHeader", "content-length", "authHeader 'content-length' cannot carry the key"),
        ("apiKey", "k\r\nx-evil: 1", "apiKey must be printable ASCII"),
    ],
)
async def test_bad_header_settings_are_refused_with_a_coded_error(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    async with in_process(tmp_path) as router:
        answer = await router.gql(CREATE, {"i": {"name": "b", "baseUrl": "http://127.0.0.1:9/v1", field: value}})
        [error] = answer["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert error["extensions"]["field"] == field, error
        assert message in error["message"]
        created = await router.gql(CREATE, {"i": {"name": "b", "baseUrl": "http://127.0.0.1:9/v1"}})
        backend_id = created["data"]["createBackend"]["id"]
        answer = await router.gql(UPDATE, {"id": backend_id, "i": {field: value}})
        assert answer["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert (await router.gql("{ backends { authHeader } }"))["data"]["backends"] == [{"authHeader": None}]


async def test_a_script_cannot_replace_or_duplicate_the_key_header_nor_see_an_x_api_key(
    tmp_path: Path, upstream_factory
) -> None:
    upstream = upstream_factory(name="az", models=["gpt-x"])
    servers = {"az": {"url": upstream.base_url, "api_key": "k1", "auth_header": "api-key", "override": ["gpt-x"]}}
    code = """function onRequest(ctx) {
      ctx.request.headers['API-KEY'] = 'from-script';
      ctx.request.headers['x-seen'] = Object.keys(ctx.request.headers).sort().join(',');
      return ctx;
    }"""
    async with in_process(tmp_path, servers) as router:
        backend_id = (await router.gql("{ backends { id } }"))["data"]["backends"][0]["id"]
        created = await router.gql(
            "mutation($i: CreateScriptInput!) { createScript(input: $i) { id } }",
            {"i": {"name": "s", "type": "PER_BACKEND", "backendId": backend_id, "code": code, "isActive": True}},
        )
        assert "errors" not in created, created
        response = await router.client.post(
            "/v1/chat/completions",
            json={"model": "[az]gpt-x", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-api-key": router.api_key},
        )
        assert response.status_code == 200, response.text
        sent = upstream.requests_to("/v1/chat/completions")[-1].headers
        assert [v for k, v in sent.items() if k.lower() == "api-key"] == ["k1"]
        assert "x-api-key" not in sent["x-seen"].split(",")
