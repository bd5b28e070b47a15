"""Quota events: a user or backend reaching one of its limits, for the `quotaEvents` subscription.

`Limiter.on_limit` emits a `QuotaEvent` when a request is refused (RPM, TPM, a user's concurrency,
a budget), when a backend at its maxConcurrent makes a request queue (CONCURRENCY) and when its
queue is full or a request waited too long (QUEUE_FULL). `QuotaEventFeed` fans them out to
bounded subscriber queues and, with Redis, to the other processes (`on_share`; theirs arrive in
`remote`).

A flood must not flood subscribers: per (subject, kind), at most one event per `interval_s`
(default 1 s) passes; the ones left out are counted in the next event's `suppressed`. The same
throttle applies to events from other processes, so a cluster delivers about one per second per
(subject, kind) however many processes hit the limit. Nothing here waits: a subscriber that falls
`QUEUE_SIZE` events behind loses the oldest.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.signals import Fanout, Signal

QUEUE_SIZE = 100  # per subscriber
MAX_KEYS = 10_000  # throttle entries kept (stale ones are dropped beyond this)

KINDS = ("RPM", "TPM", "CONCURRENCY", "BUDGET", "QUEUE_FULL")


@dataclass(frozen=True, slots=True)
class QuotaEvent:
    kind: str  # one of KINDS
    scope: str  # "user" or "backend": whose limit was reached
    subject_id: int
    subject_name: str
    user_id: int | None  # the user whose request hit the limit (the subject, for user limits)
    backend_id: int | None  # the backend it was for (the subject, for backend limits)
    limit: float
    retry_after_s: float
    at: float  # Unix time
    suppressed: int = 0  # events of this subject and kind left out by the throttle just before this one

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, message: dict[str, Any]) -> QuotaEvent:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in message.items() if k in fields})


class QuotaEventFeed(Fanout[QuotaEvent]):
    """Throttled fan-out of quota events to this process's subscribers and (with Redis) to the others."""

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(QUEUE_SIZE)
        self.interval_s = interval_s
        self.clock = clock
        self.on_share: Signal[[dict[str, Any]]] = Signal()  # connected to SharedState when REDIS_URL is set
        self._last: dict[tuple[str, int, str], float] = {}
        self._suppressed: dict[tuple[str, int, str], int] = {}

    def local(self, event: QuotaEvent) -> None:
        """An event of this process (Limiter.on_limit)."""
        passed = self._throttle(event)
        if passed is not None:
            self.publish(passed)
            self.on_share.emit(passed.to_wire())

    def remote(self, message: dict[str, Any]) -> None:
        """An event another process shared through Redis."""
        passed = self._throttle(QuotaEvent.from_wire(message))
        if passed is not None:
            self.publish(passed)

    def _throttle(self, event: QuotaEvent) -> QuotaEvent | None:
        """The event to pass on (with what was left out before it counted in), or None to leave it out."""
        key = (event.scope, event.subject_id, event.kind)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1 + event.suppressed
            return None
        if len(self._last) >= MAX_KEYS:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            self._suppressed = {k: n for k, n in self._suppressed.items() if k in self._last}
        self._last[key] = now
        left_out = self._suppressed.pop(key, 0)
        return dataclasses.replace(event, suppressed=event.suppressed + left_out) if left_out else event
