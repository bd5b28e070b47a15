"""The `quotaEvents` subscription: a user or backend reaching one of its limits (router.quota_events).

Kept apart from graphql_schema/subscriptions.py and merged into the Subscription root in
graphql_schema/schema.py.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from enum import Enum

import strawberry
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.types import ids_filter
from router import quota_events


@strawberry.enum(description="Which limit was reached.")
class QuotaEventKind(Enum):
    RPM = "RPM"
    TPM = "TPM"
    CONCURRENCY = "CONCURRENCY"
    BUDGET = "BUDGET"
    QUEUE_FULL = "QUEUE_FULL"


@strawberry.enum(description="Whose limit: a user's or a backend's.")
class QuotaSubject(Enum):
    USER = "user"
    BACKEND = "backend"


@strawberry.type(
    description="A user or backend reached one of its limits: a request refused (RPM, TPM, a user's "
    "maxConcurrent, a budget), a backend at its maxConcurrent making a request queue (CONCURRENCY, "
    "retryAfterS 0), or a backend's queue full or waited out (QUEUE_FULL). At most one event per second per "
    "subject and kind; the ones left out are counted in suppressedBefore."
)
class QuotaEvent:
    kind: QuotaEventKind = strawberry.field(description="Which limit was reached.")
    subject: QuotaSubject = strawberry.field(description="Whose limit it is.")
    subject_id: strawberry.ID = strawberry.field(description="The user's or backend's id.")
    subject_name: str = strawberry.field(description="The user's or backend's name.")
    user_id: strawberry.ID | None = strawberry.field(
        description="The user whose request reached the limit (the subject, for a user's limits)."
    )
    backend_id: strawberry.ID | None = strawberry.field(
        description="The backend the request was for (the subject, for a backend's limits); null if none yet."
    )
    limit: float = strawberry.field(
        description="The limit reached: requests or tokens per minute, requests in flight, or USD per period."
    )
    retry_after_s: float = strawberry.field(
        name="retryAfterS", description="What the refused client was told to wait (Retry-After), in seconds."
    )
    at: datetime = strawberry.field(description="When it happened.")
    suppressed_before: int = strawberry.field(
        description="Events of this subject and kind left out (at most one a second) just before this one."
    )

    @classmethod
    def of(cls, event: quota_events.QuotaEvent) -> QuotaEvent:
        return cls(
            kind=QuotaEventKind(event.kind),
            subject=QuotaSubject(event.scope),
            subject_id=strawberry.ID(str(event.subject_id)),
            subject_name=event.subject_name,
            user_id=strawberry.ID(str(event.user_id)) if event.user_id is not None else None,
            backend_id=strawberry.ID(str(event.backend_id)) if event.backend_id is not None else None,
            limit=event.limit,
            retry_after_s=event.retry_after_s,
            at=datetime.fromtimestamp(event.at, UTC),
            suppressed_before=event.suppressed,
        )


@strawberry.type
class QuotaEventsSubscription:
    @strawberry.subscription(
        description="A user or backend reaching one of its limits, in any router process (at most one event per "
        "second per subject and kind); optionally only the events of one user's requests or one backend's."
    )
    async def quota_events(
        self,
        info: Info[AdminContext, None],
        user_id: strawberry.ID | None = None,
        backend_id: strawberry.ID | None = None,
    ) -> AsyncGenerator[QuotaEvent, None]:
        info.context.require_admin()
        wanted = ids_filter(user_id, backend_id)
        feed = info.context.runtime.quota_events
        queue = feed.subscribe()
        try:
            while True:
                event = await queue.get()
                if wanted(event):
                    yield QuotaEvent.of(event)
        finally:
            feed.unsubscribe(queue)
