"""GraphQL types of limits and quota state (used by User, Backend and Viewer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from weakref import WeakKeyDictionary

import strawberry
from strawberry.dataloader import DataLoader
from strawberry.types import Info

from router import limits as lim
from router.analytics_queries import spent_usd_by_user
from router.services import BadInputError

# The router's own periods, exposed to GraphQL as they are (named BudgetPeriod there too).
strawberry.enum(lim.BudgetPeriod)


@strawberry.type(
    description="Limits on a user or a backend; null = unlimited. They hold across all router processes that "
    "share a Redis."
)
class Limits:
    rpm: int | None = strawberry.field(description="Requests per minute.")
    tpm: int | None = strawberry.field(description="Tokens (prompt + completion) per minute.")
    max_concurrent: int | None = strawberry.field(description="Requests in flight at once.")
    budget_usd: float | None = strawberry.field(description="Spend allowed per budget period, in USD (users only).")
    budget_period: lim.BudgetPeriod | None = strawberry.field(
        description="The period budgetUsd applies to (calendar day, ISO week or calendar month, UTC)."
    )

    @classmethod
    def of(cls, limits: lim.Limits) -> Limits:
        return cls(
            rpm=limits.rpm,
            tpm=limits.tpm,
            max_concurrent=limits.max_concurrent,
            budget_usd=limits.budget_usd,
            budget_period=limits.budget_period,
        )


@strawberry.type(description="Where a user or backend stands against its limits right now.")
class QuotaState:
    requests_this_minute: int = strawberry.field(description="Requests counted in the last 60 s.")
    tokens_this_minute: int = strawberry.field(
        description="Tokens counted in the last 60 s (reservations of running requests included)."
    )
    in_flight: int = strawberry.field(description="Requests holding a concurrency slot now (limited subjects only).")
    spent_usd: float = strawberry.field(description="Spend in the current budget period (users).")
    period_start: datetime | None
    period_end: datetime | None
    queued: int = strawberry.field(
        default=0, description="Requests of this router process waiting for a slot of this backend."
    )


@strawberry.input(description="Null or absent fields are unlimited.")
class LimitsInput:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: float | None = None
    budget_period: lim.BudgetPeriod | None = None

    def to_limits(self) -> lim.Limits:
        if self.budget_usd is None and self.budget_period is not None:
            raise BadInputError("budgetPeriod needs budgetUsd", "budgetPeriod")
        return lim.Limits(self.rpm, self.tpm, self.max_concurrent, self.budget_usd, self.budget_period)


@dataclass(frozen=True, slots=True)
class Subject:
    """What the limiter needs to know about a user or backend."""

    id: int
    name: str
    limits: lim.Limits


async def quota_state(info: Info, subject: Subject, scope: str) -> QuotaState:
    """The store's live counters; for users, spend is at least what the rollups hold this period.

    Batched per request (a DataLoader): listing N users costs one store look-up and one spend query
    per budget period in use, not N of each.
    """
    loaders = info.context.loaders
    loader = _QUOTA_LOADERS.get(loaders)
    if loader is None:
        runtime = info.context.runtime

        async def load(keys: list[tuple[str, Subject]]) -> list[QuotaState]:
            return await quota_states(runtime.limiter, keys)

        loader = _QUOTA_LOADERS[loaders] = DataLoader(load)
    return await loader.load((scope, subject))


_QUOTA_LOADERS: WeakKeyDictionary[object, DataLoader[tuple[str, Subject], QuotaState]] = WeakKeyDictionary()


async def quota_states(limiter: lim.Limiter, keys: list[tuple[str, Subject]]) -> list[QuotaState]:
    views = await limiter.quotas([(subject, scope) for scope, subject in keys])
    periods = {(v.period_start, v.period_end) for (scope, _), v in zip(keys, views, strict=True) if scope == "user"}
    spent: dict[tuple[datetime | None, datetime | None], dict[int, float]] = {
        (start, end): await spent_usd_by_user(start, end)
        for start, end in periods
        if start is not None and end is not None
    }
    states = []
    for (scope, subject), view in zip(keys, views, strict=True):
        spend = view.spent_usd
        if scope == "user":
            spend = max(spend, spent.get((view.period_start, view.period_end), {}).get(subject.id, 0.0))
        states.append(
            QuotaState(
                requests_this_minute=view.requests,
                tokens_this_minute=view.tokens,
                in_flight=view.in_flight,
                spent_usd=spend,
                period_start=view.period_start if scope == "user" else None,
                period_end=view.period_end if scope == "user" else None,
                queued=view.queued,
            )
        )
    return states
