"""Script hooks in a separate process (``SCRIPT_ISOLATION=process``), so V8 cannot take the router down.

Why: some V8 built-ins loop without looking at termination requests (``Array.from({length: 2**28})``,
``Array.prototype.fill`` / ``indexOf`` / ``forEach`` / ``reverse`` on a huge array-like, ...). The time
limit answers the request at once, but the abandoned isolate keeps running the loop on its thread:
for hours (a core burnt), or until a dictionary outgrows V8's maximum table size and V8 aborts the
whole process ("Fatal JavaScript out of memory: invalid table size"), whatever the memory limit.
Nothing in mini-racer's API stops a running built-in, so such a loop can only be ended by ending
the process it runs in.

How: :class:`IsolatedScriptEngine` has the same API as :class:`ScriptEngine` and does everything but
V8 itself in the router (the context in, the result out, unchanged bodies put back, checks). The V8
part of a call (:meth:`ScriptEngine._evaluate_js`: the script's context, the time and memory limits)
runs in one child process (:func:`main` below), an ordinary ScriptEngine behind a pipe
(frames of a 4-byte length and a JSON array). A script's code crosses once per child and version.

* The child dies (V8 abort, killed): the calls it was running fail with a script error, the next
  call starts a new child (logged as a warning with the exit status).
* An abandoned context of a script does not stop within ``STUCK_S``: the child reports it, the
  router starts a new child for new calls, kills the old one once its other calls are answered (at
  most ``_DRAIN_S`` later) and refuses that script version for ``QUARANTINE_S`` (a new version runs).
* The router process exits: the child reads end-of-file and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .datatypes import ScriptSource
from .engine import _MIN_WALL_S, _SETUP_TIMEOUT_S, STUCK_S, WALL_FACTOR, ScriptEngine, _payload, _ScriptFault

QUARANTINE_S = 60.0
_DRAIN_S = 5.0
_HEADER = struct.Struct("!I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_PASSED_ENV = frozenset({"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "LOG_LEVEL", "VIRTUAL_ENV"})

# Messages (JSON arrays), router -> child:
#   ["c", call id, script id, name, version, code or null (known), hook, the context as JSON text]
#   ["r", {script id: version}]   retain      ["x", script id]   evict
# child -> router:
#   ["a", call id, [answers] or null (no such hook), [hooks], open contexts]   ["f", call id, error]
#   ["s", script id]   a context of this script does not stop: retire me


def _frame(message: list[Any]) -> bytes:
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


class _Frames:
    """Cuts a byte stream into frames and hands each decoded message on (no coroutine per frame)."""

    def __init__(self, on_message: Callable[[Any], None]) -> None:
        self._buffer = bytearray()
        self._on_message = on_message

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer and len(data) >= _HEADER.size and _HEADER.unpack_from(data)[0] == len(data) - _HEADER.size:
            self._on_message(orjson.loads(data[_HEADER.size :]))  # one whole frame: the usual case
            return
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            message = orjson.loads(bytes(buffer[_HEADER.size : end]))
            del buffer[:end]
            self._on_message(message)


class _Reading(asyncio.Protocol):
    def __init__(self, frames: _Frames, ended: asyncio.Event) -> None:
        self.frames, self.ended = frames, ended

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()


class _Child:
    """One script-host process and the calls it is answering."""

    def __init__(self, proc: asyncio.subprocess.Process, loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self.loop = loop
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.sent: dict[int, str] = {}  # script id -> version whose code the child has
        self.ids = itertools.count()
        self.retired = False
        self.dead = False  # its pipe closed: no new calls
        self.open_contexts = 0
        self.reader: asyncio.Task[None] | None = None

    def send(self, message: list[Any]) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(_frame(message))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class IsolatedScriptEngine(ScriptEngine):
    """A ScriptEngine whose V8 work runs in a supervised child process (see the module docstring)."""

    def __init__(
        self,
        timeout_ms: float = 50,
        max_memory_mb: int = 64,
        log: logging.Logger | None = None,
        stuck_after_s: float = STUCK_S,
    ):
        super().__init__(timeout_ms, max_memory_mb, log)
        self.stuck_after_s = stuck_after_s
        self._child: _Child | None = None
        self._starting: asyncio.Future[_Child] | None = None
        self._retired: set[_Child] = set()
        self._quarantine: dict[int, tuple[str | None, float]] = {}  # script id -> (version, until)
        self.children_started = 0
        self._answer_within = _SETUP_TIMEOUT_S + 2 * max(timeout_ms / 1000 * WALL_FACTOR, _MIN_WALL_S) + 5

    @property
    def open_contexts(self) -> int:
        """Contexts alive in the child, as of its latest answer."""
        return self._child.open_contexts if self._child is not None else 0

    @property
    def child_pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    async def _evaluate(self, script: ScriptSource, hook: str, context: dict[str, Any]) -> list[str] | None:
        held = self._quarantine.get(script.id)
        if held is not None:
            if held[0] in (None, script.version) and time.monotonic() < held[1]:
                raise _ScriptFault(
                    "script refused for now: an earlier call ran a built-in that ignored the script limits "
                    "(the script host was restarted)"
                )
            del self._quarantine[script.id]
        payload = _payload(context).decode()  # the frame is JSON
        child = await self._live_child()
        code = None if child.sent.get(script.id) == script.version else script.code
        child.sent[script.id] = script.version
        call_id = next(child.ids)
        future: asyncio.Future[Any] = child.loop.create_future()
        child.pending[call_id] = future
        child.send(["c", call_id, script.id, script.name, script.version, code, hook, payload])
        try:
            async with asyncio.timeout(self._answer_within):
                answer = await future
        except TimeoutError:
            self._retire(child, "it did not answer a call in time")
            raise _ScriptFault("script host did not answer in time (restarted)") from None
        finally:
            child.pending.pop(call_id, None)
        if answer[0] == "f":
            raise _ScriptFault(answer[2])
        _, _, envs, hooks, child.open_contexts = answer
        self._hooks[script.id] = (script.version, frozenset(hooks))
        return envs  # type: ignore[no-any-return]

    def retain(self, live: Mapping[int, str]) -> None:
        super().retain(live)
        for script_id in [i for i in self._quarantine if i not in live]:
            del self._quarantine[script_id]
        if self._child is not None:
            self._child.sent = {i: v for i, v in self._child.sent.items() if live.get(i) == v}
            self._child.send(["r", {str(i): v for i, v in live.items()}])

    def evict(self, script_id: int) -> None:
        super().evict(script_id)
        if self._child is not None:
            self._child.sent.pop(script_id, None)
            self._child.send(["x", script_id])

    async def close(self) -> None:
        children = [c for c in (self._child, *self._retired) if c is not None]
        for child in children:
            child.retired = True
        self._child = None
        self._retired.clear()
        for child in children:
            if child.proc.stdin is not None:
                child.proc.stdin.close()
        for child in children:
            try:
                async with asyncio.timeout(5):
                    await child.proc.wait()
            except TimeoutError:
                child.kill()
                await child.proc.wait()
            if child.reader is not None:
                child.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.reader

    # -- the child ------------------------------------------------------------------------------

    async def _live_child(self) -> _Child:
        loop = asyncio.get_running_loop()
        child = self._child
        if child is not None and child.loop is loop and not child.dead:
            return child
        if child is not None:
            self._retire(child, "it belongs to another event loop" if child.loop is not loop else "it ended")
        if self._starting is None or self._starting.get_loop() is not loop:
            self._starting = loop.create_future()
            starting = self._starting
            try:
                child = await self._spawn(loop)
            except BaseException as e:
                self._starting = None
                starting.set_exception(_ScriptFault(f"cannot start the script host: {e}"))
                starting.exception()  # retrieved: waiters get it, an unwaited one is not reported
                raise _ScriptFault(f"cannot start the script host: {e}") from None
            self._child, self._starting = child, None
            starting.set_result(child)
            return child
        return await asyncio.shield(self._starting)

    async def _spawn(self, loop: asyncio.AbstractEventLoop) -> _Child:
        # Only what Python needs: the router's secrets (admin password, database URLs, keys) stay out.
        env = {k: v for k, v in os.environ.items() if k in _PASSED_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        answers, answers_in = os.pipe()  # read with a plain protocol: cheaper than a StreamReader
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import sys; from router.scripts.host import main; main(sys.argv[1:])",
                repr(self.timeout_ms),
                str(self.max_memory_mb),
                repr(self.stuck_after_s),
                stdin=asyncio.subprocess.PIPE,
                stdout=answers_in,
                env=env,
            )
        except BaseException:
            os.close(answers)
            raise
        finally:
            os.close(answers_in)
        child = _Child(proc, loop)
        ended = asyncio.Event()
        frames = _Frames(lambda message: self._answer(child, message))
        await loop.connect_read_pipe(lambda: _Reading(frames, ended), os.fdopen(answers, "rb", buffering=0))
        child.reader = loop.create_task(self._ended(child, ended))
        self.children_started += 1
        self.log.debug("script host started (pid %s)", proc.pid)
        return child

    def _answer(self, child: _Child, message: list[Any]) -> None:
        if message[0] == "s":
            self._stuck(child, int(message[1]))
            return
        future = child.pending.get(message[1])
        if future is not None and not future.done():
            future.set_result(message)

    async def _ended(self, child: _Child, ended: asyncio.Event) -> None:
        await ended.wait()
        child.dead = True
        if self._child is child:
            self._child = None
        status = await child.proc.wait()
        self._retired.discard(child)
        if not child.retired:
            how = f"signal {-status}" if status < 0 else f"exit status {status}"
            self.log.warning("script host (pid %s) ended (%s); the next call starts a new one", child.proc.pid, how)
        error = _ScriptFault(
            "script host process ended while running this call (V8 aborted or it was stopped); "
            "the call is lost, the next one runs in a new process"
        )
        for future in child.pending.values():
            if not future.done():
                future.set_exception(error)

    def _stuck(self, child: _Child, script_id: int) -> None:
        self._quarantine[script_id] = (child.sent.get(script_id), time.monotonic() + QUARANTINE_S)
        self._retire(child, f"a context of script {script_id} ignores termination")

    def _retire(self, child: _Child, why: str) -> None:
        """New calls go to a new child; this one is killed once its calls are answered (or soon)."""
        if child.retired:
            return
        child.retired = True
        if self._child is child:
            self._child = None
        self.log.warning("script host (pid %s) retired: %s", child.proc.pid, why)
        if child.loop.is_closed():
            child.kill()
            return
        self._retired.add(child)
        child.loop.create_task(self._kill_when_drained(child))

    async def _kill_when_drained(self, child: _Child) -> None:
        deadline = time.monotonic() + _DRAIN_S
        while child.pending and time.monotonic() < deadline and child.proc.returncode is None:
            await asyncio.sleep(0.05)
        child.kill()


# --- the child process ----------------------------------------------------------------------------


async def _serve(timeout_ms: float, max_memory_mb: int, stuck_after_s: float) -> None:
    loop = asyncio.get_running_loop()
    # Frames go to the original stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, out)
    engine = ScriptEngine(timeout_ms, max_memory_mb, logging.getLogger("router.scripts.host"))
    sources: dict[int, ScriptSource] = {}
    calls: set[asyncio.Task[None]] = set()

    def send(message: list[Any]) -> None:
        if not transport.is_closing():
            transport.write(_frame(message))

    async def call(message: list[Any]) -> None:
        _, call_id, script_id, name, version, code, hook, payload = message
        source = sources.get(script_id)
        if code is not None:
            source = sources[script_id] = ScriptSource(script_id, name, code, version)
        if source is None or source.version != version:
            send(["f", call_id, "internal error: the script host does not have this script version"])
            return
        try:
            envs = await engine._evaluate_js(source, hook, payload)
        except _ScriptFault as e:
            send(["f", call_id, str(e)])
            return
        except Exception as e:  # engine bug: report, do not stop serving
            engine.log.exception("script %s: internal error", name)
            send(["f", call_id, f"internal error: {type(e).__name__}: {e}"])
            return
        known = engine._hooks.get(script_id)
        send(["a", call_id, envs, sorted(known[1]) if known else [], engine.open_contexts])

    async def watch() -> None:
        reported = False
        while not reported:
            await asyncio.sleep(min(0.25, stuck_after_s / 2))
            script_id = engine.stuck(stuck_after_s)
            if script_id is not None:
                send(["s", script_id])
                reported = True

    def handle(message: list[Any]) -> None:
        kind = message[0]
        if kind == "c":
            task = loop.create_task(call(message))
            calls.add(task)
            task.add_done_callback(calls.discard)
        elif kind == "r":
            live = {int(i): v for i, v in message[1].items()}
            for script_id in [i for i in sources if live.get(i) != sources[i].version]:
                del sources[script_id]
            engine.retain(live)
        elif kind == "x":
            sources.pop(message[1], None)
            engine.evict(message[1])

    watcher = loop.create_task(watch())
    ended = asyncio.Event()  # the router closed the pipe (or exited)
    await loop.connect_read_pipe(lambda: _Reading(_Frames(handle), ended), os.fdopen(0, "rb", buffering=0))
    await ended.wait()
    watcher.cancel()
    sys.stderr.flush()
    os._exit(0)  # abandoned contexts may still be running a built-in: do not wait for their threads


def main(argv: list[str]) -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING").upper(), stream=sys.stderr)
    asyncio.run(_serve(float(argv[0]), int(argv[1]), float(argv[2])))
