"""Choosing the backends a request may go to, and the order to try them in.

Everything here is plain in-memory state and pure decisions; the proxy asks, this answers.
Health and in-flight counts are per process; with Redis they are also shared (see `router.shared`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from router.catalog import BackendEntry, UserEntry
from router.signals import Signal


def candidate_backends(
    backends: Iterable[BackendEntry],
    models_of: Callable[[int], Collection[str]],
    user: UserEntry,
    model: str,
) -> tuple[list[BackendEntry], bool]:
    """Active backends serving `model`, and whether some exist that the user may not use.

    Returns (permitted candidates, any_forbidden): the caller turns "none permitted but some
    exist" into 403 and "none at all" into 404.
    """
    permitted: list[BackendEntry] = []
    forbidden = False
    for backend in backends:
        if not backend.is_active or model not in models_of(backend.id):
            continue
        if user.may_use(backend.id):
            permitted.append(backend)
        else:
            forbidden = True
    return permitted, forbidden


class WeightedRoundRobin:
    """Smooth weighted round-robin (as nginx does): spreads picks evenly by weight."""

    def __init__(self) -> None:
        self._current: dict[int, float] = {}

    def order(self, backends: Sequence[BackendEntry]) -> list[BackendEntry]:
        """The backends in the order to try them: the weighted pick first, then by weight."""
        weighted = [b for b in backends if b.weight > 0] or list(backends)
        if len(weighted) <= 1:
            return list(weighted) + [b for b in backends if b not in weighted]
        total = 0
        best: BackendEntry | None = None
        for backend in weighted:
            weight = backend.weight or 1
            total += weight
            value = self._current.get(backend.id, 0.0) + weight
            self._current[backend.id] = value
            if best is None or value > self._current[best.id]:
                best = backend
        assert best is not None
        self._current[best.id] -= total
        rest = sorted((b for b in backends if b is not best), key=lambda b: -b.weight)
        return [best, *rest]


def order_least_busy(backends: Sequence[BackendEntry], in_flight: Callable[[int], int]) -> list[BackendEntry]:
    """Fewest requests in flight relative to weight first; ties keep the given order."""
    return sorted(backends, key=lambda b: in_flight(b.id) / max(b.weight, 1))


@dataclass
class _Health:
    failures: int = 0  # consecutive failed requests
    check_failures: int = 0  # consecutive failed active checks
    down_until: float = 0.0  # monotonic; 0 = healthy
    probing: bool = False
    reason: str | None = None  # why it is down, in words
    since: float | None = None  # wall clock: when it went down
    by_check: bool = False  # the latest failure was an active check (so a passing check clears it at once)


@dataclass(frozen=True)
class CheckResult:
    """One active health check of a backend (or a connection test)."""

    at: float  # wall clock
    ok: bool
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True)
class HealthStatus:
    """What the admin API shows about a backend's health. Times are wall-clock seconds."""

    healthy: bool
    reason: str | None = None
    since: float | None = None
    retry_at: float | None = None  # end of the cooldown: when requests may go there again
    last_check: CheckResult | None = None


CHECK_FAILURES_TO_DOWN = 2  # consecutive failed active checks that mark a backend down


@dataclass
class HealthTracker:
    """Marks a backend down after `threshold` consecutive failed requests, or after
    `CHECK_FAILURES_TO_DOWN` failed active checks, for `cooldown_s`.

    After the cooldown one request is let through as a probe: success marks it healthy again,
    failure starts a new cooldown. A passing active check marks it healthy at once if the
    latest failure was a check, else once the cooldown is over (requests failing on a backend
    whose /models still answers must not flap back every check).
    """

    threshold: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    # Emitted when this process marks a backend down (backend_id, cooldown_s) or up again (backend_id, 0.0):
    # `router.shared` tells the other processes. Never raises into the request path.
    on_change: Signal[[int, float]] = field(default_factory=Signal)
    # Emitted for every transition this process sees, its own or learnt from another process:
    # (backend_id, healthy, reason). For the `backendHealthChanged` subscription.
    on_transition: Signal[[int, bool, str | None]] = field(default_factory=Signal)
    wall: Callable[[], float] = time.time
    _state: dict[int, _Health] = field(default_factory=dict)
    _checks: dict[int, CheckResult] = field(default_factory=dict)

    def is_available(self, backend_id: int) -> bool:
        state = self._state.get(backend_id)
        if state is None or state.down_until == 0.0:
            return True
        if self.clock() >= state.down_until and not state.probing:
            state.probing = True
            return True
        return False

    def is_healthy(self, backend_id: int) -> bool:
        state = self._state.get(backend_id)
        return state is None or state.down_until == 0.0

    def status(self, backend_id: int) -> HealthStatus:
        state = self._state.get(backend_id)
        check = self._checks.get(backend_id)
        if state is None or state.down_until == 0.0:
            return HealthStatus(True, last_check=check)
        retry_at = self.wall() + max(0.0, state.down_until - self.clock())
        return HealthStatus(False, state.reason, state.since, retry_at, check)

    def record_success(self, backend_id: int) -> None:
        state = self._state.get(backend_id)
        if state is not None and (state.failures or state.down_until or state.check_failures):
            self._state[backend_id] = _Health()
            if state.down_until:
                self._notify(backend_id, 0.0)
                self._tell(backend_id, True, None)

    def record_failure(self, backend_id: int, reason: str | None = None) -> bool:
        """Count a failed request; True when this marks the backend down."""
        state = self._state.setdefault(backend_id, _Health())
        state.failures += 1
        state.probing = False
        if state.failures >= self.threshold or state.down_until:
            what = reason or "request failed"
            count = f"{state.failures} failed requests in a row" if state.failures > 1 else "a failed request"
            self._mark_down(backend_id, state, f"{count}, the last: {what}", False)
            return True
        return False

    def record_check(self, backend_id: int, result: CheckResult) -> bool | None:
        """Apply an active check; True when it marks the backend down, False when up again, else None."""
        self._checks[backend_id] = result
        state = self._state.setdefault(backend_id, _Health())
        if result.ok:
            state.check_failures = 0
            if state.down_until and (state.by_check or self.clock() >= state.down_until):
                self.record_success(backend_id)
                return False
            return None
        state.check_failures += 1
        if state.check_failures >= CHECK_FAILURES_TO_DOWN or state.down_until:
            was_down = bool(state.down_until)
            self._mark_down(backend_id, state, f"health check failed: {result.error}", True)
            return None if was_down else True
        return None

    def note_check(self, backend_id: int, result: CheckResult) -> None:
        """Keep a check made by another process (its up/down decision arrives separately)."""
        self._checks[backend_id] = result

    def _mark_down(self, backend_id: int, state: _Health, reason: str, by_check: bool) -> None:
        was_up = not state.down_until
        if was_up:
            state.since = self.wall()
        state.down_until = self.clock() + self.cooldown_s
        state.reason = reason
        state.by_check = by_check
        self._notify(backend_id, self.cooldown_s)
        if was_up:
            self._tell(backend_id, False, reason)

    def _tell(self, backend_id: int, healthy: bool, reason: str | None) -> None:
        self.on_transition.emit(backend_id, healthy, reason)

    def _notify(self, backend_id: int, cooldown_s: float) -> None:
        self.on_change.emit(backend_id, cooldown_s)  # sharing is best effort; the local state is already right

    def mark_down(
        self,
        backend_id: int,
        until_monotonic: float,
        reason: str | None = None,
        since: float | None = None,
        by_check: bool = False,
    ) -> None:
        """Apply a 'down' learnt from another process."""
        state = self._state.setdefault(backend_id, _Health())
        was_up = not state.down_until
        if was_up:
            state.since = since or self.wall()
        state.failures = max(state.failures, self.threshold)
        state.down_until = max(state.down_until, until_monotonic)
        state.probing = False
        state.reason = reason or state.reason or "marked down by another router process"
        state.by_check = by_check
        if was_up:
            self._tell(backend_id, False, state.reason)

    def down_details(self, backend_id: int) -> tuple[str | None, float | None, bool]:
        """(reason, since, by_check) of a backend that is down, for sharing with other processes."""
        state = self._state.get(backend_id)
        return (state.reason, state.since, state.by_check) if state else (None, None, False)

    def mark_up(self, backend_id: int) -> None:
        """Apply an 'up again' learnt from another process (its probe succeeded)."""
        state = self._state.pop(backend_id, None)
        if state is not None and state.down_until:
            self._tell(backend_id, True, None)

    def forget(self, keep: Iterable[int]) -> None:
        """Drop the state of backends that no longer exist."""
        keep = set(keep)
        for table in (self._state, self._checks):
            for backend_id in [b for b in table if b not in keep]:
                del table[backend_id]


class InFlight:
    """Requests in flight per backend, in this process (`counts`) and in the others (`remote`).

    `remote` is replaced about once a second by `router.shared` from the other processes'
    published counts (empty without Redis); nothing here does I/O.
    """

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.remote: dict[int, int] = {}

    def get(self, backend_id: int) -> int:
        return self.counts.get(backend_id, 0)

    def cluster(self, backend_id: int) -> int:
        """This process's live count plus the other processes' last published counts."""
        return self.counts.get(backend_id, 0) + self.remote.get(backend_id, 0)

    def enter(self, backend_id: int) -> None:
        self.counts[backend_id] = self.counts.get(backend_id, 0) + 1

    def leave(self, backend_id: int) -> None:
        self.counts[backend_id] = self.counts.get(backend_id, 1) - 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())
