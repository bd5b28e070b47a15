"""How one component tells others that something happened: a typed list of callbacks.

A component owns its `Signal`s (`Catalog.on_reload`, `LogWriter.on_written`, ...) and emits them;
it never knows who listens. `router.runtime` connects the listeners, all in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, ParamSpec

P = ParamSpec("P")

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
