"""Choosing the backends a request may go to, and the order to try them in.

Everything here is plain in-memory state and pure decisions; the proxy asks, this answers.
Health and in-flight counts are per process; with Redis they are also shared (see `router.shared`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from router.catalog import BackendEntry, UserEntry


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
    failures: int = 0
    down_until: float = 0.0
    probing: bool = False


@dataclass
class HealthTracker:
    """Marks a backend down after `threshold` consecutive failures, for `cooldown_s`.

    After the cooldown one request is let through as a probe: success marks it healthy again,
    failure starts a new cooldown.
    """

    threshold: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    # Told when this process marks a backend down (backend_id, cooldown_s) or up again (backend_id, 0.0):
    # `router.shared` tells the other processes. Never raises into the request path.
    on_change: Callable[[int, float], None] | None = None
    _state: dict[int, _Health] = field(default_factory=dict)

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

    def record_success(self, backend_id: int) -> None:
        state = self._state.get(backend_id)
        if state is not None and (state.failures or state.down_until):
            self._state[backend_id] = _Health()
            if state.down_until:
                self._notify(backend_id, 0.0)

    def record_failure(self, backend_id: int) -> bool:
        """Count a failure; True when this marks the backend down."""
        state = self._state.setdefault(backend_id, _Health())
        state.failures += 1
        state.probing = False
        if state.failures >= self.threshold or state.down_until:
            state.down_until = self.clock() + self.cooldown_s
            self._notify(backend_id, self.cooldown_s)
            return True
        return False

    def _notify(self, backend_id: int, cooldown_s: float) -> None:
        if self.on_change is not None:
            with contextlib.suppress(Exception):  # sharing is best effort; the local state is already right
                self.on_change(backend_id, cooldown_s)

    def mark_down(self, backend_id: int, until_monotonic: float) -> None:
        """Apply a 'down' learnt from another process."""
        state = self._state.setdefault(backend_id, _Health())
        state.failures = max(state.failures, self.threshold)
        state.down_until = max(state.down_until, until_monotonic)
        state.probing = False

    def mark_up(self, backend_id: int) -> None:
        """Apply an 'up again' learnt from another process (its probe succeeded)."""
        self._state.pop(backend_id, None)


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
