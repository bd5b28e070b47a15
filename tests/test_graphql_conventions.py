"""GraphQL conventions of issue 18: paged and searchable lists, activate/deactivate for users and backends."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import write_config

PAGE = "{ totalCount nextCursor items { name } }"


@pytest.fixture
def router(router_factory, upstream, tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        {
            "alpha": {"url": upstream.base_url},
            "beta": {"url": upstream.base_url, "override": ["b"]},
            "gamma-internal": {"url": "http://10.1.2.3:8000/v1", "override": ["g"]},
        },
    )
    return router_factory(config=config, env={"HEALTH_CHECK_INTERVAL_S": "0"})


def all_pages(router, field: str, args: str, first: int) -> list[list[str]]:
    pages, after = [], None
    while True:
        cursor = f', after: "{after}"' if after else ""
        page = router.gql_ok(f"{{ {field}(first: {first}{args}{cursor}) {PAGE} }}")[field]
        pages.append([item["name"] for item in page["items"]])
        after = page["nextCursor"]
        if after is None:
            return pages


def test_users_page_by_page_and_searched(router):
    names = ["ann", "ben", "cat", "dan", "eve", "fay", "gus"]
    for name in names:
        router.gql_ok(f'mutation {{ createUser(input: {{name: "{name}", email: "{name}@team.test"}}) {{ apiKey }} }}')
    router.gql_ok('mutation { createUser(input: {name: "zed", email: "zed@other.test"}) { apiKey } }')

    assert all_pages(router, "usersPage", "", 3) == [["ann", "ben", "cat"], ["dan", "eve", "fay"], ["gus", "zed"]]
    first = router.gql_ok(f"{{ usersPage(first: 3) {PAGE} }}")["usersPage"]
    assert first["totalCount"] == 8
    # Search: name or e-mail, case-insensitive; totalCount counts the matches.
    team = router.gql_ok(f'{{ usersPage(search: "TEAM.test", first: 5) {PAGE} }}')["usersPage"]
    assert team["totalCount"] == 7 and [u["name"] for u in team["items"]] == names[:5]
    assert [u["name"] for u in router.gql_ok('{ users(search: "zed") { name } }')["users"]] == ["zed"]
    # LIKE's wildcards are plain characters in a search.
    assert router.gql_ok(f'{{ usersPage(search: "%") {PAGE} }}')["usersPage"]["totalCount"] == 0
    assert router.gql_ok(f'{{ usersPage(search: "_") {PAGE} }}')["usersPage"]["totalCount"] == 0
    # The contract's plain list is unchanged.
    assert [u["name"] for u in router.gql_ok("{ users { name } }")["users"]] == [*names, "zed"]

    bad = router.graphql('{ usersPage(after: "not-a-cursor") { totalCount } }')["errors"][0]
    assert bad["extensions"]["code"] == "BAD_USER_INPUT" and bad["extensions"]["field"] == "after"
    backend_cursor = router.gql_ok(f"{{ backendsPage(first: 1) {PAGE} }}")["backendsPage"]["nextCursor"]
    wrong_kind = router.graphql(f'{{ usersPage(after: "{backend_cursor}") {{ totalCount }} }}')["errors"][0]
    assert wrong_kind["extensions"]["code"] == "BAD_USER_INPUT"
    too_many = router.graphql("{ usersPage(first: 501) { totalCount } }")["errors"][0]
    assert too_many["extensions"]["field"] == "first"
    too_long = router.graphql("query($s: String) { usersPage(search: $s) { totalCount } }", {"s": "x" * 201})
    too_long = too_long["errors"][0]
    assert too_long["extensions"]["field"] == "search"


def test_backends_and_scripts_pages(router):
    assert all_pages(router, "backendsPage", "", 2) == [["alpha", "beta"], ["gamma-internal"]]
    by_url = router.gql_ok(f'{{ backendsPage(search: "10.1.2.3") {PAGE} }}')["backendsPage"]
    assert [b["name"] for b in by_url["items"]] == ["gamma-internal"]
    assert [b["name"] for b in router.gql_ok('{ backends(search: "ALP") { name } }')["backends"]] == ["alpha"]

    backend_id = router.gql_ok('{ backends(search: "beta") { id } }')["backends"][0]["id"]
    for index in range(3):
        router.gql_ok(
            "mutation($b: ID!, $n: String!) { createScript(input: {name: $n, type: PER_BACKEND, backendId: $b, "
            'code: "function onRequest(c) { return c; }"}) { id } }',
            {"b": backend_id, "n": f"cap-{index}"},
        )
    router.gql_ok(
        'mutation($b: ID!) { createScript(input: {name: "audit", type: PER_BACKEND, backendId: $b, '
        'code: "function onRequest(c) { return c; }", isActive: true}) { id } }',
        {"b": backend_id},
    )
    assert all_pages(router, "scriptsPage", ', search: "cap"', 2) == [["cap-0", "cap-1"], ["cap-2"]]
    active = router.gql_ok(f"{{ scriptsPage(active: true, type: PER_BACKEND) {PAGE} }}")["scriptsPage"]
    assert [s["name"] for s in active["items"]] == ["audit"]
    assert len(router.gql_ok('{ scripts(search: "cap") { name } }')["scripts"]) == 3

    router.gql_ok(f'mutation {{ deactivateBackend(id: "{backend_id}") {{ isActive }} }}')
    inactive = router.gql_ok(f"{{ backendsPage(active: false) {PAGE} }}")["backendsPage"]
    assert [b["name"] for b in inactive["items"]] == ["beta"]
    assert router.gql_ok(f'mutation {{ activateBackend(id: "{backend_id}") {{ isActive }} }}')["activateBackend"] == {
        "isActive": True
    }


def test_activate_and_deactivate_user(router):
    created = router.gql_ok('mutation { createUser(input: {name: "ivy", allBackends: true}) { apiKey user { id } } }')
    key, user_id = created["createUser"]["apiKey"], created["createUser"]["user"]["id"]
    models = lambda: httpx.get(f"{router.v1}/models", headers={"Authorization": f"Bearer {key}"})  # noqa: E731
    assert models().status_code == 200
    assert router.gql_ok(f'mutation {{ deactivateUser(id: "{user_id}") {{ isActive }} }}')["deactivateUser"] == {
        "isActive": False
    }
    assert models().status_code == 401
    router.gql_ok(f'mutation {{ activateUser(id: "{user_id}") {{ isActive }} }}')
    assert models().status_code == 200
    missing = router.graphql('mutation { deactivateUser(id: "99999") { isActive } }')["errors"][0]
    assert missing["extensions"]["code"] == "NOT_FOUND"


def test_every_type_and_field_is_described():
    """A field without `description=` needs an entry in graphql_schema/descriptions.py; stale entries fail too."""
    from graphql_schema.descriptions import DESCRIPTIONS, schema_members, undescribed
    from graphql_schema.schema import build_schema

    schema = build_schema()._schema
    assert undescribed(schema) == []
    assert sorted(set(DESCRIPTIONS) - set(schema_members(schema))) == []


def test_request_detail_with_attempt_errors_and_log_filters(router_factory, upstream_factory, tmp_path):
    """A request that failed over: its row says which attempts failed and why, and is found by its request id."""
    from tests.upstream import free_port

    good = upstream_factory(name="good", models=["m"])
    config = write_config(
        tmp_path / "c.yaml",
        {
            "dead": {"url": f"http://127.0.0.1:{free_port()}/v1", "override": ["m"], "weight": 100},
            "good": {"url": good.base_url, "weight": 1},
        },
    )
    router = router_factory(config=config, env={"HEALTH_CHECK_INTERVAL_S": "0"})
    key = router.add_user("wes")
    auth = {"Authorization": f"Bearer {key}", "X-Request-ID": "detail-1"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{router.v1}/chat/completions", json=body, headers=auth).status_code == 200
    httpx.post(f"{router.v1}/embeddings", json={"model": "m", "input": "x"}, headers={**auth, "X-Request-ID": "e-1"})
    router.wait_for_logs(2)

    fields = "id requestId endpoint statusCode attempts attemptErrors error backendName latencyMs timeToFirstTokenMs"
    row = router.gql_ok(f'{{ requestLog(requestId: "detail-1") {{ {fields} }} }}')["requestLog"]
    assert row["statusCode"] == 200 and row["attempts"] == 2 and row["error"] is None
    assert row["backendName"] == "good" and len(row["attemptErrors"]) == 1
    assert row["attemptErrors"][0].startswith("dead: ") and row["timeToFirstTokenMs"] is None
    by_id = router.gql_ok(f'{{ requestLog(id: "{row["id"]}") {{ requestId }} }}')["requestLog"]
    assert by_id == {"requestId": "detail-1"}
    assert router.gql_ok('{ requestLog(requestId: "nope") { id } }')["requestLog"] is None
    assert router.graphql("{ requestLog { id } }")["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    page = router.gql_ok('{ requestLogs(filter: {endpoint: "/v1/embeddings"}) { totalCount items { requestId } } }')
    assert page["requestLogs"] == {"totalCount": 1, "items": [{"requestId": "e-1"}]}
    by_request = router.gql_ok('{ requestLogs(filter: {requestId: "detail-1"}) { totalCount } }')["requestLogs"]
    assert by_request["totalCount"] == 1
