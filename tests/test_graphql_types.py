"""GraphQL object types resolved in-process against the real schema and database."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from router.services import AdminService
from tests.inprocess import in_process

QUERY = "{ permissions { id user { name } backend { name } } }"


@pytest.mark.parametrize("gone", ["users", "backends"])
async def test_permission_whose_user_or_backend_was_deleted_meanwhile_is_not_found_not_internal(
    tmp_path: Path, upstream, monkeypatch: pytest.MonkeyPatch, gone: str
) -> None:
    """The permission list is read, then its user or backend is deleted before the batched look-up."""
    async with in_process(tmp_path, {"alpha": {"url": upstream.base_url}}) as router:
        admin = router.app.state.admin
        user, _ = await admin.create_user("bob")
        backend = (await admin.list_backends(None))[0]
        await admin.create_permission(user.id, backend.id)
        assert (await router.gql(QUERY))["data"]["permissions"][0]["user"]["name"] == "bob"

        async def nothing(self: AdminService, ids: object) -> dict[int, object]:
            return {}

        monkeypatch.setattr(AdminService, f"{gone}_by_id", nothing)
        answer = await router.gql(QUERY)
        assert answer["data"] is None
        [error] = answer["errors"]
        assert error["extensions"]["code"] == "NOT_FOUND", error
        assert "no longer exists" in error["message"]


def test_the_graphql_usage_row_has_the_fields_of_the_usage_data():
    """One list of usage fields: the GraphQL type declares them, from_data copies them by name."""
    from graphql_schema.types import UsageRow
    from router import analytics_queries

    shown = [f.python_name for f in UsageRow.__strawberry_definition__.fields]
    assert shown == [f.name for f in dataclasses.fields(analytics_queries.UsageRow)]
