"""quotaEvents: the throttle (one event per subject and kind per second, the rest counted).

The subscription over a real WebSocket on two router processes sharing Redis is tested in
test_limits_redis.py, on that module's pair of router processes."""

from __future__ import annotations

from typing import Any

from router.quota_events import QuotaEvent, QuotaEventFeed


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
