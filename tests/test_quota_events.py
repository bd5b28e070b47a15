"""quotaEvents: the throttle (one event per subject and kind per second, the rest counted), and the
subscription over a real WebSocket (graphql-transport-ws) on two router processes sharing Redis:
a refusal on one process reaches the subscribers of both, filtered by user."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from router.quota_events import QuotaEvent, QuotaEventFeed
from tests.test_graphql_subscriptions import Subscriber
from tests.test_limits_redis import chat, new_user, pair  # noqa: F401 - pair is a fixture

FIELDS = "kind subject subjectId subjectName userId backendId limit retryAfterS at suppressedBefore"


def event(kind: str = "RPM", subject_id: int = 1, scope: str = "user") -> QuotaEvent:
    return QuotaEvent(kind, scope, subject_id, f"s{subject_id}", subject_id, 7, 4, 30.0, 1000.0)


async def test_one_event_per_subject_and_kind_per_second_the_rest_counted() -> None:
    now = [0.0]
    feed = QuotaEventFeed(clock=lambda: now[0])
    shared: list[dict[str, Any]] = []
    feed.on_share.connect(shared.append)
    queue = feed.subscribe()
    for _ in range(100):
        feed.local(event())
    feed.local(event("TPM"))  # another kind
    feed.local(event(subject_id=2))  # another subject
    feed.remote(event(subject_id=2).to_wire())  # another process's, inside the same second: left out
    got = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [(e.kind, e.subject_id, e.suppressed) for e in got] == [("RPM", 1, 0), ("TPM", 1, 0), ("RPM", 2, 0)]
    assert len(shared) == 3  # only what passed goes to the other processes

    now[0] = 1.0
    feed.local(event())
    feed.remote({**event(subject_id=2).to_wire(), "suppressed": 5})
    first, second = queue.get_nowait(), queue.get_nowait()
    assert (first.subject_id, first.suppressed) == (1, 99)  # the flood of the previous second
    assert (second.subject_id, second.suppressed) == (2, 6)  # 1 left out here + 5 by the sender
    feed.unsubscribe(queue)
    feed.local(event("BUDGET"))
    assert queue.empty()


async def next_event(sub: Subscriber, timeout: float = 10.0) -> dict[str, Any]:
    message = await sub.message(timeout)
    assert message["type"] == "next" and not message["payload"].get("errors"), message
    return message["payload"]["data"]["quotaEvents"]


async def subscribe(router, args: str = "") -> Subscriber:
    sub = await Subscriber.connect(router)
    await sub.acknowledged()
    await sub.subscribe(f"subscription {{ quotaEvents{args} {{ {FIELDS} }} }}")
    return sub


async def refused_until_seen(router, key: str, sub: Subscriber) -> dict[str, Any]:
    """Requests refused until `sub` gets an event: once a second one passes the throttle (and a subscription
    just opened may not be registered yet when the first is sent)."""
    for _ in range(20):
        assert (await asyncio.to_thread(chat, router, key)).status_code == 429
        with contextlib.suppress(TimeoutError):
            return await next_event(sub, timeout=1.2)
    raise AssertionError("no quota event reached the subscriber")


async def test_quota_events_reach_subscribers_of_every_process(pair) -> None:  # noqa: F811 - the fixture
    a, b = pair
    key = new_user(a, b, "quinn", {"rpm": 1})
    other_key = new_user(a, b, "olga", {"rpm": 1})
    users = {u["name"]: u["id"] for u in a.gql_ok("{ users { id name } }")["users"]}
    on_a = await subscribe(a)
    on_b = await subscribe(b, f'(userId: "{users["quinn"]}")')
    only_olga = await subscribe(b, f'(userId: "{users["olga"]}")')
    try:
        assert (await asyncio.to_thread(chat, a, key)).status_code == 200
        seen_b = await refused_until_seen(a, key, on_b)
        assert (seen_b["kind"], seen_b["subject"], seen_b["subjectName"]) == ("RPM", "USER", "quinn")
        assert seen_b["subjectId"] == seen_b["userId"] == users["quinn"] and seen_b["backendId"] is not None
        assert seen_b["limit"] == 1 and 1 <= seen_b["retryAfterS"] <= 60
        seen_a = await next_event(on_a)
        assert seen_a["subjectName"] == "quinn" and seen_a["kind"] == "RPM"

        # A flood of 15 refusals: about one event a second, each counting the refusals left out before it.
        started = time.monotonic()
        statuses = await asyncio.gather(*(asyncio.to_thread(chat, a, key) for _ in range(15)))
        assert {r.status_code for r in statuses} == {429}
        events = counted = 0
        while counted < 15:
            later = await refused_until_seen(a, key, on_b)
            events, counted = events + 1, counted + 1 + later["suppressedBefore"]
        assert events <= time.monotonic() - started + 1, (events, counted)

        # The filtered subscriber got none of quinn's: its first event is olga's.
        assert (await asyncio.to_thread(chat, b, other_key)).status_code == 200
        olga = await refused_until_seen(b, other_key, only_olga)
        assert olga["subjectName"] == "olga"
    finally:
        for sub in (on_a, on_b, only_olga):
            await sub.close()
    refused = await Subscriber.connect(b, token="wrong-password")
    await refused.subscribe(f"subscription {{ quotaEvents {{ {FIELDS} }} }}")
    with pytest.raises(ConnectionClosed):
        await refused.message()
