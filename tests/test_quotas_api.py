"""Limits, prices and `me` through the admin API, the CLI and config.yaml, on the real router."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.conftest import write_config

MESSAGES = [{"role": "user", "content": "hello there"}]

USER_LIMITS = """
mutation($id: ID!, $limits: LimitsInput!) {
  setUserLimits(userId: $id, limits: $limits) {
    id limits { rpm tpm maxConcurrent budgetUsd budgetPeriod }
  }
}"""
CREATE_PRICE = """
mutation($input: ModelPriceInput!) {
  createModelPrice(input: $input) {
    id model inputPerMTok cachedInputPerMTok cacheWritePerMTok outputPerMTok backend { name }
  }
}"""


def user_id(router, name: str) -> str:
    return next(u["id"] for u in router.gql_ok("{ users { id name } }")["users"] if u["name"] == name)


def backend_id(router, name: str) -> str:
    return next(b["id"] for b in router.gql_ok("{ backends { id name } }")["backends"] if b["name"] == name)


def chat(router, key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{router.v1}/chat/completions",
        json={"model": "test-model", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key or router.api_key}"},
        timeout=30,
    )


def errors_of(result: dict) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors") or []]


def test_set_limits_replaces_them_as_a_whole_and_checks_them(router_with_backend):
    router = router_with_backend
    uid = user_id(router, "alice")
    limits = {"rpm": 10, "tpm": 5000, "maxConcurrent": 2, "budgetUsd": 1.5, "budgetPeriod": "WEEK"}
    got = router.gql_ok(USER_LIMITS, {"id": uid, "limits": limits})["setUserLimits"]["limits"]
    assert got == limits
    got = router.gql_ok(USER_LIMITS, {"id": uid, "limits": {"rpm": 3}})["setUserLimits"]["limits"]
    assert got == {"rpm": 3, "tpm": None, "maxConcurrent": None, "budgetUsd": None, "budgetPeriod": None}

    bad = router.graphql(USER_LIMITS, {"id": uid, "limits": {"rpm": 0}})
    assert errors_of(bad) == ["BAD_USER_INPUT"] and "rpm" in bad["errors"][0]["message"]
    bad = router.graphql(USER_LIMITS, {"id": uid, "limits": {"budgetPeriod": "DAY"}})
    assert errors_of(bad) == ["BAD_USER_INPUT"]

    bid = backend_id(router, "alpha")
    backend = router.gql_ok(
        "mutation($id: ID!) { setBackendLimits(backendId: $id, limits: {maxConcurrent: 4, rpm: 100}) "
        "{ limits { rpm maxConcurrent budgetUsd } quota { inFlight queued requestsThisMinute } } }",
        {"id": bid},
    )["setBackendLimits"]
    assert backend["limits"] == {"rpm": 100, "maxConcurrent": 4, "budgetUsd": None}
    assert backend["quota"] == {"inFlight": 0, "queued": 0, "requestsThisMinute": 0}
    bad = router.graphql(
        "mutation($id: ID!) { setBackendLimits(backendId: $id, limits: {budgetUsd: 5}) { id } }", {"id": bid}
    )
    assert errors_of(bad) == ["BAD_USER_INPUT"]
    missing = router.graphql(USER_LIMITS, {"id": "999", "limits": {}})
    assert errors_of(missing) == ["NOT_FOUND"]


def test_prices_crud_and_cost_in_logs_and_usage(router_with_backend):
    router = router_with_backend
    bid = backend_id(router, "alpha")
    everywhere = router.gql_ok(CREATE_PRICE, {"input": {"model": "test-*", "inputPerMTok": 1.0, "outputPerMTok": 2.0}})[
        "createModelPrice"
    ]
    assert everywhere["backend"] is None and everywhere["cachedInputPerMTok"] is None
    on_alpha = router.gql_ok(
        CREATE_PRICE,
        {"input": {"model": "test-*", "backendId": bid, "inputPerMTok": 10.0, "outputPerMTok": 20.0}},
    )["createModelPrice"]
    assert on_alpha["backend"] == {"name": "alpha"}
    clash = router.graphql(CREATE_PRICE, {"input": {"model": "test-*", "inputPerMTok": 1, "outputPerMTok": 1}})
    assert errors_of(clash) == ["CONFLICT"]
    negative = router.graphql(CREATE_PRICE, {"input": {"model": "x", "inputPerMTok": -1, "outputPerMTok": 1}})
    assert errors_of(negative) == ["BAD_USER_INPUT"]

    response = chat(router)
    assert response.status_code == 200
    usage = response.json()["usage"]
    expected = (usage["prompt_tokens"] * 10.0 + usage["completion_tokens"] * 20.0) / 1e6  # alpha's price wins
    [row] = router.wait_for_logs(1)
    assert row["cost_usd"] == pytest.approx(expected)
    logs = router.gql_ok("{ requestLogs { items { costUsd } } }")["requestLogs"]["items"]
    assert logs[0]["costUsd"] == pytest.approx(expected)
    [total] = router.gql_ok("{ usage { requests costUsd } }")["usage"]
    assert total == {"requests": 1, "costUsd": pytest.approx(expected)}

    updated = router.gql_ok(
        "mutation($id: ID!) { updateModelPrice(id: $id, input: {model: 'gpt-4o', inputPerMTok: 2.5, "
        "cachedInputPerMTok: 1.25, outputPerMTok: 10}) { model inputPerMTok cachedInputPerMTok } }".replace("'", '"'),
        {"id": on_alpha["id"]},
    )["updateModelPrice"]
    assert updated == {"model": "gpt-4o", "inputPerMTok": 2.5, "cachedInputPerMTok": 1.25}
    assert router.gql_ok("mutation($id: ID!) { deleteModelPrice(id: $id) }", {"id": on_alpha["id"]})
    prices = router.gql_ok("{ modelPrices { model backend { name } } }")["modelPrices"]
    assert prices == [{"model": "test-*", "backend": None}]
    # The router prices the next request by the table as it is now (no restart, no DB read per request).
    chat(router)
    rows = router.wait_for_logs(2)
    global_price = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert rows[-1]["cost_usd"] == pytest.approx(global_price)


def test_me_answers_a_user_key_and_nothing_else_does(router_with_backend):
    router = router_with_backend
    bob_key = router.add_user("bob")
    router.gql_ok(USER_LIMITS, {"id": user_id(router, "alice"), "limits": {"rpm": 50, "budgetUsd": 2}})
    assert chat(router).status_code == 200
    assert chat(router, bob_key).status_code == 200
    router.wait_for_logs(2)

    me = router.graphql(
        "{ me { name limits { rpm budgetUsd budgetPeriod } quota { spentUsd periodStart periodEnd } "
        "usage { requests } requestLogs { totalCount items { userName } } } }",
        token=router.api_key,
    )
    assert not me.get("errors"), me
    data = me["data"]["me"]
    assert data["name"] == "alice"
    assert data["limits"] == {"rpm": 50, "budgetUsd": 2.0, "budgetPeriod": None}
    assert data["quota"]["periodStart"] is not None and data["quota"]["spentUsd"] == 0
    assert data["usage"] == [{"requests": 1}]
    assert data["requestLogs"]["totalCount"] == 1 and data["requestLogs"]["items"][0]["userName"] == "alice"

    for query in ("{ users { name } }", "{ me { name } users { name } }", "{ __schema { types { name } } }"):
        refused = router.graphql(query, token=router.api_key)
        assert refused["data"] is None and errors_of(refused) == ["FORBIDDEN"], refused
    refused = router.graphql("mutation { deleteUser(id: 1) }", token=router.api_key)
    assert errors_of(refused) == ["FORBIDDEN"]
    as_admin = router.graphql("{ me { name } }")
    assert errors_of(as_admin) == ["FORBIDDEN"]
    unknown = router.graphql("{ me { name } }", token="sk-not-a-key")
    assert errors_of(unknown) == ["UNAUTHENTICATED"]


def test_cli_limit_flags(router_factory, upstream, tmp_path):
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config, start=False)
    router.cli("users", "add", "carol", "--rpm", "5", "--budget-usd", "3.5", "--budget-period", "day")
    router.cli("users", "modify", "carol", "--tpm", "900", "--rpm", "none", "--max-concurrent", "2")
    bad = router.cli("users", "modify", "carol", "--rpm", "0", check=False)
    assert bad.returncode == 1 and "rpm" in bad.stderr
    router.start()
    [carol] = router.gql_ok("{ users { name limits { rpm tpm maxConcurrent budgetUsd budgetPeriod } } }")["users"]
    assert carol["limits"] == {"rpm": None, "tpm": 900, "maxConcurrent": 2, "budgetUsd": 3.5, "budgetPeriod": "DAY"}


def test_config_yaml_prices(router_factory, upstream, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "servers": {"alpha": {"url": upstream.base_url}},
                "prices": [
                    {"model": "test-model", "input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75},
                    {"model": "*", "backend": "alpha", "input": 1, "output": 1},
                ],
            }
        )
    )
    router = router_factory(config=path)
    prices = router.gql_ok(
        "{ modelPrices { model inputPerMTok cachedInputPerMTok cacheWritePerMTok outputPerMTok backend { name } } }"
    )["modelPrices"]
    assert prices == [
        {
            "model": "*",
            "inputPerMTok": 1.0,
            "cachedInputPerMTok": None,
            "cacheWritePerMTok": None,
            "outputPerMTok": 1.0,
            "backend": {"name": "alpha"},
        },
        {
            "model": "test-model",
            "inputPerMTok": 3.0,
            "cachedInputPerMTok": 0.3,
            "cacheWritePerMTok": 3.75,
            "outputPerMTok": 15.0,
            "backend": None,
        },
    ]
    router.stop()
    path.write_text(yaml.safe_dump({"servers": {"alpha": {"url": upstream.base_url}}, "prices": [{"model": "x"}]}))
    broken = router.cli("serve", "--config", str(path), "--port", "1", check=False)
    assert broken.returncode == 2 and "prices[0].input: required" in broken.stderr


async def test_listing_users_and_backends_reads_quotas_in_one_batch(tmp_path, upstream, monkeypatch):
    from graphql_schema import limits_types
    from tests.inprocess import in_process

    async with in_process(tmp_path, {"alpha": {"url": upstream.base_url}}) as router:
        admin = router.app.state.admin
        keys = []
        for index in range(6):
            user, key = await admin.create_user(f"user{index}", all_backends=True)
            keys.append(key)
            limits = {"rpm": 100, "budgetUsd": 5.0, "budgetPeriod": "DAY" if index % 2 else "MONTH"}
            answer = await router.gql(USER_LIMITS, {"id": str(user.id), "limits": limits})
            assert not answer.get("errors"), answer
        price = 'mutation { createModelPrice(input: {model: "test-model", inputPerMTok: 9, outputPerMTok: 9}) { id } }'
        assert not (await router.gql(price)).get("errors")
        router.api_key = keys[0]
        assert (await router.chat("test-model")).status_code == 200  # user0: one request, some spend
        await router.runtime.writer.flush()

        peeks, spends = [], []
        store = router.runtime.limiter.store
        real_peek, real_spent = store.peek, limits_types.spent_usd_by_user

        async def peek(ops, now):
            peeks.append(len(ops))
            return await real_peek(ops, now)

        async def spent(since, until):
            spends.append((since, until))
            return await real_spent(since, until)

        monkeypatch.setattr(store, "peek", peek)
        monkeypatch.setattr(limits_types, "spent_usd_by_user", spent)
        answer = await router.gql(
            "{ users { name quota { requestsThisMinute spentUsd periodStart periodEnd } } "
            "backends { name quota { inFlight } } }"
        )
        assert not answer.get("errors"), answer
        users = {u["name"]: u["quota"] for u in answer["data"]["users"]}
        assert len(users) == 7 and len(answer["data"]["backends"]) == 1
        assert users["user0"]["requestsThisMinute"] == 1 and users["user2"]["requestsThisMinute"] == 0
        assert users["user0"]["spentUsd"] > 0 and users["user2"]["spentUsd"] == 0
        # DAY and MONTH: on the first of a month they start together, on its last day they end together.
        period = {name: (quota["periodStart"], quota["periodEnd"]) for name, quota in users.items()}
        assert period["user1"] != period["user0"]
        # One store look-up for the 7 users (and at most one more for the backends), one spend query per
        # budget period in use (alice has none: MONTH, as user0 has), whatever the number of users.
        assert sum(peeks) == 7 * 4 + 3 and len(peeks) <= 2, peeks
        assert len(spends) == 2 and len(set(spends)) == 2, spends
