"""Translation through the real router: backends declare the APIs they speak (`apis`), and clients
using another API reach them through router.protocols.translate. The official SDKs are the clients.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RouterProcess, write_config
from tests.test_graphql_api import fails, ok, unique
from tests.upstream import UpstreamServer


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProcess, UpstreamServer]]:
    tmp = tmp_path_factory.mktemp("translation")
    chat_only = UpstreamServer(name="chat-only", models=["chat-model"]).start()
    config = write_config(tmp / "config.yaml", {"chat": {"url": chat_only.base_url, "apis": ["chat_completions"]}})
    router = RouterProcess(tmp / "router", {}, config).start()
    yield router, chat_only
    router.stop()
    chat_only.stop()


def test_backend_apis_from_config_and_graphql(env: tuple[RouterProcess, UpstreamServer]) -> None:
    router, upstream = env
    backends = {b["name"]: b for b in ok(router, "{ backends { id name apis } }")["backends"]}
    assert backends["chat"]["apis"] == ["CHAT_COMPLETIONS"]

    create = "mutation($i: CreateBackendInput!) { createBackend(input: $i) { id apis } }"
    created = ok(router, create, {"i": {"name": unique("be"), "baseUrl": upstream.base_url}})["createBackend"]
    assert created["apis"] == ["CHAT_COMPLETIONS", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "MESSAGES"]  # default

    update = "mutation($id: ID!, $i: UpdateBackendInput!) { updateBackend(id: $id, input: $i) { id apis } }"
    changed = ok(router, update, {"id": created["id"], "i": {"apis": ["MESSAGES", "CHAT_COMPLETIONS", "MESSAGES"]}})
    assert changed["updateBackend"]["apis"] == ["CHAT_COMPLETIONS", "MESSAGES"]
    unchanged = ok(router, update, {"id": created["id"], "i": {"weight": 2}})
    assert unchanged["updateBackend"]["apis"] == ["CHAT_COMPLETIONS", "MESSAGES"]
    error = fails(router, update, {"id": created["id"], "i": {"apis": []}})
    assert error["code"] == "BAD_USER_INPUT" and error["field"] == "apis"
    reset = ok(router, update, {"id": created["id"], "i": {"apis": None}})
    assert len(reset["updateBackend"]["apis"]) == 5
