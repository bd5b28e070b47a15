"""The engine's use of mini-racer 0.14 below its public API (internals; pyproject pins the minor version).

mini-racer runs each context's JS on an isolate thread of its own and hands every result back by
calling ``Context.handle_callback_from_v8`` on that thread. That method is wrapped once, process-wide:

* for a context being set up (:func:`watch`), its first callback tells which thread runs the isolate
  (:func:`isolate_thread`: the engine reads that thread's CPU clock for the time limit) and pins a
  Python thread state there (threadstate.py), released by :func:`forget` once the context is closed;
* the result of an :func:`evaluate` call is handed to its waiter directly.

:func:`evaluate` is ``eval_cancelable`` that first waits up to ``SYNC_WAIT_S`` on a lock, with the event
loop blocked, and only then on an asyncio future. A hook that answers within that time (a small one
does, in ~0.05 ms) costs no event-loop wake-up (``call_soon_threadsafe``: an eventfd write on the
isolate's thread, an epoll wake-up, a loop iteration and a task step on the loop's); a slow one costs
the loop at most ``SYNC_WAIT_S`` of waiting, and the time limit only starts to be checked after it
(the limit is never shorter than that wait). Cancelling the awaiting task cancels the V8 task, as
``eval_cancelable`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from py_mini_racer import MiniRacer
from py_mini_racer._context import Context as _MRContext
from py_mini_racer._value_handle import ValueHandle

from . import threadstate

SYNC_WAIT_S = 0.0005

# Contexts being set up (id of the mini-racer context -> its isolate thread, None until seen), the
# thread states pinned on isolate threads (same key), and the evaluations waiting for an answer
# ((id of the mini-racer context, callback id) -> waiter).
_isolate_threads: dict[int, int | None] = {}
_pins: dict[int, threadstate.Pin | None] = {}
_waiters: dict[tuple[int, int], _Waiter] = {}


def _intercepting(original: Any) -> Any:
    def handle_callback_from_v8(self: _MRContext, callback_id: int, raw_val_handle: Any) -> None:
        key = id(self)
        if key in _isolate_threads and _isolate_threads[key] is None:
            _isolate_threads[key] = threading.get_ident()
            _pins[key] = threadstate.pin()
        waiter = _waiters.pop((key, callback_id), None)
        if waiter is None:
            original(self, callback_id, raw_val_handle)
        else:
            waiter.deliver(self._wrap_raw_handle(raw_val_handle))

    handle_callback_from_v8.router_intercepts = True  # type: ignore[attr-defined]
    return handle_callback_from_v8


if not getattr(_MRContext.handle_callback_from_v8, "router_intercepts", False):
    _MRContext.handle_callback_from_v8 = _intercepting(_MRContext.handle_callback_from_v8)  # type: ignore[method-assign]


def watch(racer: MiniRacer) -> None:
    """Learn the isolate thread of a new context from its next callback (and pin a thread state there)."""
    _isolate_threads[id(racer._ctx)] = None


def isolate_thread(racer: MiniRacer) -> int | None:
    """The isolate thread of a watched context (None if no callback came yet); stops watching it."""
    return _isolate_threads.pop(id(racer._ctx), None)


def forget(key: int) -> bool:
    """After a context is closed (``key``: id of its mini-racer context): release what was kept for it.
    False when its isolate thread still runs (its thread state is then kept)."""
    _isolate_threads.pop(key, None)
    return threadstate.unpin(_pins.pop(key, None))


class _Waiter:
    """One evaluation's answer: taken on a lock while the caller still waits synchronously, else on a future."""

    __slots__ = ("done", "future", "loop", "mutex", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.mutex = threading.Lock()
        self.done = threading.Lock()
        self.done.acquire()
        self.value: ValueHandle | None = None
        self.future: asyncio.Future[ValueHandle] | None = None

    def deliver(self, value: ValueHandle) -> None:
        """On the isolate thread (GIL held)."""
        with self.mutex:
            self.value = value
            future = self.future
        if future is None:
            self.done.release()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self.loop.call_soon_threadsafe(_settle, future, value)

    async def wait(self, sync_s: float, slow: Callable[[], object] | None) -> ValueHandle:
        if self.done.acquire(timeout=sync_s) if sync_s > 0 else self.done.acquire(blocking=False):
            assert self.value is not None
            return self.value
        with self.mutex:
            if self.value is not None:
                return self.value
            future: asyncio.Future[ValueHandle] = self.loop.create_future()
            self.future = future
        if slow is not None:
            slow()
        return await future


def _settle(future: asyncio.Future[ValueHandle], value: ValueHandle) -> None:
    if not future.done():
        future.set_result(value)


async def evaluate(
    racer: MiniRacer, code: str, sync_s: float = SYNC_WAIT_S, slow: Callable[[], object] | None = None
) -> Any:
    """``racer.eval_cancelable(code)``, waiting up to ``sync_s`` synchronously first (see above);
    ``slow`` is called when that was not enough, before the answer is awaited."""
    ctx = racer._ctx
    if ctx is None:
        raise RuntimeError("the mini-racer context is closed")
    handle = ctx._python_to_value_handle(code)
    callback_id = next(ctx._next_async_callback_id)
    key = (id(ctx), callback_id)
    waiter = _Waiter(ctx.event_loop)
    _waiters[key] = waiter
    task_id = ctx._dll.mr_eval(ctx._ctx, handle.raw, callback_id)
    try:
        value = await waiter.wait(sync_s, slow)
    finally:
        _waiters.pop(key, None)
        ctx._dll.mr_cancel_task(ctx._ctx, task_id)  # ignored when the task is done
    return ctx._value_handle_to_python(value)
