"""GraphQL types of limits and quota state (used by User, Backend and Viewer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import strawberry
from strawberry.types import Info

from router import limits as lim
from router.analytics_queries import spent_usd
from router.services import ServiceError


@strawberry.enum
class BudgetPeriod(Enum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


@strawberry.type(
    description="Limits on a user or a backend; null = unlimited. They hold across all router processes that "
    "share a Redis."
)
class Limits:
    rpm: int | None = strawberry.field(description="Requests per minute.")
    tpm: int | None = strawberry.field(description="Tokens (prompt + completion) per minute.")
    max_concurrent: int | None = strawberry.field(description="Requests in flight at once.")
    budget_usd: float | None = strawberry.field(description="Spend allowed per budget period, in USD (users only).")
    budget_period: BudgetPeriod | None = strawberry.field(
        description="The period budgetUsd applies to (calendar day, ISO week or calendar month, UTC)."
    )

    @classmethod
    def of(cls, limits: lim.Limits) -> Limits:
        period = BudgetPeriod(limits.budget_period.value) if limits.budget_period is not None else None
        return cls(
            rpm=limits.rpm,
            tpm=limits.tpm,
            max_concurrent=limits.max_concurrent,
            budget_usd=limits.budget_usd,
            budget_period=period,
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
    budget_period: BudgetPeriod | None = None

    def to_limits(self) -> lim.Limits:
        period = lim.BudgetPeriod(self.budget_period.value) if self.budget_period is not None else None
        if self.budget_usd is None and period is not None:
            raise ServiceError("BAD_USER_INPUT", "budgetPeriod needs budgetUsd", "budgetPeriod")
        return lim.Limits(self.rpm, self.tpm, self.max_concurrent, self.budget_usd, period)


@dataclass(frozen=True, slots=True)
class Subject:
    """What the limiter needs to know about a user or backend."""

    id: int
    name: str
    limits: lim.Limits


async def quota_state(info: Info, subject: Subject, scope: str) -> QuotaState:
    """The store's live counters; for users, spend is at least what the rollups hold this period."""
    view = await info.context.runtime.limiter.quota(subject, scope)
    spent = view.spent_usd
    if scope == "user" and view.period_start is not None and view.period_end is not None:
        spent = max(spent, await spent_usd(subject.id, view.period_start, view.period_end))
    return QuotaState(
        requests_this_minute=view.requests,
        tokens_this_minute=view.tokens,
        in_flight=view.in_flight,
        spent_usd=spent,
        period_start=view.period_start if scope == "user" else None,
        period_end=view.period_end if scope == "user" else None,
        queued=view.queued,
    )
