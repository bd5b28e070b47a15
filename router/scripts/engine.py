"""Runs admin-written JavaScript hooks in V8 (mini-racer).

Design:

* One V8 context (isolate) per script, so scripts cannot see each other's globals or
  prototype changes. The user code is compiled once per ``(script.id, version)`` inside a
  strict function scope and its hooks are kept by a small runtime (``__rt``, see js.py).
* The event loop waits for V8 at most ``racer.SYNC_WAIT_S`` (0.5 ms) per eval: contexts are
  created and closed on other threads (``MiniRacer()`` runs a sync eval; closing waits until the
  isolate stops, which takes as long as a built-in that ignores termination, e.g.
  ``new Uint8Array(1<<30).fill(1)``), and every call is one eval (racer.py: mini-racer's
  ``eval_cancelable``, whose answer is taken without a loop wake-up when it comes within that
  wait, else awaited on a future; V8 runs on the isolate's own thread without the GIL).
* One call is one V8 task for a sync hook, and nothing is compiled per call: the runtime's
  ``__rt.call`` (a function handle kept with the context) is called with the hook's name and, as
  ``this``, the context as JSON text, which it gives to ``JSON.parse`` (a "__proto__" key is an own
  property, no escaping pass). An eval of the context as a JS expression compiled its source every
  time: ~0.07 ms more per call of a 1 KB context V8 had not seen. The answer comes back as one JSON
  string. Bodies and the stream chunk come back only when the hook changed them (compared as JSON
  inside V8); otherwise the caller's own object is put back, so unchanged bodies are not
  re-encoded (``RawJSON`` bodies keep their exact bytes). Async hooks need a second call to read
  the settled result (microtasks drain between tasks).
* The JSON text is built as UTF-8 bytes with raw bodies spliced in (one copy of each) and handed to
  V8 without mini-racer's str -> bytes pass. When the raw bodies exceed ``OFF_LOOP_BYTES`` the join
  and the copy into V8 run on a worker thread (the copy without the GIL): for a 30 MB prompt the
  loop held the GIL ~140 ms per call before.
* The time limit is CPU time of the isolate's thread for the call (both evals of an async hook),
  read from that thread's CPU clock when the limit could have been reached (watched only once an
  eval outlasts the synchronous wait); wall time only
  backstops it (``WALL_FACTOR`` x the limit, at least 2 s), so a busy machine does not fail
  scripts that did little. Calls of one script are serialized by an ``asyncio.Lock``; waiting
  for it does not count.
* After a timeout, OOM, cancellation or internal fault the context is abandoned and closed in
  the background (a microtask spin or a long built-in survives cancellation); the next call
  builds a new one. Only that closing thread frees the context: calls into it still under way
  (a value freed on the loop) are waited for and later ones refused (racer.py: mini-racer
  destroys a context on whichever thread lets go of it last, which crashed the process).
  While an abandoned context of a script is still stopping, calls of that script wait up to
  one time limit for it and then fail, so a hostile script cannot pile up runaway isolates.
* Memory: a hard V8 heap limit per context (``max_memory_mb``) and, for what V8's heap limit
  does not count, an ArrayBuffer/typed-array budget of the same size kept by the sandbox
  (allocations are counted and never uncounted; a context that used half of it is rebuilt
  after the call, so the budget only ever fails a single call that allocates too much).
  WebAssembly, SharedArrayBuffer and Intl are removed.
* Built-ins that ignore termination: Array methods refuse receivers longer than 2**24 and
  Array.from is plain JS (js.py), so no known path leaves an abandoned isolate looping for long or
  growing a table until V8 aborts the process. For what is unknown, ``IsolatedScriptEngine``
  (host.py, ``SCRIPT_ISOLATION=process``) runs ``_evaluate_js`` in a child process instead.
* Console lines of a call that times out are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from py_mini_racer import (
    JSEvalException,
    JSOOMException,
    JSParseException,
    MiniRacer,
    init_mini_racer,
)
from py_mini_racer._value_handle import ValueHandle

from . import racer as mr
from .datatypes import HOOKS, HookResult, RawJSON, ScriptSource
from .js import compile_source, parse_error_location, runtime_source

# V8 must be initialised on the main thread: measured with mini-racer 0.14.1, initialising it
# from another thread and then creating contexts on several threads segfaults the process.
# Importing this package (normally done on the main thread) does it early.
init_mini_racer(ignore_duplicate_init=True)

# The time limit is CPU time of the isolate's thread, so a busy machine (other processes on the core)
# does not fail scripts that did little; wall time only backstops it at WALL_FACTOR x the limit.
WALL_FACTOR = 20
_MIN_WALL_S = 2.0
_REQUIRED_KEYS = {"onRequest": ("request",), "onResponse": ("request",), "onStreamChunk": ("chunk",)}
_SHAPE_KEYS = ("request", "response", "chunk")
# The parts the runtime may leave out of its answer when unchanged (same order as PARTS in js.py).
_PARTS: tuple[tuple[str | None, str], ...] = (("request", "body"), ("response", "body"), (None, "chunk"))
_RETRY_AFTER_S = 5.0
STUCK_S = 2.0  # an abandoned context still running this long after its limit is reported (and retires a host)
_STUCK_MESSAGE = (
    "script %s: its abandoned V8 isolate still runs %g s after the call's limit "
    "(a built-in that ignores termination; SCRIPT_ISOLATION=process contains such scripts)"
)
_SETUP_TIMEOUT_S = 10.0  # the sandbox's own set-up (wall time; it never spins)
_once_ids = itertools.count(1)  # run_once's throw-away script ids (negated)


class _ScriptFault(Exception):
    """A script-caused failure; the message is reported as HookResult.error."""


class _TransientFault(_ScriptFault):
    """A compile failure that may not repeat (timeout, OOM)."""


@dataclass
class _Context:
    racer: MiniRacer
    opened: mr.Opened
    version: str
    hooks: frozenset[str]
    loop: asyncio.AbstractEventLoop
    clock: int | None  # CPU clock of the isolate's thread (None: unknown, wall time is used)
    script_id: int
    entry: _Entry


@dataclass(frozen=True)
class _Entry:
    """Handles of a context's way in: ``__rt.call``, its arguments per hook (``[name]``) and ``[]``
    (no name: take the settled result of an async hook). Kept as mini-racer's JS objects, which own them."""

    call: Any
    args: dict[str, Any]
    no_args: Any

    @staticmethod
    def handle(obj: Any) -> ValueHandle:
        return obj.raw_handle  # type: ignore[no-any-return]


def _isolate_clock(racer: MiniRacer) -> int | None:
    ident = mr.isolate_thread(racer)
    if ident is None:
        return None
    try:
        clock = time.pthread_getcpuclockid(ident)
        time.clock_gettime(clock)
        return clock
    except OSError:
        return None


def _cpu(clock: int | None) -> float:
    if clock is None:
        return 0.0
    try:
        return time.clock_gettime(clock)
    except OSError:  # the thread is gone
        return float("inf")


class _Limit:
    """Cancels the running task once the isolate's thread spent `limit_s` of CPU on this call (or,
    as a backstop, WALL_FACTOR times that in wall time). Checked when the limit could have been
    reached, re-armed for the CPU time still left."""

    __slots__ = ("_finished", "_handle", "clock", "cpu0", "fired", "limit_s", "loop", "started", "task", "wall_s")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: int | None,
        limit_s: float,
        since: tuple[float, float] | None = None,
    ) -> None:
        """``since``: (loop time, isolate CPU time) when the call began, if before now."""
        self.loop, self.clock, self.limit_s = loop, clock, limit_s
        self.task = asyncio.current_task()
        self.started, self.cpu0 = since if since is not None else (loop.time(), _cpu(clock))
        self.wall_s = limit_s if clock is None else max(limit_s * WALL_FACTOR, _MIN_WALL_S)
        self.fired = False
        self._finished = False
        self._handle = loop.call_at(self.started + limit_s, self._check)

    def _check(self) -> None:
        used = _cpu(self.clock) - self.cpu0 if self.clock is not None else self.limit_s
        elapsed = self.loop.time() - self.started
        if used >= self.limit_s or elapsed >= self.wall_s:
            self.fired = True
            if self.task is not None:
                self.task.cancel()
            return
        wait = min(max(self.limit_s - used, 0.002), self.wall_s - elapsed)
        self._handle = self.loop.call_at(self.loop.time() + wait, self._check)

    def done(self) -> bool:
        """Stop watching; True when the limit cancelled the task (the CancelledError is ours)."""
        if not self._finished:
            self._finished = True
            self._handle.cancel()
            if self.fired and self.task is not None:
                self.task.uncancel()
        return self.fired


@dataclass
class _Slot:
    loop: asyncio.AbstractEventLoop
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ctx: _Context | None = None
    # (version, error, retry_at) of a failed compile; retry_at is inf for deterministic failures
    failed: tuple[str, str, float] | None = None
    stopping: int = 0  # abandoned contexts of this script not closed yet
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptEngine:
    """Compiles and runs script hooks with per-script isolation, timeouts and memory limits."""

    def __init__(self, timeout_ms: float = 50, max_memory_mb: int = 64, log: logging.Logger | None = None):
        self.timeout_ms = timeout_ms
        self.max_memory_mb = max_memory_mb
        self.log = log or logging.getLogger("router.scripts")
        self._slots: dict[int, _Slot] = {}
        self._hooks: dict[int, tuple[str, frozenset[str]]] = {}  # id -> (version, hooks it defines)
        # closing threads -> (when they started, the script whose abandoned context they wait for, if any)
        self._closing: dict[threading.Thread, tuple[float, int | None]] = {}

    # -- public API -------------------------------------------------------------------------------

    def has_hook(self, script: ScriptSource, hook: str) -> bool:
        """False only when the script's compiled version is known not to define ``hook``."""
        known = self._hooks.get(script.id)
        return known is None or known[0] != script.version or hook in known[1]

    @property
    def open_contexts(self) -> int:
        """Contexts alive now (for tests and metrics), abandoned ones still stopping included."""
        return sum(1 for s in self._slots.values() if s.ctx is not None) + len(self._closing)

    async def run_hook(
        self, script: ScriptSource, hook: str, context: dict[str, Any], request_id: str | None = None
    ) -> HookResult:
        """Run ``hook`` of ``script`` on ``context``; never raises for script faults.

        ``context`` is not modified; the result's context shares the parts the hook left as
        they were (bodies, chunk) with it.
        """
        started = time.perf_counter()
        logs: list[str] = []
        try:
            if hook not in HOOKS:
                raise _ScriptFault(f"unknown hook {hook!r}")
            envs = await self._evaluate(script, hook, context)
            if envs is None:  # the script does not define this hook
                return HookResult(True, context, [], None, _ms(started))
            out = _finish(envs, context, logs)
            self._check_shape(hook, context, out)
            return HookResult(True, out, logs, None, _ms(started))
        except _ScriptFault as e:
            return HookResult(False, None, logs, str(e), _ms(started))
        except Exception as e:  # engine bug: report, do not propagate
            self.log.exception("script %s [%s] internal error", script.name, request_id)
            return HookResult(False, None, logs, f"internal error: {type(e).__name__}: {e}", _ms(started))
        finally:
            for line in logs:
                self.log.info("script %s [%s] %s", script.name, request_id, line)

    async def run_once(self, script: ScriptSource, hook: str, context: dict[str, Any]) -> HookResult:
        """Run a hook in a context of its own, closed afterwards (the admin API's testScript):
        it shares no globals or lock with the live contexts of the same script."""
        source = ScriptSource(-next(_once_ids), script.name, script.code, script.version)
        try:
            return await self.run_hook(source, hook, context)
        finally:
            self.evict(source.id)

    async def _evaluate(self, script: ScriptSource, hook: str, context: dict[str, Any]) -> list[str] | None:
        """The V8 part of a call: the runtime's answers (JSON texts), or None when the hook is not defined."""
        pieces, raw_bytes = _payload_pieces(context)
        if raw_bytes > OFF_LOOP_BYTES:
            payload = await asyncio.to_thread(b"".join, pieces)
        else:
            payload = b"".join(pieces)
        return await self._evaluate_js(script, hook, payload)

    async def _evaluate_js(self, script: ScriptSource, hook: str, payload: str | bytes) -> list[str] | None:
        """``payload``: the context as JSON text."""
        slot = self._slot(script.id)
        async with slot.lock:
            ctx = await self._ensure(slot, script)
            if hook not in ctx.hooks:
                return None
            return await self._call(slot, ctx, hook, payload)

    def retain(self, live: Mapping[int, str]) -> None:
        """Free the contexts of scripts not in ``live`` (id -> version), or of an older version."""
        for script_id in list(self._slots):
            version = live.get(script_id)
            slot = self._slots[script_id]
            if version is None:
                self.evict(script_id)
            elif slot.ctx is not None and slot.ctx.version != version and not slot.lock.locked():
                self._discard(slot)
        for script_id in list(self._hooks):
            if script_id not in live:
                del self._hooks[script_id]

    def evict(self, script_id: int) -> None:
        """Forget a script (e.g. deleted) and close its context."""
        self._hooks.pop(script_id, None)
        slot = self._slots.pop(script_id, None)
        if slot is not None:
            self._discard(slot)

    def stuck(self, after_s: float) -> int | None:
        """A script whose abandoned context has been stopping for `after_s` or more: V8 is running a
        built-in that ignores termination (it may run for hours, or abort the process)."""
        now = time.monotonic()
        for since, script_id in list(self._closing.values()):
            if script_id is not None and now - since >= after_s:
                return script_id
        return None

    async def close(self) -> None:
        """Close all contexts and wait until they are closed."""
        for script_id in list(self._slots):
            self.evict(script_id)
        self._hooks.clear()
        deadline = time.monotonic() + 10
        while self._closing and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- internals --------------------------------------------------------------------------------

    def _slot(self, script_id: int) -> _Slot:
        loop = asyncio.get_running_loop()
        slot = self._slots.get(script_id)
        if slot is None or slot.loop is not loop:  # contexts and locks are bound to one loop
            if slot is not None:
                self._discard(slot)
            slot = self._slots[script_id] = _Slot(loop)
        return slot

    def _discard(self, slot: _Slot, busy: bool = False) -> None:
        """Close the slot's context off the loop; ``busy``: it may still be running JS."""
        ctx, slot.ctx = slot.ctx, None
        if ctx is None:
            return
        if busy:
            slot.stopping += 1
            slot.stopped.clear()
        self._close_in_background(ctx.opened, slot if busy else None, ctx.script_id)

    def _close_in_background(self, opened: mr.Opened, slot: _Slot | None, script_id: int | None = None) -> None:
        """Close a context on a thread of its own."""
        loop = slot.loop if slot is not None else None

        def done() -> None:
            if slot is not None:
                slot.stopping -= 1
                if slot.stopping == 0:
                    slot.stopped.set()

        def run() -> None:
            # An abandoned context that does not stop is running a built-in that ignores termination:
            # say so while it runs (it may burn a core for long, or abort V8; see host.py).
            alarm = threading.Timer(STUCK_S, self.log.error, (_STUCK_MESSAGE, script_id, STUCK_S))
            alarm.daemon = True
            if slot is not None:
                alarm.start()
            try:
                if not opened.close():
                    self.log.debug("script context closed, its isolate thread still runs: thread state kept")
            except Exception:  # pragma: no cover - best effort
                self.log.debug("closing script context failed", exc_info=True)
            finally:
                alarm.cancel()
                self._closing.pop(thread, None)
                if loop is not None and not loop.is_closed():
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        loop.call_soon_threadsafe(done)

        thread = threading.Thread(target=run, name="script-context-close", daemon=True)
        self._closing[thread] = (time.monotonic(), script_id if slot is not None else None)
        thread.start()

    async def _ensure(self, slot: _Slot, script: ScriptSource) -> _Context:
        loop = asyncio.get_running_loop()
        c = slot.ctx
        if c is not None and c.version == script.version and c.loop is loop:
            return c
        self._discard(slot)
        failed = slot.failed
        if failed is not None and failed[0] == script.version and time.monotonic() < failed[2]:
            raise _ScriptFault(failed[1])
        if slot.stopping:
            try:
                async with asyncio.timeout(max(self.timeout_ms, 1) / 1000):
                    await slot.stopped.wait()
            except TimeoutError:
                raise _ScriptFault("still stopping an earlier call of this script that exceeded its limits") from None
        try:
            slot.ctx = await self._compile(script, loop)
            self.log.debug("script %s: new V8 context for version %s", script.name, script.version)
            slot.failed = None
            self._hooks[script.id] = (script.version, slot.ctx.hooks)
            return slot.ctx
        except _TransientFault as e:  # timeout / OOM at top level: retry a little later
            slot.failed = (script.version, str(e), time.monotonic() + _RETRY_AFTER_S)
            raise
        except _ScriptFault as e:  # syntax error / top-level throw: fails until the code changes
            slot.failed = (script.version, str(e), float("inf"))
            raise

    async def _compile(self, script: ScriptSource, loop: asyncio.AbstractEventLoop) -> _Context:
        limit = self.max_memory_mb << 20
        opened = await asyncio.to_thread(_open_context, loop, limit)
        racer = opened.racer
        ok = False
        try:
            try:
                async with asyncio.timeout(_SETUP_TIMEOUT_S):
                    await racer.eval_cancelable(runtime_source(limit))
            finally:
                clock = _isolate_clock(racer)
            try:
                names = await self._limited(loop, clock, racer.eval_cancelable(compile_source(script.code)))
            except JSParseException as e:
                msg, line = parse_error_location(str(e))
                raise _ScriptFault(f"{msg} (line {line})" if line else msg) from None
            except JSOOMException:
                raise _TransientFault("out of memory (script top level)") from None
            except TimeoutError:
                msg = f"TimeoutError: script top level exceeded {self.timeout_ms:g} ms"
                raise _TransientFault(msg) from None
            except JSEvalException as e:
                msg, line = parse_error_location(str(e))
                raise _ScriptFault(f"{msg} (line {line})" if line else msg) from None
            async with asyncio.timeout(_SETUP_TIMEOUT_S):  # the runtime's objects: no user code runs here
                call = await mr.evaluate(racer, "__rt.call")
                args = {hook: await mr.evaluate(racer, json.dumps([hook])) for hook in HOOKS}
                entry = _Entry(call, args, await mr.evaluate(racer, "[]"))
            ok = True
            hooks = frozenset(json.loads(str(names)))
            return _Context(racer, opened, script.version, hooks, loop, clock, script.id, entry)
        finally:
            if not ok:
                self._close_in_background(opened, None)

    async def _limited(self, loop: asyncio.AbstractEventLoop, clock: int | None, work: Any) -> Any:
        """Await `work` under the CPU time limit; TimeoutError when it is exceeded."""
        limit = _Limit(loop, clock, self.timeout_ms / 1000)
        try:
            return await work
        except asyncio.CancelledError:
            if limit.done():
                raise TimeoutError from None
            raise
        finally:
            limit.done()

    async def _call(self, slot: _Slot, c: _Context, hook: str, payload: str | bytes) -> list[str]:
        # The time limit is watched only once an eval did not answer within the synchronous wait. The
        # isolate's CPU clock is read only then (a system call): the wall time of that wait is counted
        # as CPU time spent, which it bounds (the limit fires at most SYNC_WAIT_S early, never late).
        limit: _Limit | None = None
        started = c.loop.time()
        limit_s = self.timeout_ms / 1000

        def watch() -> None:
            nonlocal limit
            if limit is None:
                waited = c.loop.time() - started
                limit = _Limit(c.loop, c.clock, limit_s, (started, _cpu(c.clock) - waited))

        try:
            sync_s = min(mr.SYNC_WAIT_S, limit_s)
            try:
                data = payload.encode() if isinstance(payload, str) else payload
                if len(data) > OFF_LOOP_BYTES:  # the copy into V8 off the loop
                    text = await asyncio.to_thread(mr.source, c.racer, data)
                else:
                    text = mr.source(c.racer, data)
                entry, handle = c.entry, _Entry.handle
                call, no_args = handle(entry.call), handle(entry.no_args)
                envs = [str(await mr.call(c.racer, call, text, handle(entry.args[hook]), sync_s, watch))]
                if envs[0].startswith('{"p":1,'):  # an async hook: read what it settled to
                    envs.append(str(await mr.call(c.racer, call, no_args, no_args, sync_s, watch)))
            except asyncio.CancelledError:
                if limit is not None and limit.done():
                    raise TimeoutError from None
                raise
            finally:
                if limit is not None:
                    limit.done()
        except TimeoutError:
            self._discard(slot, busy=True)
            raise _ScriptFault(f"TimeoutError: script exceeded {self.timeout_ms:g} ms") from None
        except JSOOMException:
            self._discard(slot, busy=True)
            raise _ScriptFault("out of memory") from None
        except JSEvalException as e:  # outside the runtime's try/catch, e.g. stack overflow in stringify
            self._discard(slot, busy=True)
            raise _ScriptFault(parse_error_location(str(e))[0]) from None
        except BaseException:  # cancellation or engine fault: the context state is unknown
            self._discard(slot, busy=True)
            raise
        if _buffer_bytes(envs[-1]) * 2 > self.max_memory_mb << 20:
            self._discard(slot)  # buffers are never uncounted: start afresh before the budget runs out
        return envs

    @staticmethod
    def _check_shape(hook: str, given: dict[str, Any], out: object) -> None:
        if not isinstance(out, dict):
            raise _ScriptFault("hook did not return a context object")
        for key in _REQUIRED_KEYS[hook]:
            if key not in out:
                raise _ScriptFault(f"hook did not return a context object (missing {key!r})")
        for key in _SHAPE_KEYS:
            if key in given and key not in out:
                raise _ScriptFault(f"hook did not return a context object (missing {key!r})")
            if key != "chunk" and isinstance(given.get(key), dict) and not isinstance(out.get(key), dict):
                raise _ScriptFault(f"hook returned a context whose {key!r} is not an object")


def _open_context(loop: asyncio.AbstractEventLoop, limit: int) -> mr.Opened:
    """Create a context bound to ``loop`` (run on another thread: creating one runs a sync eval)."""
    opened = mr.open_context(loop)
    opened.racer.set_hard_memory_limit(limit)
    return opened


# A context whose raw JSON bodies are larger than this has its JSON text joined and copied into V8 on a
# worker thread: for a 30 MB prompt that is ~100 ms of work the event loop would otherwise do itself.
OFF_LOOP_BYTES = 1 << 20
_HOLE = orjson.Fragment(b"\x00")  # where a raw body goes: orjson never writes a NUL byte itself (it escapes it)


def _payload_pieces(context: dict[str, Any]) -> tuple[list[bytes], int]:
    """The context's JSON text in pieces (cut where its raw bodies go, with the raw bodies in between),
    and the raw bodies' size: serialising the context does not copy them."""
    raws: list[bytes] = []

    def hole(value: object) -> orjson.Fragment:
        if isinstance(value, RawJSON):
            raws.append(value.raw)
            return _HOLE
        raise TypeError(f"{type(value).__name__} is not JSON-serializable")

    try:
        payload = orjson.dumps(context, default=hole, option=orjson.OPT_PASSTHROUGH_DATACLASS)
    except TypeError as e:
        raise _ScriptFault(f"context is not JSON-serializable: {e}") from None
    if not raws:
        return [payload], 0
    cuts = payload.split(b"\x00")
    pieces = [cuts[0]]
    for raw, cut in zip(raws, cuts[1:], strict=True):
        pieces += (raw, cut)
    return pieces, sum(map(len, raws))


def _payload(context: dict[str, Any]) -> bytes:
    """The context as the JSON text a hook call hands to V8 (UTF-8)."""
    return b"".join(_payload_pieces(context)[0])


def _buffer_bytes(env: str) -> int:
    """The ArrayBuffer bytes a context has allocated: the runtime's answers end with `,"m":<n>}`."""
    return int(env[env.rindex(":") + 1 : -1])


def _finish(envs: list[str], context: dict[str, Any], logs: list[str]) -> Any:
    """The hook's result from the runtime's answers; the parts it left unchanged are the caller's own."""
    env = orjson.loads(envs[0])
    logs.extend(env["l"])
    if len(envs) > 1:
        env = orjson.loads(envs[1])
        logs.extend(env["l"])
    if "e" in env:
        raise _ScriptFault(env["e"])
    out = env["v"]
    for index in env.get("k", ()):
        _put_back(out, context, _PARTS[index])
    return out


def _put_back(out: Any, given: dict[str, Any], part: tuple[str | None, str]) -> None:
    """Restore a part the hook did not change, as the caller's own object."""
    outer, key = part
    source: Any = given if outer is None else given.get(outer)
    target: Any = out if outer is None else (out.get(outer) if isinstance(out, dict) else None)
    if isinstance(source, dict) and isinstance(target, dict) and key in source:
        target[key] = source[key]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
