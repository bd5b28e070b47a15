"""Hardening of what the router stores, shows and logs (issue 15 items 3, 12-15; issue 16's URL checks).

Most tests run the real app in-process (httpx's ASGI transport plus the app's lifespan) in front
of a real local upstream; the SIGBUS/-shm one needs a router subprocess.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from router.app import create_app
from router.config import ConfigError, load_config_file, load_settings
from router.urls import UrlError, allowed_proxy_url, check_http_url, normalize_proxy_url, redact_url
from tests.conftest import ADMIN_PASSWORD, write_config

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class InProcessRouter:
    client: httpx.AsyncClient
    app: object
    api_key: str

    @property
    def runtime(self):
        return self.app.state.runtime

    async def chat(self, model: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        body = {"model": model, "messages": MESSAGES, **kwargs}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def gql(self, query: str, variables: dict | None = None) -> dict:
        response = await self.client.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {ADMIN_PASSWORD}"},
        )
        return response.json()


@contextlib.asynccontextmanager
async def in_process(
    data_dir: Path, servers: dict[str, dict] | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[InProcessRouter]:
    """The app with its lifespan, config.yaml `servers` synced and a user allowed everything."""
    environ = {
        "DATA_DIR": str(data_dir),
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CATALOG_POLL_INTERVAL_S": "0.5",
        "LOG_FLUSH_INTERVAL_S": "0.05",
        **(env or {}),
    }
    settings = load_settings(environ, dotenv=False)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        admin = app.state.admin
        if servers:
            specs = load_config_file(str(write_config(data_dir / "config.yaml", servers)), environ)
            await admin.sync_backends(specs)
            await app.state.runtime.models.refresh_all()
        _, key = await admin.create_user("alice", all_backends=True)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router.test", timeout=30) as client:
            yield InProcessRouter(client, app, key)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    return error


# --- one URL module (issue 16) and ?proxy= normalisation (item 13) -----------------------------


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("http://h/v1", True),
        ("HTTP://H:80/v1/", True),
        ("http://h/v1/./x", True),
        ("http://h/v1/x/../y", True),
        ("http://h/v1/../secret", False),
        ("http://h/v1/../../secret", False),
        ("http://h/v1/%2e%2e/secret", False),
        ("http://h/v1/%2E%2E/%2e%2E/secret", False),
        ("http://h/v1/..%2fsecret", False),
        ("http://h/v1/%252e%252e/secret", False),
        ("http://h/v1\\..\\secret", False),
        ("http://h/v1evil", False),
        ("http://h@evil/v1", False),
        ("http://u:p@h/v1", False),
        ("http://h/v1?x=/../", False),
        ("http://h:81/v1", False),
        ("file:///etc/passwd", False),
        ("http://h/v1/\nx", False),
    ],
)
def test_proxy_urls_are_normalised_before_the_allowlist(target: str, allowed: bool) -> None:
    from router.errors import ApiError

    if allowed:
        assert allowed_proxy_url(target, ["http://h/v1"]).startswith("http://h/v1")
    else:
        with pytest.raises(ApiError) as caught:
            allowed_proxy_url(target, ["http://h/v1"])
        assert caught.value.status == 403
        assert "u:p" not in caught.value.message


def test_url_checks_and_redaction() -> None:
    assert normalize_proxy_url("http://h/a/b/../../../c") == "http://h/c"
    assert check_http_url(" https://h/v1/ ") == "https://h/v1"
    assert redact_url("https://user:secret@h/v1") == "https://***@h/v1"
    for bad in ("ftp://h", "http://", "http://h:99999/v1", "http://h/v 1", "http://h/#x", 5):
        with pytest.raises(UrlError):
            check_http_url(bad)  # type: ignore[arg-type]
    with pytest.raises(UrlError) as caught:
        check_http_url("ftp://user:secret@h")
    assert "secret" not in str(caught.value)


def test_config_and_allowlist_use_the_same_url_check(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"a": {"url": "http://h:99999/v1"}})
    with pytest.raises(ConfigError, match=r"servers\.a\.url: invalid port"):
        load_config_file(str(path), {})
    with pytest.raises(ConfigError, match="PROXY_ALLOWLIST"):
        load_settings({"DATA_DIR": str(tmp_path), "PROXY_ALLOWLIST": "http://h/v1?x"}, dotenv=False)


async def test_proxy_path_traversal_is_refused(tmp_path: Path, upstream_factory) -> None:
    upstream = upstream_factory(name="target", models=["m"])
    allowed_prefix = f"http://127.0.0.1:{upstream.port}/sub/v1"
    async with in_process(tmp_path, env={"PROXY_ALLOWLIST": allowed_prefix}) as router:
        headers = {"Authorization": f"Bearer {router.api_key}"}
        for escape in ("/../../v1", "/%2e%2e/%2e%2e/v1", "/x/../../../v1"):
            response = await router.client.post(
                "/v1/chat/completions",
                params={"proxy": allowed_prefix + escape},
                json={"model": "m", "messages": MESSAGES},
                headers=headers,
            )
            assert_openai_error(response, 403)
    assert not upstream.requests_to("/v1/chat/completions")
