"""Limits, model prices and `me`: the Query and Mutation fields of issue 14 (mixed into the roots)."""

from __future__ import annotations

import dataclasses

import strawberry
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.errors import FORBIDDEN, api_error, bad_input
from graphql_schema.limits_types import Limits, LimitsInput, QuotaState, Subject, quota_state
from graphql_schema.types import (
    BackendType,
    RequestLogEntry,
    RequestLogPage,
    TimeBucket,
    UsageFilter,
    UsageGroupBy,
    UsageRow,
    UserType,
    decode_cursor,
    encode_cursor,
    load_backend,
    log_filter,
)
from router import analytics_queries
from router.catalog import UserEntry
from router.config import PriceSpec
from router.models.core import ModelPrice as ModelPriceModel

Ctx = Info[AdminContext, None]
DEFAULT_PAGE = 50


@strawberry.type(
    name="ModelPrice",
    description="A price in USD per million tokens, for one model name or glob pattern (gpt-4o*), on one "
    "backend or on all.",
)
class ModelPriceType:
    id: strawberry.ID
    model: str
    input_per_mtok: float = strawberry.field(name="inputPerMTok")
    cached_input_per_mtok: float | None = strawberry.field(
        name="cachedInputPerMTok", description="Price of prompt tokens read from the prompt cache; null = inputPerMTok."
    )
    cache_write_per_mtok: float | None = strawberry.field(
        name="cacheWritePerMTok", description="Price of prompt tokens written to the prompt cache; null = inputPerMTok."
    )
    output_per_mtok: float = strawberry.field(name="outputPerMTok")
    backend_id: strawberry.Private[int | None]

    @strawberry.field(description="Null: applies on every backend (a backend-specific price wins).")
    async def backend(self, info: Ctx) -> BackendType | None:
        return await load_backend(info, self.backend_id)

    @classmethod
    def from_model(cls, row: ModelPriceModel) -> ModelPriceType:
        return cls(
            id=strawberry.ID(str(row.id)),
            model=row.model,
            input_per_mtok=row.input_per_mtok,
            cached_input_per_mtok=row.cached_input_per_mtok,
            cache_write_per_mtok=row.cache_write_per_mtok,
            output_per_mtok=row.output_per_mtok,
            backend_id=row.backend_id,
        )


@strawberry.input
class ModelPriceInput:
    model: str = strawberry.field(description="A model name, or a glob such as gpt-4o* (*, ? and [...]).")
    backend_id: strawberry.ID | None = None
    input_per_mtok: float = strawberry.field(name="inputPerMTok")
    cached_input_per_mtok: float | None = strawberry.field(default=None, name="cachedInputPerMTok")
    cache_write_per_mtok: float | None = strawberry.field(default=None, name="cacheWritePerMTok")
    output_per_mtok: float = strawberry.field(name="outputPerMTok")

    def spec(self) -> PriceSpec:
        return PriceSpec(
            model=self.model,
            input_per_mtok=self.input_per_mtok,
            output_per_mtok=self.output_per_mtok,
            cached_input_per_mtok=self.cached_input_per_mtok,
            cache_write_per_mtok=self.cache_write_per_mtok,
        )


@strawberry.type(description="What a user's own API key may read about itself (Query.me).")
class Viewer:
    user: strawberry.Private[UserEntry]

    @strawberry.field
    def name(self) -> str:
        return self.user.name

    @strawberry.field
    def limits(self) -> Limits:
        return Limits.of(self.user.limits)

    @strawberry.field
    async def quota(self, info: Ctx) -> QuotaState:
        return await quota_state(info, Subject(self.user.id, self.user.name, self.user.limits), "user")

    @strawberry.field(description="Like Query.usage, always for this user only.")
    async def usage(
        self,
        info: Ctx,
        filter: UsageFilter | None = None,
        group_by: list[UsageGroupBy] | None = None,
        bucket: TimeBucket | None = None,
    ) -> list[UsageRow]:
        flt = dataclasses.replace(log_filter(filter), user_id=self.user.id)
        keys = list(dict.fromkeys(g.value for g in group_by or ()))
        rows = await analytics_queries.usage(flt, keys, bucket.value if bucket else None)
        return [UsageRow.from_data(row) for row in rows]

    @strawberry.field(description="This user's request logs, newest first (as Query.requestLogs).")
    async def request_logs(self, info: Ctx, first: int | None = None, after: str | None = None) -> RequestLogPage:
        limit = info.context.settings.graphql_max_page
        first = DEFAULT_PAGE if first is None else first
        if first < 1 or first > limit:
            raise bad_input(f"first must be between 1 and {limit}", "first", max=limit)
        after_id = decode_cursor(after) if after else None
        flt = analytics_queries.LogFilter(user_id=self.user.id)
        page = await analytics_queries.request_log_page(flt, first, after_id)
        return RequestLogPage(
            items=[RequestLogEntry.from_row(row) for row in page.items],
            total_count=page.total_count,
            next_cursor=encode_cursor(page.next_after_id) if page.next_after_id is not None else None,
        )


@strawberry.type
class QuotaQuery:
    @strawberry.field(description="Every model price, by model name.")
    async def model_prices(self, info: Ctx) -> list[ModelPriceType]:
        return [ModelPriceType.from_model(p) for p in await info.context.admin.list_prices()]

    @strawberry.field(
        description="The caller itself; the one field a user's own API key (instead of an admin token) may query."
    )
    def me(self, info: Ctx) -> Viewer:
        viewer: UserEntry | None = getattr(info.context, "viewer", None)
        if viewer is None:
            raise api_error(FORBIDDEN, "me answers for a user: send that user's API key as the bearer token.")
        return Viewer(user=viewer)


@strawberry.type
class QuotaMutation:
    @strawberry.mutation(description="Replaces the user's limits as a whole (absent fields become unlimited).")
    async def set_user_limits(self, info: Ctx, user_id: strawberry.ID, limits: LimitsInput) -> UserType:
        return UserType.from_model(await info.context.admin.set_user_limits(user_id, limits.to_limits()))

    @strawberry.mutation(description="Replaces the backend's limits as a whole (budgets apply to users only).")
    async def set_backend_limits(self, info: Ctx, backend_id: strawberry.ID, limits: LimitsInput) -> BackendType:
        return BackendType.from_model(await info.context.admin.set_backend_limits(backend_id, limits.to_limits()))

    @strawberry.mutation
    async def create_model_price(self, info: Ctx, input: ModelPriceInput) -> ModelPriceType:
        return ModelPriceType.from_model(await info.context.admin.create_price(input.spec(), input.backend_id))

    @strawberry.mutation
    async def update_model_price(self, info: Ctx, id: strawberry.ID, input: ModelPriceInput) -> ModelPriceType:
        return ModelPriceType.from_model(await info.context.admin.update_price(id, input.spec(), input.backend_id))

    @strawberry.mutation
    async def delete_model_price(self, info: Ctx, id: strawberry.ID) -> bool:
        await info.context.admin.delete_price(id)
        return True
