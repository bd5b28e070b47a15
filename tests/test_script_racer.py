"""router/scripts/racer.py and threadstate.py: evaluations that answer without a loop wake-up, and the
Python thread states kept on isolate threads (released when their contexts close)."""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import AsyncIterator

import pytest
from py_mini_racer import JSEvalException, JSParseException, MiniRacer, mini_racer

from router.scripts import ScriptEngine, ScriptSource, racer, threadstate

_api = ctypes.PyDLL(None)
_api.PyInterpreterState_Get.restype = ctypes.c_void_p
_api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
_api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
_api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
_api.PyThreadState_Next.restype = ctypes.c_void_p


def foreign_thread_states() -> int:
    """Python thread states of this interpreter that belong to no ``threading`` thread (pinned isolate threads)."""
    count, state = 0, _api.PyInterpreterState_ThreadHead(_api.PyInterpreterState_Get())
    while state:
        count += 1
        state = _api.PyThreadState_Next(state)
    return count - threading.active_count()


@pytest.fixture
async def context() -> AsyncIterator[MiniRacer]:
    closer = mini_racer(asyncio.get_running_loop())
    ctx = await asyncio.to_thread(closer.__enter__)
    yield ctx
    await asyncio.to_thread(closer.__exit__, None, None, None)


async def test_quick_answer_is_taken_without_waking_the_loop(context, monkeypatch):
    loop = asyncio.get_running_loop()
    wakeups: list[object] = []
    original = loop.call_soon_threadsafe
    monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a, **k: wakeups.append(a) or original(*a, **k))
    for i in range(20):  # a generous wait: a busy machine may take a while to run the isolate's thread
        assert await racer.evaluate(context, f"JSON.stringify([{i}, 1 + 1])", sync_s=5.0) == f"[{i},2]"
    assert wakeups == []


async def test_slow_answer_is_awaited_with_the_loop_running(context):
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    code = "const t = Date.now(); let n = 0; while (Date.now() - t < 100) n++; 'done'"
    assert await racer.evaluate(context, code, sync_s=0.0005) == "done"
    tick.cancel()
    assert ticks >= 5  # the loop ran while V8 worked (blocked, it would not have ticked at all)


async def test_errors_are_raised_as_by_eval_cancelable(context):
    with pytest.raises(JSParseException):
        await racer.evaluate(context, "function (")
    with pytest.raises(JSEvalException, match="boom"):
        await racer.evaluate(context, "throw new Error('boom')", sync_s=0)
    assert await racer.evaluate(context, "'still usable'") == "still usable"


async def test_cancelling_the_caller_stops_the_isolate(context):
    spin = asyncio.create_task(racer.evaluate(context, "while (true) {}", sync_s=0))
    await asyncio.sleep(0.05)
    spin.cancel()
    with pytest.raises(asyncio.CancelledError):
        await spin
    # V8 was told to terminate the spin: the next evaluation runs (it would wait forever otherwise)
    assert await asyncio.wait_for(racer.evaluate(context, "'next'"), timeout=10) == "next"
    assert not racer._waiters


@pytest.mark.skipif(not threadstate.SUPPORTED, reason="thread states are not pinned on this Python")
async def test_thread_states_are_pinned_per_context_and_released_when_it_closes():
    before = foreign_thread_states()
    engine = ScriptEngine(timeout_ms=1000)
    scripts = [ScriptSource(i, f"s{i}", "function onRequest(c) { return c }", "v1") for i in range(1, 4)]
    for script in scripts:
        for _ in range(3):
            assert (await engine.run_hook(script, "onRequest", {"request": {}})).ok
    assert len(racer._pins) >= len(scripts)
    assert foreign_thread_states() >= before + len(scripts)
    await engine.close()
    deadline = time.monotonic() + 30
    while (engine.open_contexts or foreign_thread_states() > before) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert engine.open_contexts == 0
    assert foreign_thread_states() == before
    assert not racer._pins and not racer._isolate_threads


@pytest.mark.skipif(not threadstate.SUPPORTED, reason="thread states are not pinned on this Python")
def test_a_thread_still_running_keeps_its_state():
    assert threadstate.unpin(None)
    assert not threadstate.unpin((threading.get_native_id(), 1))  # this thread runs: nothing is deleted
