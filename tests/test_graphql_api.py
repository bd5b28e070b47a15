"""The GraphQL admin API over real HTTP against a running router: every query and mutation of the
contract, each error code, admin auth, changes taking effect on /v1 at once, and CLI agreement.

One router (and two upstreams) per test module and xdist worker; tests use unique names so they
do not depend on each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.clients import openai_client
from tests.conftest import (
    ADMIN_PASSWORD,
    RouterProcess,
    create_pg_database,
    drop_pg_database,
    postgres_url,
    require_postgres,
    router_for,
    write_config,
)
from tests.upstream import UpstreamServer

CORS_ORIGIN = "https://admin.example.com"


# --- helpers (also used by the other test_graphql modules) ------------------------------------


@dataclass
class GqlEnv:
    router: RouterProcess
    alpha: UpstreamServer
    beta: UpstreamServer


def start_env(tmp: Path, env: dict[str, str] | None = None, in_thread: bool = False) -> tuple[GqlEnv, list[str]]:
    """Two upstreams and a router with both as config.yaml backends ("alpha", "beta").

    A subprocess, or with `in_thread` in-process where it may be (for modules whose tests start no
    other in-process router and run no CLI in this process: those would then need a process each).
    """
    alpha = UpstreamServer(name="alpha", models=["test-model", "shared-model"]).start()
    beta = UpstreamServer(name="beta", models=["beta-model", "shared-model"]).start()
    config = write_config(tmp / "config.yaml", {"alpha": {"url": alpha.base_url}, "beta": {"url": beta.base_url}})
    env = dict(env or {})
    databases: list[str] = []
    if os.environ.get("TEST_DB") == "postgres":
        server = require_postgres()
        databases = [create_pg_database(server), create_pg_database(server)]
        env.update(CORE_DB_URL=databases[0], ANALYTICS_DB_URL=databases[1])
    router = (router_for if in_thread else RouterProcess)(tmp / "router", env, config).start()
    return GqlEnv(router, alpha, beta), databases


def stop_env(gql_env: GqlEnv, databases: list[str]) -> None:
    gql_env.router.stop()
    gql_env.alpha.stop()
    gql_env.beta.stop()
    for db in databases:
        drop_pg_database(postgres_url(), db)


def gql(
    router: RouterProcess,
    query: str,
    variables: dict | None = None,
    token: str | None = ADMIN_PASSWORD,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    all_headers = {"Authorization": f"Bearer {token}"} if token else {}
    all_headers.update(headers or {})
    response = httpx.post(
        f"{router.url}/graphql", json={"query": query, "variables": variables or {}}, headers=all_headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def ok(router: RouterProcess, query: str, variables: dict | None = None, **kwargs: Any) -> dict[str, Any]:
    result = gql(router, query, variables, **kwargs)
    assert not result.get("errors"), result["errors"]
    return result["data"]


def fails(router: RouterProcess, query: str, variables: dict | None = None, **kwargs: Any) -> dict[str, Any]:
    """The single error of a refused operation (its extensions flattened in, plus `message`)."""
    result = gql(router, query, variables, **kwargs)
    assert result.get("errors"), result
    error = result["errors"][0]
    return {"message": error["message"], **error.get("extensions", {})}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat(router: RouterProcess, key: str, model: str = "test-model", text: str = "hi") -> str:
    client = openai_client(router, key, timeout=30)
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return completion.choices[0].message.content or ""


def v1_status(router: RouterProcess, key: str, model: str = "test-model") -> int:
    response = httpx.post(
        f"{router.v1}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return response.status_code


def wait_for_logs(router: RouterProcess, flt: dict, count: int, timeout: float = 10.0) -> dict:
    """Poll requestLogs until `count` rows match `flt` (the writer flushes every LOG_FLUSH_INTERVAL_S)."""
    deadline = time.monotonic() + timeout
    while True:
        page = ok(
            router,
            "query($f: RequestLogFilter) { requestLogs(filter: $f, first: 500) { totalCount items { "
            + LOG_FIELDS
            + " } } }",
            {"f": flt},
        )["requestLogs"]
        if page["totalCount"] >= count or time.monotonic() > deadline:
            assert page["totalCount"] >= count, page
            return page
        time.sleep(0.05)


LOG_FIELDS = (
    "id requestId createdAt userId userName backendId backendName model endpoint statusCode stream "
    "promptTokens completionTokens totalTokens latencyMs timeToFirstTokenMs error attempts"
)
USER_FIELDS = "id name email isActive allBackends apiKeyPrefix createdAt updatedAt permissions { id backend { name } }"
BACKEND_FIELDS = (
    "id name baseUrl hasApiKey modelFilter modelOverride modelAppend models weight isActive healthy createdAt updatedAt"
)
SCRIPT_FIELDS = "id name type user { id name } backend { id name } code isActive priority createdAt updatedAt"

CREATE_USER = "mutation($i: CreateUserInput!) { createUser(input: $i) { apiKey user { " + USER_FIELDS + " } } }"
UPDATE_USER = "mutation($id: ID!, $i: UpdateUserInput!) { updateUser(id: $id, input: $i) { " + USER_FIELDS + " } }"
CREATE_BACKEND = "mutation($i: CreateBackendInput!) { createBackend(input: $i) { " + BACKEND_FIELDS + " } }"
UPDATE_BACKEND = (
    "mutation($id: ID!, $i: UpdateBackendInput!) { updateBackend(id: $id, input: $i) { " + BACKEND_FIELDS + " } }"
)
CREATE_PERMISSION = (
    "mutation($u: ID!, $b: ID!) { createPermission(input: {userId: $u, backendId: $b}) "
    "{ id createdAt user { id name } backend { id name } } }"
)
DELETE_PERMISSION = "mutation($u: ID!, $b: ID!) { deletePermission(userId: $u, backendId: $b) }"
CREATE_SCRIPT = "mutation($i: CreateScriptInput!) { createScript(input: $i) { " + SCRIPT_FIELDS + " } }"
UPDATE_SCRIPT = (
    "mutation($id: ID!, $i: UpdateScriptInput!) { updateScript(id: $id, input: $i) { " + SCRIPT_FIELDS + " } }"
)


def create_user(router: RouterProcess, name: str | None = None, **fields: Any) -> tuple[dict, str]:
    data = ok(router, CREATE_USER, {"i": {"name": name or unique("user"), **fields}})["createUser"]
    return data["user"], data["apiKey"]


def create_backend(router: RouterProcess, base_url: str, name: str | None = None, **fields: Any) -> dict:
    return ok(router, CREATE_BACKEND, {"i": {"name": name or unique("be"), "baseUrl": base_url, **fields}})[
        "createBackend"
    ]


def backend_id(router: RouterProcess, name: str) -> str:
    return next(b["id"] for b in ok(router, "{ backends { id name } }")["backends"] if b["name"] == name)


def user_on(router: RouterProcess, *backend_names: str) -> tuple[dict, str]:
    """A new user allowed exactly these backends (others' test backends may serve the same models)."""
    user, key = create_user(router)
    for name in backend_names:
        ok(router, CREATE_PERMISSION, {"u": user["id"], "b": backend_id(router, name)})
    return user, key


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genv(tmp_path_factory) -> Iterator[GqlEnv]:
    gql_env, databases = start_env(tmp_path_factory.mktemp("graphql-api"), {"CORS_ORIGINS": CORS_ORIGIN})
    yield gql_env
    stop_env(gql_env, databases)


@pytest.fixture
def router(genv: GqlEnv) -> RouterProcess:
    return genv.router


# --- auth -------------------------------------------------------------------------------------


LOGIN = "mutation($p: String!) { login(password: $p) { token expiresAt } }"


def test_every_operation_but_login_needs_a_token(router):
    for query in (
        "{ users { id } }",
        "{ backendMetrics { inFlight } }",
        "{ __schema { queryType { name } } }",
        'mutation { createUser(input: {name: "x"}) { apiKey } }',
        'mutation { deleteUser(id: "1") }',
    ):
        for token in (None, "wrong-password", "9999999999.forged-signature"):
            result = gql(router, query, token=token, headers={"X-Forwarded-For": "10.0.0.1"})
            assert result["data"] is None
            assert [e["extensions"]["code"] for e in result["errors"]] == ["UNAUTHENTICATED"], result
    # Nothing was created by the refused mutation.
    assert all(u["name"] != "x" for u in ok(router, "{ users { name } }")["users"])


def test_login_issues_a_session_token(router):
    login = ok(router, LOGIN, {"p": ADMIN_PASSWORD}, token=None)["login"]
    assert login["token"] != ADMIN_PASSWORD
    assert login["expiresAt"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    assert ok(router, "{ users { id } }", token=login["token"])["users"] is not None
    wrong = fails(router, 'mutation { login(password: "nope") { token } }', token=None)
    assert wrong["code"] == "UNAUTHENTICATED"
    assert "Wrong admin password" in wrong["message"]
    # A tampered session token is refused.
    expiry, _, signature = login["token"].partition(".")
    tampered = f"{int(expiry) + 1000}.{signature}"
    assert fails(router, "{ users { id } }", token=tampered)["code"] == "UNAUTHENTICATED"


def test_repeated_failed_logins_are_slowed_down(router):
    attacker = {"X-Forwarded-For": "203.0.113.7"}  # uvicorn trusts X-Forwarded-For from loopback
    session = ok(router, LOGIN, {"p": ADMIN_PASSWORD}, token=None, headers=attacker)
    token = session["login"]["token"]
    for _ in range(6):
        error = fails(router, 'mutation { login(password: "guess") { token } }', token=None, headers=attacker)
        assert "Wrong admin password" in error["message"]
    # Now even the right password is refused from that address for a while...
    blocked = fails(router, LOGIN, {"p": ADMIN_PASSWORD}, token=None, headers=attacker)
    assert blocked["code"] == "UNAUTHENTICATED"
    assert blocked["retryAfterSeconds"] >= 1
    assert "Too many failed attempts" in blocked["message"]
    # ...also as a bearer token, which could otherwise be used to guess the password...
    assert fails(router, "{ users { id } }", headers=attacker)["code"] == "UNAUTHENTICATED"
    # ...while a session token issued before keeps working, and other addresses are not affected.
    assert "users" in ok(router, "{ users { id } }", token=token, headers=attacker)
    assert "users" in ok(router, "{ users { id } }", headers={"X-Forwarded-For": "203.0.113.8"})


def test_admin_api_disabled_without_password(router_factory):
    disabled = router_factory(env={"ADMIN_PASSWORD": ""})
    for query, token in (
        ("{ users { id } }", "anything"),
        ("{ users { id } }", None),
        ('mutation { login(password: "") { token } }', None),
        ('mutation { login(password: "test-admin-password") { token } }', None),
    ):
        error = fails(disabled, query, token=token)
        assert error["code"] == "FORBIDDEN"
        assert "admin API is disabled" in error["message"]
        assert "ADMIN_PASSWORD" in error["message"]
    assert asyncio.run(ws_close_code(disabled, "anything")) == 4403


async def ws_close_code(router: RouterProcess, token: str | None, origin: str | None = None) -> int | None:
    """Connect, send connection_init with `token`; the close code, or None if acknowledged."""
    headers = {"Origin": origin} if origin else None
    async with connect(
        f"ws://127.0.0.1:{router.port}/graphql", subprotocols=["graphql-transport-ws"], additional_headers=headers
    ) as ws:
        payload = {"Authorization": f"Bearer {token}"} if token else {}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        assert message["type"] == "connection_ack"
        return None


# --- protections ------------------------------------------------------------------------------


def test_depth_limit_and_page_cap(router):
    nested = "{ users { name } }"
    for _ in range(5):  # depth 2 + 5 * 2 = 12 > 10
        nested = nested.replace("{ name }", "{ permissions { user { name } } }")
    error = fails(router, nested)
    assert error["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "exceeds maximum operation depth" in error["message"]
    error = fails(router, "{ requestLogs(first: 501) { totalCount } }")
    assert (error["code"], error["field"], error["max"]) == ("BAD_USER_INPUT", "first", 500)
    assert fails(router, "{ requestLogs(first: 0) { totalCount } }")["field"] == "first"
    assert ok(router, "{ requestLogs(first: 500) { totalCount } }")["requestLogs"]["totalCount"] >= 0
    assert fails(router, '{ requestLogs(after: "not-a-cursor") { totalCount } }')["field"] == "after"


def test_invalid_queries_use_apollo_codes(router):
    # Apollo's conventions: documents that do not parse or validate are refused before they run.
    assert fails(router, "{ users { apiKey } }")["code"] == "GRAPHQL_VALIDATION_FAILED"  # keys are never readable
    assert fails(router, "{ backends { apiKey } }")["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert fails(router, "{ users { ")["code"] == "GRAPHQL_PARSE_FAILED"
    # A value that does not fit its variable's type is the caller's input, as before.
    assert fails(router, "query($n: Int) { requestLogs(first: $n) { totalCount } }", {"n": "x"})["code"] == (
        "BAD_USER_INPUT"
    )


def test_cors_for_configured_origins(router):
    preflight = httpx.options(
        f"{router.url}/graphql",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = httpx.post(
        f"{router.url}/graphql",
        json={"query": "{ users { id } }"},
        headers={"Origin": CORS_ORIGIN, "Authorization": f"Bearer {ADMIN_PASSWORD}"},
    )
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    other = httpx.options(
        f"{router.url}/graphql",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_cross_site_websockets_only_from_configured_origins(router):
    assert asyncio.run(ws_close_code(router, ADMIN_PASSWORD, origin=CORS_ORIGIN)) is None
    assert asyncio.run(ws_close_code(router, ADMIN_PASSWORD, origin=f"http://127.0.0.1:{router.port}")) is None
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(ws_close_code(router, ADMIN_PASSWORD, origin="https://evil.example"))
    assert refused.value.response.status_code == 403


def test_graphiql_page(router):
    response = httpx.get(f"{router.url}/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


def test_queries_over_get(router):
    response = httpx.get(
        f"{router.url}/graphql",
        params={"query": "{ users { id } }"},
        headers={"Authorization": f"Bearer {ADMIN_PASSWORD}"},
    )
    assert response.status_code == 200
    assert "users" in response.json()["data"]


# --- users ------------------------------------------------------------------------------------


def test_users_lifecycle(router):
    name = unique("ann")
    user, key = create_user(router, name, email="ann@example.com")
    assert key.startswith("sk-")
    assert user["name"] == name and user["email"] == "ann@example.com"
    assert user["isActive"] is True
    assert user["allBackends"] is False  # the API's default; the CLI's is '*'
    assert key.startswith(user["apiKeyPrefix"]) and len(user["apiKeyPrefix"]) < len(key) // 2
    assert user["permissions"] == []

    listed = ok(router, "{ users { " + USER_FIELDS + " } }")["users"]
    assert user in listed
    assert ok(router, "query($id: ID!) { user(id: $id) { " + USER_FIELDS + " } }", {"id": user["id"]})["user"] == user
    assert ok(router, '{ user(id: "999999") { id } missing: user(id: "abc") { id } }') == {
        "user": None,
        "missing": None,
    }
    # No field anywhere shows the whole key again.
    assert key not in str(ok(router, "{ users { " + USER_FIELDS + " } }"))

    updated = ok(router, UPDATE_USER, {"id": user["id"], "i": {"email": "new@example.com", "allBackends": True}})
    updated = updated["updateUser"]
    assert (updated["email"], updated["allBackends"], updated["name"]) == ("new@example.com", True, name)
    cleared = ok(router, UPDATE_USER, {"id": user["id"], "i": {"email": None}})["updateUser"]
    assert cleared["email"] is None and cleared["allBackends"] is True  # absent fields unchanged
    renamed = ok(router, UPDATE_USER, {"id": user["id"], "i": {"name": name + "-2"}})["updateUser"]
    assert renamed["name"] == name + "-2"

    regenerated = ok(
        router,
        "mutation($id: ID!) { regenerateApiKey(id: $id) { apiKey user { id apiKeyPrefix } } }",
        {"id": user["id"]},
    )["regenerateApiKey"]
    assert regenerated["apiKey"] != key and regenerated["apiKey"].startswith(regenerated["user"]["apiKeyPrefix"])

    assert ok(router, "mutation($id: ID!) { deleteUser(id: $id) }", {"id": user["id"]}) == {"deleteUser": True}
    assert ok(router, "query($id: ID!) { user(id: $id) { id } }", {"id": user["id"]})["user"] is None


def test_user_errors(router):
    name = unique("dup")
    create_user(router, name)
    conflict = fails(router, CREATE_USER, {"i": {"name": name}})
    assert (conflict["code"], conflict["field"]) == ("CONFLICT", "name")
    other, _ = create_user(router)
    rename = fails(router, UPDATE_USER, {"id": other["id"], "i": {"name": name}})
    assert (rename["code"], rename["field"]) == ("CONFLICT", "name")
    bad_name = fails(router, CREATE_USER, {"i": {"name": "has spaces"}})
    assert (bad_name["code"], bad_name["field"]) == ("BAD_USER_INPUT", "name")
    bad_email = fails(router, CREATE_USER, {"i": {"name": unique("e"), "email": "not-an-email"}})
    assert (bad_email["code"], bad_email["field"]) == ("BAD_USER_INPUT", "email")
    for query in (
        'mutation { updateUser(id: "999999", input: {isActive: false}) { id } }',
        'mutation { deleteUser(id: "999999") }',
        'mutation { regenerateApiKey(id: "999999") { apiKey } }',
        'mutation { deleteUser(id: "not-a-number") }',
    ):
        error = fails(router, query)
        assert (error["code"], error["field"]) == ("NOT_FOUND", "id"), query


# --- backends ---------------------------------------------------------------------------------


def test_backends_lifecycle(genv):
    router = genv.router
    name = unique("gpu")
    backend = create_backend(
        router,
        genv.alpha.base_url,
        name,
        apiKey="sk-upstream-secret",
        modelOverride=["m1", "m2"],
        modelAppend=["extra"],
        weight=3,
    )
    assert backend["hasApiKey"] is True
    assert (backend["baseUrl"], backend["weight"], backend["isActive"]) == (genv.alpha.base_url, 3, True)
    assert backend["modelOverride"] == ["m1", "m2"] and backend["modelAppend"] == ["extra"]
    assert backend["models"] == ["m1", "m2", "extra"]
    assert backend["healthy"] is True
    everything = str(ok(router, "{ backends { " + BACKEND_FIELDS + " } }"))
    assert "sk-upstream-secret" not in everything
    assert backend in ok(router, "{ backends { " + BACKEND_FIELDS + " } }")["backends"]
    got = ok(router, "query($id: ID!) { backend(id: $id) { " + BACKEND_FIELDS + " } }", {"id": backend["id"]})
    assert got["backend"] == backend
    assert ok(router, '{ backend(id: "999999") { id } }')["backend"] is None

    # Clearing the override: the list comes from the upstream's /models (filtered) again.
    updated = ok(
        router,
        UPDATE_BACKEND,
        {"id": backend["id"], "i": {"modelOverride": None, "modelFilter": "test", "apiKey": "", "weight": 0}},
    )["updateBackend"]
    assert (updated["modelOverride"], updated["modelFilter"], updated["hasApiKey"], updated["weight"]) == (
        None,
        "test",
        False,
        0,
    )
    assert updated["modelAppend"] == ["extra"]  # absent: unchanged
    deadline = time.monotonic() + 10
    while "test-model" not in updated["models"] and time.monotonic() < deadline:
        time.sleep(0.05)
        updated = ok(router, "query($id: ID!) { backend(id: $id) { models } }", {"id": backend["id"]})["backend"]
    assert updated["models"] == ["test-model", "extra"]

    assert ok(router, "mutation($id: ID!) { deleteBackend(id: $id) }", {"id": backend["id"]}) == {"deleteBackend": True}
    assert ok(router, "query($id: ID!) { backend(id: $id) { id } }", {"id": backend["id"]})["backend"] is None


def test_backend_errors(genv):
    router = genv.router
    name = unique("b")
    backend = create_backend(router, genv.alpha.base_url, name)
    cases = [
        ({"name": unique("b"), "baseUrl": "ftp://example.com"}, "BAD_USER_INPUT", "baseUrl"),
        ({"name": unique("b"), "baseUrl": "not a url"}, "BAD_USER_INPUT", "baseUrl"),
        ({"name": unique("b"), "baseUrl": genv.alpha.base_url, "weight": -1}, "BAD_USER_INPUT", "weight"),
        ({"name": "bad name!", "baseUrl": genv.alpha.base_url}, "BAD_USER_INPUT", "name"),
        (
            {"name": unique("b"), "baseUrl": genv.alpha.base_url, "modelOverride": [""]},
            "BAD_USER_INPUT",
            "modelOverride",
        ),
        ({"name": name, "baseUrl": genv.alpha.base_url}, "CONFLICT", "name"),
    ]
    for fields, code, field in cases:
        error = fails(router, CREATE_BACKEND, {"i": fields})
        assert (error["code"], error["field"]) == (code, field), fields
    error = fails(router, UPDATE_BACKEND, {"id": backend["id"], "i": {"weight": -5}})
    assert (error["code"], error["field"]) == ("BAD_USER_INPUT", "weight")
    error = fails(router, UPDATE_BACKEND, {"id": backend["id"], "i": {"name": "alpha"}})
    assert (error["code"], error["field"]) == ("CONFLICT", "name")
    assert fails(router, UPDATE_BACKEND, {"id": "999999", "i": {"weight": 1}})["code"] == "NOT_FOUND"
    assert fails(router, 'mutation { deleteBackend(id: "999999") }')["code"] == "NOT_FOUND"


def test_deleting_a_backend_removes_its_permissions_and_scripts(genv):
    router = genv.router
    backend = create_backend(router, genv.alpha.base_url)
    user, _ = create_user(router)
    ok(router, CREATE_PERMISSION, {"u": user["id"], "b": backend["id"]})
    script = ok(
        router,
        CREATE_SCRIPT,
        {
            "i": {
                "name": "s",
                "type": "PER_BACKEND",
                "backendId": backend["id"],
                "code": "function onRequest(c) { return c; }",
            }
        },
    )["createScript"]
    ok(router, "mutation($id: ID!) { deleteBackend(id: $id) }", {"id": backend["id"]})
    assert ok(router, "query($u: ID) { permissions(userId: $u) { id } }", {"u": user["id"]})["permissions"] == []
    assert ok(router, "query($id: ID!) { script(id: $id) { id } }", {"id": script["id"]})["script"] is None


# --- permissions ------------------------------------------------------------------------------


def test_permissions(genv):
    router = genv.router
    user, _ = create_user(router)
    b1 = create_backend(router, genv.alpha.base_url)
    b2 = create_backend(router, genv.beta.base_url)
    p1 = ok(router, CREATE_PERMISSION, {"u": user["id"], "b": b1["id"]})["createPermission"]
    assert p1["user"] == {"id": user["id"], "name": user["name"]}
    assert p1["backend"] == {"id": b1["id"], "name": b1["name"]}
    ok(router, CREATE_PERMISSION, {"u": user["id"], "b": b2["id"]})

    duplicate = fails(router, CREATE_PERMISSION, {"u": user["id"], "b": b1["id"]})
    assert (duplicate["code"], duplicate["field"]) == ("CONFLICT", "backendId")
    assert fails(router, CREATE_PERMISSION, {"u": "999999", "b": b1["id"]})["code"] == "NOT_FOUND"
    assert fails(router, CREATE_PERMISSION, {"u": user["id"], "b": "999999"})["code"] == "NOT_FOUND"

    query = "query($u: ID, $b: ID) { permissions(userId: $u, backendId: $b) { id user { id } backend { id } } }"
    by_user = ok(router, query, {"u": user["id"]})["permissions"]
    assert sorted(p["backend"]["id"] for p in by_user) == sorted([b1["id"], b2["id"]])
    by_both = ok(router, query, {"u": user["id"], "b": b2["id"]})["permissions"]
    assert [p["backend"]["id"] for p in by_both] == [b2["id"]]
    by_backend = ok(router, query, {"b": b1["id"]})["permissions"]
    assert [p["user"]["id"] for p in by_backend] == [user["id"]]
    assert any(p["id"] == p1["id"] for p in ok(router, "{ permissions { id } }")["permissions"])
    listed = ok(router, "query($id: ID!) { user(id: $id) { permissions { backend { name } } } }", {"id": user["id"]})
    assert sorted(p["backend"]["name"] for p in listed["user"]["permissions"]) == sorted([b1["name"], b2["name"]])

    assert ok(router, DELETE_PERMISSION, {"u": user["id"], "b": b1["id"]}) == {"deletePermission": True}
    assert fails(router, DELETE_PERMISSION, {"u": user["id"], "b": b1["id"]})["code"] == "NOT_FOUND"
    assert [p["backend"]["id"] for p in ok(router, query, {"u": user["id"]})["permissions"]] == [b2["id"]]


# --- scripts ----------------------------------------------------------------------------------

GOOD_SCRIPT = """
export async function onRequest(context) {
  console.log("model", context.request.model);
  context.request.temperature = 0.5;
  return context;
}
function onResponse(context) { return context; }
"""


def test_scripts_lifecycle(genv):
    router = genv.router
    user, _ = create_user(router)
    backend = create_backend(router, genv.alpha.base_url)
    per_user = ok(
        router,
        CREATE_SCRIPT,
        {"i": {"name": "tweak", "type": "PER_USER", "userId": user["id"], "code": GOOD_SCRIPT, "priority": 5}},
    )["createScript"]
    assert per_user["type"] == "PER_USER" and per_user["user"]["id"] == user["id"] and per_user["backend"] is None
    assert per_user["isActive"] is False and per_user["priority"] == 5 and per_user["code"] == GOOD_SCRIPT
    per_backend = ok(
        router,
        CREATE_SCRIPT,
        {"i": {"name": "b", "type": "PER_BACKEND", "backendId": backend["id"], "code": GOOD_SCRIPT, "isActive": True}},
    )["createScript"]
    assert per_backend["backend"]["id"] == backend["id"] and per_backend["user"] is None
    assert per_backend["isActive"] is True
    both = ok(
        router,
        CREATE_SCRIPT,
        {
            "i": {
                "name": "ub",
                "type": "PER_USER_BACKEND",
                "userId": user["id"],
                "backendId": backend["id"],
                "code": GOOD_SCRIPT,
            }
        },
    )["createScript"]
    assert both["user"]["id"] == user["id"] and both["backend"]["id"] == backend["id"]

    got = ok(router, "query($id: ID!) { script(id: $id) { " + SCRIPT_FIELDS + " } }", {"id": per_user["id"]})
    assert got["script"] == per_user
    assert ok(router, '{ script(id: "999999") { id } }')["script"] is None
    ids = lambda scripts: {s["id"] for s in scripts}  # noqa: E731
    all_scripts = ok(router, "{ scripts { id } }")["scripts"]
    assert {per_user["id"], per_backend["id"], both["id"]} <= ids(all_scripts)
    typed = ok(router, "{ scripts(type: PER_USER) { id type } }")["scripts"]
    assert per_user["id"] in ids(typed) and {s["type"] for s in typed} == {"PER_USER"}
    active = ok(router, "{ scripts(activeOnly: true) { id isActive } }")["scripts"]
    assert per_backend["id"] in ids(active) and per_user["id"] not in ids(active)

    activated = ok(router, "mutation($id: ID!) { activateScript(id: $id) { id isActive } }", {"id": per_user["id"]})
    assert activated["activateScript"]["isActive"] is True
    deactivated = ok(router, "mutation($id: ID!) { deactivateScript(id: $id) { isActive } }", {"id": per_user["id"]})
    assert deactivated["deactivateScript"]["isActive"] is False

    new_code = "function onResponse(c) { return c; }"
    updated = ok(
        router, UPDATE_SCRIPT, {"id": per_user["id"], "i": {"name": "renamed", "code": new_code, "priority": 1}}
    )
    updated = updated["updateScript"]
    assert (updated["name"], updated["code"], updated["priority"]) == ("renamed", new_code, 1)
    other_user, _ = create_user(router)
    moved = ok(router, UPDATE_SCRIPT, {"id": per_user["id"], "i": {"userId": other_user["id"]}})["updateScript"]
    assert moved["user"]["id"] == other_user["id"]

    assert ok(router, "mutation($id: ID!) { deleteScript(id: $id) }", {"id": both["id"]}) == {"deleteScript": True}
    assert ok(router, "query($id: ID!) { script(id: $id) { id } }", {"id": both["id"]})["script"] is None


def test_script_errors(genv):
    router = genv.router
    user, _ = create_user(router)
    syntax = fails(
        router,
        CREATE_SCRIPT,
        {
            "i": {
                "name": "s",
                "type": "PER_USER",
                "userId": user["id"],
                "code": "function onRequest(c) {\n  return c +;\n}",
            }
        },
    )
    assert (syntax["code"], syntax["field"], syntax["line"]) == ("BAD_USER_INPUT", "code", 2)
    assert "SyntaxError" in syntax["message"]
    no_user = fails(
        router, CREATE_SCRIPT, {"i": {"name": "s", "type": "PER_USER", "code": "function onRequest(c) { return c; }"}}
    )
    assert (no_user["code"], no_user["field"]) == ("BAD_USER_INPUT", "userId")
    no_backend = fails(
        router,
        CREATE_SCRIPT,
        {
            "i": {
                "name": "s",
                "type": "PER_USER_BACKEND",
                "userId": user["id"],
                "code": "function onRequest(c) { return c; }",
            }
        },
    )
    assert (no_backend["code"], no_backend["field"]) == ("BAD_USER_INPUT", "backendId")
    no_hook = fails(router, CREATE_SCRIPT, {"i": {"name": "s", "type": "PER_USER", "userId": user["id"], "code": "1;"}})
    assert (no_hook["code"], no_hook["field"]) == ("BAD_USER_INPUT", "code")
    assert "defines none of onRequest" in no_hook["message"]
    unknown_user = fails(
        router,
        CREATE_SCRIPT,
        {"i": {"name": "s", "type": "PER_USER", "userId": "999999", "code": "function onRequest(c) { return c; }"}},
    )
    assert (unknown_user["code"], unknown_user["field"]) == ("NOT_FOUND", "id")
    script = ok(
        router,
        CREATE_SCRIPT,
        {"i": {"name": "s", "type": "PER_USER", "userId": user["id"], "code": "function onRequest(c) { return c; }"}},
    )["createScript"]
    bad_update = fails(router, UPDATE_SCRIPT, {"id": script["id"], "i": {"code": "function ("}})
    assert (bad_update["code"], bad_update["field"], bad_update["line"]) == ("BAD_USER_INPUT", "code", 1)
    assert ok(router, "query($id: ID!) { script(id: $id) { code } }", {"id": script["id"]})["script"]["code"] == (
        "function onRequest(c) { return c; }"
    )
    for query in (
        'mutation { updateScript(id: "999999", input: {name: "x"}) { id } }',
        'mutation { deleteScript(id: "999999") }',
        'mutation { activateScript(id: "999999") { id } }',
        'mutation { deactivateScript(id: "999999") { id } }',
        'mutation { testScript(id: "999999", input: {hook: ON_REQUEST, context: {}}) { ok } }',
    ):
        assert fails(router, query)["code"] == "NOT_FOUND", query


TEST_SCRIPT = (
    "mutation($id: ID!, $i: ScriptTestInput!) { testScript(id: $id, input: $i) { ok context logs error durationMs } }"
)


def test_test_script_runs_a_hook(router):
    user, _ = create_user(router)
    script = ok(
        router, CREATE_SCRIPT, {"i": {"name": "t", "type": "PER_USER", "userId": user["id"], "code": GOOD_SCRIPT}}
    )
    script_id = script["createScript"]["id"]
    context = {"user": {"name": "u"}, "request": {"model": "m", "messages": []}}
    result = ok(router, TEST_SCRIPT, {"id": script_id, "i": {"hook": "ON_REQUEST", "context": context}})["testScript"]
    assert result["ok"] is True and result["error"] is None
    assert result["context"]["request"] == {"model": "m", "messages": [], "temperature": 0.5}
    assert any("model m" in line for line in result["logs"])
    assert result["durationMs"] >= 0
    response_context = {**context, "response": {"status": 200, "body": {"x": 1}}}
    result = ok(router, TEST_SCRIPT, {"id": script_id, "i": {"hook": "ON_RESPONSE", "context": response_context}})
    assert result["testScript"]["ok"] is True

    throwing = ok(
        router,
        CREATE_SCRIPT,
        {
            "i": {
                "name": "boom",
                "type": "PER_USER",
                "userId": user["id"],
                "code": "function onRequest(c) { throw new Error('nope'); }",
            }
        },
    )["createScript"]
    failed = ok(router, TEST_SCRIPT, {"id": throwing["id"], "i": {"hook": "ON_REQUEST", "context": context}})[
        "testScript"
    ]
    assert failed["ok"] is False and "nope" in failed["error"]
    spinning = ok(
        router,
        CREATE_SCRIPT,
        {
            "i": {
                "name": "spin",
                "type": "PER_USER",
                "userId": user["id"],
                "code": "function onRequest(c) { while (true) {} }",
            }
        },
    )["createScript"]
    timed_out = ok(router, TEST_SCRIPT, {"id": spinning["id"], "i": {"hook": "ON_REQUEST", "context": context}})
    assert timed_out["testScript"]["ok"] is False and timed_out["testScript"]["error"]
    not_object = fails(router, TEST_SCRIPT, {"id": script_id, "i": {"hook": "ON_REQUEST", "context": [1, 2]}})
    assert (not_object["code"], not_object["field"]) == ("BAD_USER_INPUT", "input.context")


# --- changes take effect at once --------------------------------------------------------------


def test_user_changes_apply_to_the_next_request(router):
    user, key = create_user(router, allBackends=True)
    assert v1_status(router, key) == 200
    ok(router, UPDATE_USER, {"id": user["id"], "i": {"isActive": False}})
    assert v1_status(router, key) == 401
    ok(router, UPDATE_USER, {"id": user["id"], "i": {"isActive": True}})
    assert v1_status(router, key) == 200
    new_key = ok(router, "mutation($id: ID!) { regenerateApiKey(id: $id) { apiKey } }", {"id": user["id"]})
    assert v1_status(router, key) == 401
    assert v1_status(router, new_key["regenerateApiKey"]["apiKey"]) == 200
    ok(router, "mutation($id: ID!) { deleteUser(id: $id) }", {"id": user["id"]})
    assert v1_status(router, new_key["regenerateApiKey"]["apiKey"]) == 401


def test_permission_and_backend_changes_apply_to_the_next_request(genv):
    router = genv.router
    model = unique("model")
    b1 = create_backend(router, genv.alpha.base_url, modelOverride=[model])
    b2 = create_backend(router, genv.beta.base_url, modelOverride=[model])
    user, key = create_user(router)  # no permissions yet
    assert v1_status(router, key, model) == 403
    ok(router, CREATE_PERMISSION, {"u": user["id"], "b": b1["id"]})
    assert chat(router, key, model).startswith("alpha says")
    ok(router, DELETE_PERMISSION, {"u": user["id"], "b": b1["id"]})
    assert v1_status(router, key, model) == 403

    ok(router, UPDATE_USER, {"id": user["id"], "i": {"allBackends": True}})
    served_by = {chat(router, key, model).split()[0] for _ in range(6)}
    assert served_by == {"alpha", "beta"}
    ok(router, UPDATE_BACKEND, {"id": b2["id"], "i": {"isActive": False}})
    assert {chat(router, key, model).split()[0] for _ in range(6)} == {"alpha"}
    ok(router, UPDATE_BACKEND, {"id": b1["id"], "i": {"isActive": False}})
    assert v1_status(router, key, model) >= 400
    ok(router, UPDATE_BACKEND, {"id": b2["id"], "i": {"isActive": True}})
    assert chat(router, key, model).startswith("beta says")


# --- request logs, usage, metrics -------------------------------------------------------------


def test_request_logs_pagination_and_filters(genv):
    router = genv.router
    alice, alice_key = user_on(router, "alpha", "beta")
    bob, bob_key = user_on(router, "alpha", "beta")
    for i in range(5):
        chat(router, alice_key, "test-model", f"a{i}")
    chat(router, bob_key, "beta-model")
    assert v1_status(router, bob_key, "no-such-model") == 404
    wait_for_logs(router, {"userId": bob["id"]}, 2)
    page = wait_for_logs(router, {"userId": alice["id"]}, 5)
    rows = page["items"]
    assert [int(r["id"]) for r in rows] == sorted((int(r["id"]) for r in rows), reverse=True)  # newest first
    row = rows[0]
    assert (row["userId"], row["userName"], row["backendName"], row["model"]) == (
        alice["id"],
        alice["name"],
        "alpha",
        "test-model",
    )
    assert row["backendId"] == backend_id(router, "alpha")
    assert (row["endpoint"], row["statusCode"], row["stream"], row["error"]) == (
        "/v1/chat/completions",
        200,
        False,
        None,
    )
    assert row["promptTokens"] > 0 and row["completionTokens"] > 0
    assert row["totalTokens"] == row["promptTokens"] + row["completionTokens"]
    assert row["latencyMs"] > 0 and row["requestId"] and row["createdAt"] and row["attempts"] == 1

    # Keyset pages of 2: 2 + 2 + 1, stable although a new row arrives meanwhile.
    query = (
        "query($f: RequestLogFilter, $after: String) { requestLogs(filter: $f, first: 2, after: $after) "
        "{ totalCount nextCursor items { id } } }"
    )
    first = ok(router, query, {"f": {"userId": alice["id"]}})["requestLogs"]
    assert first["totalCount"] == 5 and len(first["items"]) == 2 and first["nextCursor"]
    chat(router, alice_key)
    wait_for_logs(router, {"userId": alice["id"]}, 6)
    second = ok(router, query, {"f": {"userId": alice["id"]}, "after": first["nextCursor"]})["requestLogs"]
    third = ok(router, query, {"f": {"userId": alice["id"]}, "after": second["nextCursor"]})["requestLogs"]
    assert second["totalCount"] == 6
    assert len(third["items"]) == 1 and third["nextCursor"] is None
    paged = [r["id"] for r in first["items"] + second["items"] + third["items"]]
    assert paged == [r["id"] for r in rows]

    filtered = lambda flt: ok(  # noqa: E731
        router,
        "query($f: RequestLogFilter) { requestLogs(filter: $f) { totalCount items { model statusCode } } }",
        {"f": flt},
    )["requestLogs"]
    assert filtered({"userId": bob["id"], "model": "beta-model"})["totalCount"] == 1
    errors = filtered({"userId": bob["id"], "errorsOnly": True})
    assert errors["totalCount"] == 1 and errors["items"][0] == {"model": "no-such-model", "statusCode": 404}
    assert filtered({"userId": bob["id"], "statusCode": 404})["totalCount"] == 1
    assert filtered({"backendId": backend_id(router, "beta"), "userId": bob["id"]})["totalCount"] == 1
    assert (
        filtered({"userId": alice["id"], "since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"})[
            "totalCount"
        ]
        == 0
    )
    assert filtered({"userId": alice["id"], "since": "2000-01-01T00:00:00Z"})["totalCount"] == 6
    assert fails(router, '{ requestLogs(filter: {userId: "x"}) { totalCount } }')["field"] == "filter.userId"


def test_usage_and_backend_metrics(genv):
    router = genv.router
    alice, alice_key = user_on(router, "alpha", "beta")
    bob, bob_key = user_on(router, "alpha", "beta")
    for _ in range(3):
        chat(router, alice_key, "test-model")
    chat(router, alice_key, "beta-model")
    chat(router, bob_key, "beta-model")
    assert v1_status(router, bob_key, "no-such-model") == 404
    wait_for_logs(router, {"userId": alice["id"]}, 4)
    wait_for_logs(router, {"userId": bob["id"]}, 2)

    usage_query = (
        "query($f: UsageFilter, $g: [UsageGroupBy!], $b: TimeBucket) { usage(filter: $f, groupBy: $g, bucket: $b) "
        "{ bucketStart userId userName backendId backendName model requests errors promptTokens completionTokens "
        "totalTokens avgLatencyMs } }"
    )
    by_model = ok(router, usage_query, {"f": {"userId": alice["id"]}, "g": ["MODEL"]})["usage"]
    assert [(r["model"], r["requests"]) for r in by_model] == [("test-model", 3), ("beta-model", 1)]
    assert all(r["bucketStart"] is None and r["userId"] is None for r in by_model)
    assert all(r["totalTokens"] == r["promptTokens"] + r["completionTokens"] > 0 for r in by_model)
    assert all(r["avgLatencyMs"] > 0 for r in by_model)

    since = {"since": "2000-01-01T00:00:00Z"}
    by_user = ok(router, usage_query, {"f": {**since, "userId": bob["id"]}, "g": ["USER"]})["usage"]
    assert [(r["userId"], r["userName"], r["requests"], r["errors"]) for r in by_user] == [
        (bob["id"], bob["name"], 2, 1)
    ]
    by_backend = ok(router, usage_query, {"f": {"userId": alice["id"]}, "g": ["BACKEND", "USER"]})["usage"]
    assert {(r["backendName"], r["userName"], r["requests"]) for r in by_backend} == {
        ("alpha", alice["name"], 3),
        ("beta", alice["name"], 1),
    }
    total = ok(router, usage_query, {"f": {"userId": alice["id"]}})["usage"]
    assert len(total) == 1 and total[0]["requests"] == 4 and total[0]["model"] is None
    for bucket, pattern in (
        ("MINUTE", r"T\d\d:\d\d:00\+00:00$"),
        ("HOUR", r"T\d\d:00:00\+00:00$"),
        ("DAY", r"T00:00:00\+00:00$"),
    ):
        rows = ok(router, usage_query, {"f": {"userId": alice["id"]}, "b": bucket})["usage"]
        assert sum(r["requests"] for r in rows) == 4
        assert all(re.search(pattern, r["bucketStart"]) for r in rows), rows
    day = ok(router, usage_query, {"f": {"userId": alice["id"]}, "b": "DAY", "g": ["MODEL"]})["usage"]
    assert {r["model"] for r in day} == {"test-model", "beta-model"} and day[0]["bucketStart"].endswith(
        "T00:00:00+00:00"
    )
    assert ok(router, usage_query, {"f": {"userId": alice["id"], "until": "2000-01-01T00:00:00Z"}})["usage"] == []

    metrics = ok(
        router,
        "{ backendMetrics { backend { id name } inFlight requests errors p50LatencyMs p95LatencyMs } }",
    )["backendMetrics"]
    alpha = next(m for m in metrics if m["backend"]["name"] == "alpha")
    assert alpha["requests"] >= 3 and alpha["inFlight"] == 0
    assert 0 < alpha["p50LatencyMs"] <= alpha["p95LatencyMs"]
    future = ok(router, '{ backendMetrics(since: "2999-01-01T00:00:00Z") { requests p50LatencyMs } }')
    assert all(m["requests"] == 0 and m["p50LatencyMs"] is None for m in future["backendMetrics"])


def test_deleted_user_keeps_its_logs(router):
    user, key = create_user(router, allBackends=True)
    chat(router, key)
    wait_for_logs(router, {"userId": user["id"]}, 1)
    ok(router, "mutation($id: ID!) { deleteUser(id: $id) }", {"id": user["id"]})
    page = ok(
        router,
        "query($f: RequestLogFilter) { requestLogs(filter: $f) { totalCount items { userId userName } } }",
        {"f": {"userId": user["id"]}},
    )["requestLogs"]
    assert page["totalCount"] == 1 and page["items"] == [{"userId": user["id"], "userName": user["name"]}]


# --- the CLI and GraphQL agree ----------------------------------------------------------------


def test_cli_and_graphql_act_on_the_same_users(router):
    name = unique("cli")
    key = router.add_user(name, permissions="alpha")
    users = {u["name"]: u for u in ok(router, "{ users { " + USER_FIELDS + " } }")["users"]}
    assert name in users
    assert users[name]["allBackends"] is False and key.startswith(users[name]["apiKeyPrefix"])
    assert [p["backend"]["name"] for p in users[name]["permissions"]] == ["alpha"]

    router.cli("users", "modify", name, "--deactivate", "--email", "cli@example.com")
    user = ok(router, "query($id: ID!) { user(id: $id) { isActive email } }", {"id": users[name]["id"]})["user"]
    assert user == {"isActive": False, "email": "cli@example.com"}

    gql_name = unique("gql")
    gql_user, _ = create_user(router, gql_name, allBackends=True)
    listing = router.cli("users", "list").stdout
    line = next(line for line in listing.splitlines() if line.startswith(gql_name))
    assert " yes " in line and line.rstrip().endswith("*")
    ok(router, UPDATE_USER, {"id": gql_user["id"], "i": {"isActive": False}})
    line = next(line for line in router.cli("users", "list").stdout.splitlines() if line.startswith(gql_name))
    assert " no " in line

    router.cli("users", "delete", gql_name)
    assert ok(router, "query($id: ID!) { user(id: $id) { id } }", {"id": gql_user["id"]})["user"] is None
    assert router.cli("users", "add", name, check=False).returncode != 0  # the name GraphQL would refuse too
    assert fails(router, CREATE_USER, {"i": {"name": name}})["code"] == "CONFLICT"
