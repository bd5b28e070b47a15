"""Subscription root: live request logs from the runtime's event bus, and live usage ticks.

Each subscription owns one bounded queue on `runtime.bus` (SUBSCRIBER_QUEUE_SIZE entries). The
log writer publishes without ever waiting; when a subscriber's queue is full (a slow or stuck
client), the oldest undelivered entry is dropped and counted in `Subscription.dropped`, so /v1
and other subscribers are never held up and a stuck client costs bounded memory. A client that
falls that far behind sees a gap, never stale data from long ago; `requestLogs` fills gaps.
`maxPerSecond` caps a subscription's rate (the excess is left out before it is queued); each
message's `skippedBefore` says how many matching requests were left out, by the cap or the queue,
just before it.

`usageTicks` reads `runtime.ticker` (router/live.py): one message per interval whatever the
traffic, from a one-slot mailbox per subscription (a slow client gets the newest tick and how many
it skipped). A tick reaches many dashboards at once, so it is executed once, not once per
subscriber: every subscription with the same tick and `skipped` yields the same UsageTick, and
`SharedEventExecution` (the schema's execution context) keeps the result of executing a shared
event per selection (operation text, fragments, variables) and hands it to the other
subscribers with that selection. Their work is then only the WebSocket frame.
"""

from __future__ import annotations

import typing
from collections.abc import AsyncGenerator, Awaitable
from datetime import datetime
from typing import Any

import strawberry
from graphql import print_ast
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.errors import bad_input
from graphql_schema.types import RequestLogEntry, UsageGroupBy, UsageRow, filter_id, ids_filter
from router.live import MAX_INTERVAL_S, HealthChange, Tick

MAX_PER_SECOND = 10_000


@strawberry.type(
    description="Live aggregates of the last interval across all router processes (one message per interval, "
    "whatever the traffic)."
)
class UsageTick:
    at: datetime = strawberry.field(description="End of the interval.")
    interval_s: int = strawberry.field(description="The interval's length in seconds, as subscribed.")
    skipped: int = strawberry.field(
        description="Ticks this subscriber missed since its previous message (a slow reader gets the newest "
        "tick); 0 normally."
    )
    rows: list[UsageRow] = strawberry.field(
        description="One row per group that had requests in the interval; empty for an interval without traffic."
    )
    # Results of executing this event, per selection (SharedEventExecution); not in the schema.
    shared_results: strawberry.Private[dict[Any, Any] | None] = None

    @classmethod
    def of(cls, tick: Tick, skipped: int) -> UsageTick:
        """The one UsageTick every subscriber of `tick` that skipped `skipped` ticks gets."""
        shared: UsageTick | None = tick.views.get(skipped)
        if shared is None:
            rows = tick.views.get("rows")
            if rows is None:
                rows = tick.views["rows"] = [UsageRow.from_data(row) for row in tick.rows]
            shared = cls(at=tick.at, interval_s=tick.interval_s, skipped=skipped, rows=rows)
            shared.shared_results = {}
            tick.views[skipped] = shared
        return shared


class SharedEventExecution(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context, plus: a subscription event that carries `shared_results` (a
    UsageTick) is executed once per selection, and the result is reused by every subscription
    with the same selection. Such events resolve from their own fields only (no context, no
    per-subscriber state: auth was checked when subscribing), so the results are the same.
    """

    _share_key: tuple[str, str] | None = None

    def build_per_event_executor(self, payload: Any) -> Any:
        if self._share_key is None and getattr(payload, "shared_results", None) is not None:
            fragments = " ".join(print_ast(f) for f in self.fragment_definitions.values())
            variables = repr(sorted(self.variable_values.coerced.items()))
            self._share_key = (print_ast(self.operation) + fragments, variables)  # once per subscription
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> Any:
        results: dict[Any, Any] | None = getattr(self.root_value, "shared_results", None)
        key = self._share_key
        if results is None or key is None:
            return super().execute_operation(serially)
        done = results.get(key)
        if done is not None:
            return done
        result = super().execute_operation(serially)
        if self.is_awaitable(result):
            return _keep(results, key, result)
        results[key] = result
        return result


async def _keep(results: dict[Any, Any], key: Any, pending: Awaitable[Any]) -> Any:
    result = await pending
    results.setdefault(key, result)
    return result


@strawberry.type(description="A backend marked down or up again (by this router process or another one).")
class BackendHealthEvent:
    backend_id: strawberry.ID = strawberry.field(description="The backend's id.")
    backend_name: str | None = strawberry.field(description="Null when the backend was deleted meanwhile.")
    healthy: bool = strawberry.field(description="False: marked down (requests avoid it); true: up again.")
    reason: str | None = strawberry.field(description="Why it was marked down; null when it is up again.")
    at: datetime = strawberry.field(description="When the change happened.")

    @classmethod
    def of(cls, change: HealthChange, name: str | None) -> BackendHealthEvent:
        return cls(
            backend_id=strawberry.ID(str(change.backend_id)),
            backend_name=name,
            healthy=change.healthy,
            reason=change.reason,
            at=change.at,
        )


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
        max_per_second: typing.Annotated[
            int | None,
            strawberry.argument(
                description=f"At most this many requests a second (1 to {MAX_PER_SECOND}); the rest are left out "
                "and counted in the next message's skippedBefore. Default: every request."
            ),
        ] = None,
    ) -> AsyncGenerator[RequestLogEntry, None]:
        info.context.require_admin()
        wanted = ids_filter(user_id, backend_id)
        if max_per_second is not None and not 1 <= max_per_second <= MAX_PER_SECOND:
            raise bad_input(
                f"maxPerSecond must be between 1 and {MAX_PER_SECOND}, got {max_per_second}", "maxPerSecond"
            )

        subscription = info.context.runtime.bus.subscribe(wanted, max_per_second)
        try:
            while True:
                record, left_out = await subscription.get_with_left_out()
                entry = RequestLogEntry.from_row(record)
                entry.skipped_before = left_out
                yield entry
        finally:
            subscription.close()

    @strawberry.subscription(
        description="Aggregates of the last intervalS seconds (default 1), grouped as asked (default none: one "
        "row), every intervalS seconds."
    )
    async def usage_ticks(
        self,
        info: Info[AdminContext, None],
        interval_s: int | None = None,
        group_by: list[UsageGroupBy] | None = None,
    ) -> AsyncGenerator[UsageTick, None]:
        info.context.require_admin()
        interval = 1 if interval_s is None else interval_s
        if not 1 <= interval <= MAX_INTERVAL_S:
            raise bad_input(f"intervalS must be between 1 and {MAX_INTERVAL_S} seconds, got {interval}", "intervalS")
        ticker = info.context.runtime.ticker
        mailbox = ticker.subscribe(interval, [g.value for g in group_by or ()])
        try:
            while True:
                tick, skipped = await mailbox.get()
                yield UsageTick.of(tick, skipped)
        finally:
            ticker.unsubscribe(mailbox)

    @strawberry.subscription(
        description="A backend marked down (with the reason) or up again; optionally only one backend's."
    )
    async def backend_health_changed(
        self, info: Info[AdminContext, None], backend_id: strawberry.ID | None = None
    ) -> AsyncGenerator[BackendHealthEvent, None]:
        info.context.require_admin()
        bid = filter_id(backend_id, "backendId")
        runtime = info.context.runtime
        queue = runtime.health_feed.subscribe()
        try:
            while True:
                change = await queue.get()
                if bid is not None and change.backend_id != bid:
                    continue
                backend = runtime.catalog.snapshot.backends_by_id.get(change.backend_id)
                yield BackendHealthEvent.of(change, backend.name if backend is not None else None)
        finally:
            runtime.health_feed.unsubscribe(queue)
