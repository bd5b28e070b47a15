"""How one component tells others that something happened: a typed list of callbacks (and, for
subscriptions, a fan-out of events to bounded queues).

A component owns its `Signal`s (`Catalog.on_reload`, `LogWriter.on_written`, ...) and emits them;
it never knows who listens. `router.runtime` connects the listeners, all in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("router.signals")


class Signal(Generic[P]):
    """Callbacks called in the order they were connected; `emit` never raises (a failing one is logged)."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[Callable[P, object]] = []

    def connect(self, listener: Callable[P, object]) -> None:
        self._listeners.append(listener)

    def disconnect(self, listener: Callable[P, object]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(*args, **kwargs)
            except Exception:
                log.exception("listener %s failed", getattr(listener, "__qualname__", listener))

    def __len__(self) -> int:
        return len(self._listeners)


class Fanout(Generic[T]):
    """Events to every subscriber's bounded queue; a subscriber `size` events behind loses the oldest."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._queues: set[asyncio.Queue[T]] = set()

    def subscribe(self) -> asyncio.Queue[T]:
        queue: asyncio.Queue[T] = asyncio.Queue(self.size)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[T]) -> None:
        self._queues.discard(queue)

    def publish(self, event: T) -> None:
        for queue in tuple(self._queues):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
