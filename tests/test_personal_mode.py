"""Personal mode (ENABLE_ACCOUNT_MANAGEMENT=false) and LLMsRouter-style `[alias]model` listings."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.clients import openai_client
from tests.conftest import write_config

MESSAGES = [{"role": "user", "content": "hi"}]


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, to see what the router listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def two_providers(router_factory, upstream_factory, tmp_path):
    alpha = upstream_factory(name="alpha", models=["shared", "a-only"])
    beta = upstream_factory(name="beta", models=["shared"])
    config = write_config(tmp_path / "c.yaml", {"alpha": {"url": alpha.base_url}, "beta": {"url": beta.base_url}})
    return config


def test_accounts_off_needs_no_key_and_logs_the_local_user(router_factory, two_providers):
    router = router_factory(config=two_providers, env={"ENABLE_ACCOUNT_MANAGEMENT": "false"})
    for key in ("anything", "sk-whatever"):
        client = openai_client(router, key)
        assert client.chat.completions.create(model="a-only", messages=MESSAGES).choices[0].message.content
    keyless = httpx.post(f"{router.v1}/chat/completions", json={"model": "shared", "messages": MESSAGES}, timeout=30)
    assert keyless.status_code == 200
    rows = router.wait_for_logs(3)
    assert len(rows) == 3 and {r["user_name"] for r in rows} == {"local"}
    # The admin API still wants its token.
    assert router.graphql("{ users { id } }", token=None)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "ACCOUNTS ARE OFF" in router.log()


def test_accounts_off_binds_loopback_unless_a_host_is_set(router_factory, two_providers):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to test binding with")
    # `serve` without --host (serve's own start-up decides the address: router.cli.serve_settings), one
    # router at a time so that each may run in this process.
    personal = router_factory(config=two_providers, env={"ENABLE_ACCOUNT_MANAGEMENT": "false"}, start=False)
    personal.bind_loopback = False
    personal.start()
    assert not reachable(address, personal.port)
    assert "Listening on 127.0.0.1 only" in personal.log()
    personal.stop()

    team = router_factory(config=two_providers, start=False)  # accounts on: the default 0.0.0.0
    team.bind_loopback = False
    team.start()
    assert reachable(address, team.port)
    team.stop()

    explicit = router_factory(
        config=two_providers, env={"ENABLE_ACCOUNT_MANAGEMENT": "false", "SERVER_HOST": "0.0.0.0"}, start=False
    )
    explicit.bind_loopback = False
    explicit.start()
    assert reachable(address, explicit.port)


def test_aliased_model_list_routes_each_entry_to_its_backend(router_factory, two_providers):
    router = router_factory(config=two_providers, env={"MODEL_LIST_STYLE": "aliased"})
    key = router.add_user("pat")
    client = openai_client(router, key)
    listed = {m.id: m.owned_by for m in client.models.list()}
    assert listed == {"[alpha]shared": "alpha", "[alpha]a-only": "alpha", "[beta]shared": "beta"}
    for model_id, backend in listed.items():
        response = client.chat.completions.with_raw_response.create(model=model_id, messages=MESSAGES)
        body = response.http_response.json()
        assert body["echo"]["server"] == backend and body["echo"]["body"]["model"] == model_id.split("]")[1]


def test_accounts_on_by_default_with_plain_model_ids(router_with_backend):
    router = router_with_backend
    assert httpx.get(f"{router.v1}/models").status_code == 401
    models = openai_client(router).models.list()
    assert {m.id for m in models} == {"test-model", "shared-model"}
