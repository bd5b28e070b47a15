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

Contexts are opened with :func:`open_context` and freed only by :meth:`Opened.close`, on a thread of the
caller's (the engine's closing threads). mini-racer's ``mr_free_context`` only drops the context's id:
the C++ context is destroyed by whichever thread drops the last reference to it, and every ``mr_*`` call
under way holds one. A ``ValueHandle`` freed on the event loop (``mr_free_value``) while another thread
freed the context then destroyed it on the loop (blocking it until the isolate stopped), after
mini-racer's ctypes callback had been freed with the closing thread's frame: the isolate thread's last
callback (a cancelled task's answer) jumped into freed memory and the process died (SIGSEGV in
``mr_callback``). So each context's DLL handle (``Context._dll``) is replaced by :class:`_Calls`, which
counts the calls under way; closing refuses new ones, waits for those under way and only then frees the
context, so the closing thread drops the last reference and the callback outlives the isolate. A context
dropped without ``close`` is closed the same way, on a thread started for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from py_mini_racer import JSEvalException, JSOOMException, MiniRacer, mini_racer
from py_mini_racer._context import Context as _MRContext
from py_mini_racer._value_handle import ValueHandle

from . import threadstate

SYNC_WAIT_S = 0.0005
_STR_UTF8 = 5  # mini-racer's type code of a UTF-8 string value (py_mini_racer/_objects.py _MiniRacerTypes)

# Contexts being set up (mini-racer's id of the context -> its isolate thread, None until seen), the
# thread states pinned on isolate threads (same key), and the evaluations waiting for an answer
# ((id of the context, callback id) -> waiter). mini-racer's ids of contexts are never reused.
_isolate_threads: dict[int, int | None] = {}
_pins: dict[int, threadstate.Pin | None] = {}
_waiters: dict[tuple[int, int], _Waiter] = {}


def _key(ctx: _MRContext) -> int:
    """mini-racer's id of a context (never reused, unlike ``id()`` of the Python object)."""
    return ctx._ctx  # type: ignore[return-value]


def _intercepting(original: Any) -> Any:
    def handle_callback_from_v8(self: _MRContext, callback_id: int, raw_val_handle: Any) -> None:
        key = _key(self)
        if key in _isolate_threads and _isolate_threads[key] is None:
            _isolate_threads[key] = threading.get_ident()
            _pins[key] = threadstate.pin()
        calls = self._dll
        if isinstance(calls, _Calls):
            calls.pending.pop(callback_id, None)
        waiter = _waiters.pop((key, callback_id), None)
        if waiter is None:
            if callback_id and self.event_loop.is_closed():  # nobody waits (mini-racer would raise here)
                self._wrap_raw_handle(raw_val_handle)  # freed at once
                return
            original(self, callback_id, raw_val_handle)
        else:
            waiter.deliver(self._wrap_raw_handle(raw_val_handle))

    handle_callback_from_v8.router_intercepts = True  # type: ignore[attr-defined]
    return handle_callback_from_v8


if not getattr(_MRContext.handle_callback_from_v8, "router_intercepts", False):
    _MRContext.handle_callback_from_v8 = _intercepting(_MRContext.handle_callback_from_v8)  # type: ignore[method-assign]


# How long closing a context waits for its cancelled evaluations to answer: a running one stops within
# microseconds; a microtask spin or a built-in that ignores termination does not (freeing stops the first
# and waits for the second anyway), so the wait is short.
PENDING_WAIT_S = 0.01

# mini-racer calls that are harmless to skip once a context is being freed (it frees all its values).
_SKIPPABLE = frozenset({"mr_free_value", "mr_cancel_task"})


class _Calls:
    """A context's DLL handle (mini-racer's ``Context._dll``) that lets it be freed only when no call
    into it is under way (see above). Calls after :meth:`shut` are refused (frees and cancels: skipped).

    A call registers itself, then looks whether the context is shut; :meth:`shut` marks it shut, then
    waits until no call is registered. Both run under the GIL, so either the call sees the mark or the
    closing thread sees the call. No lock on the way in (a call costs ~0.2 us more), none held while a
    call may allocate (a garbage collection there may free a value of the same context: a nested call)."""

    def __init__(self, dll: Any, context_id: int) -> None:
        self._dll = dll
        self._context_id = context_id
        self._busy: set[int] = set()
        self._tokens = itertools.count()
        self._cond = threading.Condition()  # reentrant: see above
        self._shut = False
        # Evaluations and function calls not answered yet: callback id -> mini-racer's task id (see `shut`).
        self.pending: dict[int, int] = {}
        for name in ("mr_eval", "mr_call_function"):  # both take the callback id last
            setattr(self, name, self._tracking(self.__getattr__(name)))

    def _tracking(self, submit: Callable[..., Any]) -> Callable[..., Any]:
        pending = self.pending

        def tracked(*args: Any) -> Any:
            task = submit(*args)
            if args[-1]:  # callback id 0: a synchronous task, answered before the call returns to its caller
                pending[args[-1]] = task
            return task

        return tracked

    def __getattr__(self, name: str) -> Callable[..., Any]:
        function = getattr(self._dll, name)
        busy, tokens, skippable = self._busy, self._tokens, name in _SKIPPABLE

        def call(*args: Any) -> Any:
            token = next(tokens)
            busy.add(token)
            try:
                if self._shut:
                    if skippable:
                        return None
                    raise RuntimeError("the mini-racer context is closed")
                return function(*args)
            finally:
                busy.discard(token)
                if self._shut:
                    with self._cond:
                        self._cond.notify_all()

        setattr(self, name, call)  # later look-ups find it without __getattr__
        return call

    def shut(self) -> None:
        """Refuse new calls, wait until those under way returned (none blocks: each is a quick one), then
        cancel every evaluation not answered yet and wait (up to PENDING_WAIT_S) for their answers.
        mini-racer 0.14 frees a context's values without waiting for its tasks: an eval queued or just
        starting when the context is freed reads its freed code string (a segfault seen in the stress
        test); a cancelled one answers once it stopped (a queued one never starts)."""
        with self._cond:
            self._shut = True
            while self._busy:
                self._cond.wait(0.1)
        for task in list(self.pending.values()):
            self._dll.mr_cancel_task(self._context_id, task)
        deadline = time.monotonic() + PENDING_WAIT_S
        while self.pending and time.monotonic() < deadline:  # answered on the isolate thread (GIL released here)
            time.sleep(0.0005)


class Opened:
    """A context opened by :func:`open_context`; ``key``: mini-racer's id of it."""

    __slots__ = ("__weakref__", "_finalizer", "key", "racer")

    def __init__(self, racer: MiniRacer, closer: AbstractContextManager[MiniRacer], calls: _Calls) -> None:
        self.racer = racer
        assert racer._ctx is not None
        self.key = _key(racer._ctx)
        # Dropped without close (an engine never closed): closed on a thread of its own, never by
        # whichever thread collects it (the event loop's, or the isolate's own, which would wait for itself).
        self._finalizer = weakref.finalize(self, _close_on_a_thread, calls, closer, self.key)
        self._finalizer.atexit = False

    def close(self) -> bool:
        """Free the context, blocking until its isolate stopped; once only (later calls return True).
        False when its isolate thread still ran afterwards (its Python thread state is then kept)."""
        detached = self._finalizer.detach()
        return True if detached is None else _close(*detached[2])


def _close(calls: _Calls, closer: AbstractContextManager[MiniRacer], key: int) -> bool:
    calls.shut()
    closer.__exit__(None, None, None)  # mr_free_context: this thread holds the last reference
    _isolate_threads.pop(key, None)
    return threadstate.unpin(_pins.pop(key, None))


def _close_on_a_thread(calls: _Calls, closer: AbstractContextManager[MiniRacer], key: int) -> None:
    threading.Thread(target=_close, args=(calls, closer, key), name="script-context-close", daemon=True).start()


def open_context(loop: asyncio.AbstractEventLoop) -> Opened:
    """A new context bound to ``loop`` (blocking: run it off the loop; creating one runs a sync eval),
    whose isolate thread is learnt from its next callback (and a thread state pinned there)."""
    closer = mini_racer(loop)
    racer = closer.__enter__()
    ctx = racer._ctx
    assert ctx is not None
    calls = _Calls(ctx._dll, _key(ctx))
    object.__setattr__(ctx, "_dll", calls)  # a frozen dataclass
    opened = Opened(racer, closer, calls)
    _isolate_threads[opened.key] = None
    return opened


def isolate_thread(racer: MiniRacer) -> int | None:
    """The isolate thread of a context being set up (None if no callback came yet); stops watching it."""
    return _isolate_threads.pop(_key(racer._ctx), None) if racer._ctx is not None else None


class _Waiter:
    """One evaluation's answer: taken while the caller still waits synchronously (on ``done``), else on
    a future. No lock between the two sides: :meth:`deliver` (isolate thread) stores the value and then
    looks for a future, :meth:`wait` (loop) stores the future and then looks for the value, each under
    the GIL, so at least one of them sees what the other stored (both may: the answer is then taken
    directly and the future, settled later, is dropped)."""

    __slots__ = ("done", "future", "loop", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done = threading.Lock()
        self.done.acquire()
        self.value: ValueHandle | None = None
        self.future: asyncio.Future[ValueHandle] | None = None

    def deliver(self, value: ValueHandle) -> None:
        """On the isolate thread (GIL held)."""
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
        future: asyncio.Future[ValueHandle] = self.loop.create_future()
        self.future = future
        if self.value is not None:  # delivered meanwhile (before it could see the future)
            return self.value
        if slow is not None:
            slow()
        return await future


def _settle(future: asyncio.Future[ValueHandle], value: ValueHandle) -> None:
    if not future.done():
        future.set_result(value)


def source(racer: MiniRacer, code: bytes) -> ValueHandle:
    """``code`` (UTF-8) as a V8 string for :func:`evaluate`, without mini-racer's str -> bytes copy.
    The copy into V8 runs without the GIL (a ctypes call), so a large one may be made off the loop."""
    ctx = racer._ctx
    if ctx is None:
        raise RuntimeError("the mini-racer context is closed")
    return ctx._wrap_raw_handle(ctx._dll.mr_alloc_string_val(ctx._ctx, code, len(code), _STR_UTF8))


async def evaluate(
    racer: MiniRacer,
    code: str | bytes | ValueHandle,
    sync_s: float = SYNC_WAIT_S,
    slow: Callable[[], object] | None = None,
) -> Any:
    """``racer.eval_cancelable(code)``, waiting up to ``sync_s`` synchronously first (see above);
    ``slow`` is called when that was not enough, before the answer is awaited. The V8 task is
    cancelled only when no answer came (a task that answered is done: mini-racer frees it).
    ``code``: JavaScript, as text, UTF-8 bytes or a string made by :func:`source`."""
    ctx = _open(racer)
    if isinstance(code, str):
        code = code.encode()
    handle = code if isinstance(code, ValueHandle) else source(racer, code)
    return await _run(ctx, lambda callback_id: ctx._dll.mr_eval(ctx._ctx, handle.raw, callback_id), sync_s, slow)


async def call(
    racer: MiniRacer,
    function: ValueHandle,
    this: ValueHandle,
    argv: ValueHandle,
    sync_s: float = SYNC_WAIT_S,
    slow: Callable[[], object] | None = None,
) -> Any:
    """``function`` (a handle of a JS function) called with ``this`` and the arguments in the JS array
    ``argv``, waited for like :func:`evaluate`. Nothing is compiled (an eval compiles its source, ~0.07 ms
    for a 1 KB call that V8 has not seen before). mini-racer reports a call stopped by the memory limit
    as an ordinary error; like its eval, this looks at the limit's flag and raises JSOOMException then."""
    ctx = _open(racer)

    def submit(callback_id: int) -> Any:
        return ctx._dll.mr_call_function(ctx._ctx, function.raw, this.raw, argv.raw, callback_id)

    try:
        return await _run(ctx, submit, sync_s, slow)
    except JSEvalException:
        if ctx._dll.mr_hard_memory_limit_reached(ctx._ctx):
            raise JSOOMException from None
        raise


def _open(racer: MiniRacer) -> _MRContext:
    ctx = racer._ctx
    if ctx is None:
        raise RuntimeError("the mini-racer context is closed")
    return ctx


async def _run(ctx: _MRContext, submit: Callable[[int], Any], sync_s: float, slow: Callable[[], object] | None) -> Any:
    callback_id = next(ctx._next_async_callback_id)
    key = (_key(ctx), callback_id)
    waiter = _Waiter(ctx.event_loop)
    _waiters[key] = waiter
    task_id = submit(callback_id)
    answered = False
    try:
        value = await waiter.wait(sync_s, slow)
        answered = True
    finally:
        if not answered:
            _waiters.pop(key, None)
            ctx._dll.mr_cancel_task(ctx._ctx, task_id)
    return ctx._value_handle_to_python(value)
