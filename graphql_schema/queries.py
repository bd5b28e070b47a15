"""Query root: entities (through AdminService) and analytics (through router.analytics_queries)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.pages import BackendSearch, PageQuery, ScriptSearch, UserSearch
from graphql_schema.quotas import QuotaQuery
from graphql_schema.types import (
    BackendMetrics,
    BackendType,
    PermissionType,
    RequestLogFilter,
    RequestLogPage,
    ScriptHook,
    ScriptObjectType,
    ScriptTypeEnum,
    TimeBucket,
    UsageFilter,
    UsageGroupBy,
    UsageRow,
    UserType,
    request_log_page,
    test_context_of,
    usage_rows,
)
from router import analytics_queries
from router.models.core import ScriptType as ModelScriptType
from router.services import NotFoundError

Ctx = Info[AdminContext, None]
T = TypeVar("T")


async def _or_none(awaitable: Awaitable[T]) -> T | None:
    try:
        return await awaitable
    except NotFoundError:
        return None


@strawberry.type
class Query(QuotaQuery, PageQuery):
    @strawberry.field(description="Every user, oldest first (usersPage: a page at a time).")
    async def users(
        self,
        info: Ctx,
        search: UserSearch = None,
    ) -> list[UserType]:
        return [UserType.from_model(u) for u in await info.context.admin.list_users(search)]

    @strawberry.field(description="A user by id; null if there is none.")
    async def user(self, info: Ctx, id: strawberry.ID) -> UserType | None:
        user = await _or_none(info.context.admin.get_user(id))
        return UserType.from_model(user) if user else None

    @strawberry.field(description="Every backend, oldest first (backendsPage: a page at a time).")
    async def backends(
        self,
        info: Ctx,
        search: BackendSearch = None,
    ) -> list[BackendType]:
        return [BackendType.from_model(b) for b in await info.context.admin.list_backends(search)]

    @strawberry.field(description="A backend by id; null if there is none.")
    async def backend(self, info: Ctx, id: strawberry.ID) -> BackendType | None:
        backend = await _or_none(info.context.admin.get_backend(id))
        return BackendType.from_model(backend) if backend else None

    @strawberry.field(description="Explicit permissions (users with allBackends need none), optionally filtered.")
    async def permissions(
        self, info: Ctx, user_id: strawberry.ID | None = None, backend_id: strawberry.ID | None = None
    ) -> list[PermissionType]:
        rows = await info.context.admin.list_permissions(user_id, backend_id)
        return [PermissionType.from_model(p) for p in rows]

    @strawberry.field(description="Scripts ordered by type, then priority (scriptsPage: a page at a time).")
    async def scripts(
        self,
        info: Ctx,
        type: ScriptTypeEnum | None = None,
        active_only: bool | None = None,
        search: ScriptSearch = None,
    ) -> list[ScriptObjectType]:
        script_type = ModelScriptType(type.value) if type is not None else None
        rows = await info.context.admin.list_scripts(script_type, bool(active_only), search)
        return [ScriptObjectType.from_model(s) for s in rows]

    @strawberry.field(
        description="A real-shaped context to test a script's hook with: what the hook would get for the "
        "latest request of the script's user/backend (the same builder as live traffic), with the prompt "
        "and answer redacted. Feed it to testScript as input.context (or leave that null)."
    )
    async def script_test_context(
        self, info: Ctx, script_id: strawberry.ID, hook: ScriptHook = ScriptHook.ON_REQUEST
    ) -> JSON:
        script = await info.context.admin.get_script(script_id)
        return JSON(await test_context_of(info, script, hook.value))

    @strawberry.field(description="A script by id; null if there is none.")
    async def script(self, info: Ctx, id: strawberry.ID) -> ScriptObjectType | None:
        script = await _or_none(info.context.admin.get_script(id))
        return ScriptObjectType.from_model(script) if script else None

    @strawberry.field(
        description="Request logs, newest first, keyset-paginated. `first` defaults to 50 and may be at most "
        "GRAPHQL_MAX_PAGE (500); more is refused with BAD_USER_INPUT."
    )
    async def request_logs(
        self,
        info: Ctx,
        filter: RequestLogFilter | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> RequestLogPage:
        return await request_log_page(info, filter, first, after)

    @strawberry.field(
        description="Requests, errors, tokens and mean latency per group (user, backend, model) and UTC time "
        "bucket, computed by the database. Only groups with requests are returned."
    )
    async def usage(
        self,
        info: Ctx,
        filter: UsageFilter | None = None,
        group_by: list[UsageGroupBy] | None = None,
        bucket: TimeBucket | None = None,
    ) -> list[UsageRow]:
        return await usage_rows(filter, group_by, bucket)

    @strawberry.field(
        description="Per backend: requests in flight now, and requests, errors and p50/p95 latency from the "
        "request logs since `since` (default: the last hour)."
    )
    async def backend_metrics(self, info: Ctx, since: datetime | None = None) -> list[BackendMetrics]:
        backends = await info.context.admin.list_backends()
        stats = await analytics_queries.backend_stats([b.id for b in backends], since)
        in_flight = info.context.runtime.in_flight
        return [
            BackendMetrics(
                backend=BackendType.from_model(b),
                in_flight=in_flight.cluster(b.id),  # this process live + others (with Redis)
                requests=stats[b.id].requests,
                errors=stats[b.id].errors,
                p50_latency_ms=stats[b.id].p50_latency_ms,
                p95_latency_ms=stats[b.id].p95_latency_ms,
            )
            for b in backends
        ]

    @strawberry.field(description="Open requestLogged subscriptions in this router process.")
    def live_subscribers(self, info: Ctx) -> int:
        return info.context.runtime.bus.subscriber_count
