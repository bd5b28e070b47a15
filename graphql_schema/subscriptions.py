"""Subscription root: live request logs from the runtime's event bus.

Each subscription owns one bounded queue on `runtime.bus` (SUBSCRIBER_QUEUE_SIZE entries). The
log writer publishes without ever waiting; when a subscriber's queue is full (a slow or stuck
client), the oldest undelivered entry is dropped and counted in `Subscription.dropped`, so /v1
and other subscribers are never held up and a stuck client costs bounded memory. A client that
falls that far behind sees a gap, never stale data from long ago; `requestLogs` fills gaps.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.queries import filter_id
from graphql_schema.types import RequestLog
from router.usage import RequestRecord


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every request that the router finishes, as soon as it is logged; "
        "optionally only one user's or backend's."
    )
    async def request_logged(
        self,
        info: Info[AdminContext, None],
        user_id: strawberry.ID | None = None,
        backend_id: strawberry.ID | None = None,
    ) -> AsyncGenerator[RequestLog, None]:
        info.context.require_admin()
        uid = filter_id(user_id, "userId")
        bid = filter_id(backend_id, "backendId")

        def wanted(record: RequestRecord) -> bool:
            return (uid is None or record.user_id == uid) and (bid is None or record.backend_id == bid)

        subscription = info.context.runtime.bus.subscribe(wanted)
        try:
            while True:
                record = await subscription.get()
                yield RequestLog.from_row(record)
        finally:
            subscription.close()
