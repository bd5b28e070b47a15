"""Limits, model prices and `me`: the Query and Mutation fields of issue 14 (mixed into the roots)."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.errors import FORBIDDEN, api_error
from graphql_schema.limits_types import Limits, LimitsInput, QuotaState, Subject, quota_state
from graphql_schema.types import (
    BackendType,
    RequestLogPage,
    TimeBucket,
    UsageFilter,
    UsageGroupBy,
    UsageRow,
    UserType,
    load_backend,
    request_log_page,
    usage_rows,
)
from router.catalog import UserEntry
from router.config import PriceSpec
from router.models.core import ModelPrice as ModelPriceModel

Ctx = Info[AdminContext, None]


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
        return await usage_rows(filter, group_by, bucket, user_id=self.user.id)

    @strawberry.field(description="This user's request logs, newest first (as Query.requestLogs).")
    async def request_logs(self, info: Ctx, first: int | None = None, after: str | None = None) -> RequestLogPage:
        return await request_log_page(info, None, first, after, user_id=self.user.id)


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
