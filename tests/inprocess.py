"""The real app in-process: httpx's ASGI transport plus the app's lifespan, no subprocess.

For everything that does not need a real process (signals, --workers, start-up): same code path
from the ASGI call on, a fraction of the start-up time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from router.app import create_app
from router.config import load_config_file, load_settings
from router.models.core import User
from tests.conftest import ADMIN_PASSWORD, write_config

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class InProcessRouter:
    client: httpx.AsyncClient
    app: Any
    api_key: str

    @property
    def runtime(self) -> Any:
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
        existing = await User.get_or_none(name="alice")
        if existing is None:
            _, key = await admin.create_user("alice", all_backends=True)
        else:
            _, key = await admin.regenerate_key(existing.id)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router.test", timeout=30) as client:
            yield InProcessRouter(client, app, key)
