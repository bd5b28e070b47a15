"""Script engine hardening (issue 15, items 5-7): time and memory limits that hold inside long
built-ins, no V8 work on the event loop, contexts freed when scripts go, validation that runs
nothing in a shared context. Real V8; timings compare against a baseline taken in the same test."""

from __future__ import annotations

import asyncio
import resource
import time

from py_mini_racer._context import context_count

from router.scripts import HookResult, RawJSON, ScriptEngine, ScriptSource, defined_hooks, validate

REQ = {"request": {"headers": {}, "body": {"model": "m"}}, "response": None}


def src(code: str, sid: int = 1, version: str = "v1") -> ScriptSource:
    return ScriptSource(id=sid, name=f"s{sid}", code=code, version=version)


async def max_loop_lag(work) -> tuple[float, object]:
    """Run `work` (a coroutine) while a 1 ms ticker measures how late the loop runs it."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)

    ticker = asyncio.create_task(tick())
    try:
        result = await work
        await asyncio.sleep(0.2)  # what happens right after the call counts too
    finally:
        stop.set()
        await ticker
    return max(lags), result


async def test_long_builtins_neither_outlive_the_limit_nor_block_the_loop():
    engine = ScriptEngine(timeout_ms=50, max_memory_mb=64)
    try:
        noop = src("function onRequest(c) { return c; }", 1)
        assert (await engine.run_hook(noop, "onRequest", REQ)).ok
        baseline, _ = await max_loop_lag(engine.run_hook(noop, "onRequest", REQ))
        # A built-in that ignores V8's termination request: it keeps the isolate busy long after
        # the limit, and the context must be abandoned without the loop waiting for it.
        sorter = src(
            "function onRequest(c) { new Float64Array(6 << 20).fill(1.5).sort().sort().sort().sort().sort().sort();"
            " return c; }",
            2,
        )
        huge = src("function onRequest(c) { new Uint8Array(1 << 30).fill(1); return c; }", 3)
        for script in (sorter, huge):
            started = time.perf_counter()
            lag, result = await max_loop_lag(engine.run_hook(script, "onRequest", REQ))
            assert time.perf_counter() - started < 1.5
            assert not result.ok and ("exceeded 50 ms" in result.error or "out of memory" in result.error), result
            assert lag < baseline + 0.25, (script.code, baseline, lag)
        assert (await engine.run_hook(noop, "onRequest", REQ)).ok  # others unaffected
    finally:
        await engine.close()


async def test_the_limit_is_cpu_time_not_wall_time():
    """A busy machine delays V8's thread; a script that does little must not fail for it."""
    engine = ScriptEngine(timeout_ms=30)
    try:
        light = src("function onRequest(c) { let n = 0; for (let i = 0; i < 1e5; i++) n += i; c.n = n; return c; }")
        assert (await engine.run_hook(light, "onRequest", REQ)).ok
        hogs = [asyncio.to_thread(_spin_cpu, 1.0) for _ in range(8)]  # more runnable threads than cores
        results = await asyncio.gather(*(engine.run_hook(light, "onRequest", REQ) for _ in range(20)), *hogs)
        assert all(r.ok for r in results[:20]), [r.error for r in results[:20] if not r.ok]
        spinner = src("function onRequest(c) { while (true) {} }", 2)
        started = time.perf_counter()
        result = await engine.run_hook(spinner, "onRequest", REQ)
        assert not result.ok and "exceeded 30 ms" in result.error and time.perf_counter() - started < 2.5
    finally:
        await engine.close()


def _spin_cpu(seconds: float) -> None:
    import hashlib

    end = time.perf_counter() + seconds
    data = b"x" * 1_000_000
    while time.perf_counter() < end:
        hashlib.sha256(data).digest()  # releases the GIL: real contention for the cores


async def test_array_buffers_count_against_the_memory_limit():
    engine = ScriptEngine(timeout_ms=2000, max_memory_mb=32)
    try:
        probes = {
            "plain": "new ArrayBuffer(48 << 20)",
            "typed": "new Float64Array(6 << 20)",
            "from-array-like": "Uint8Array.from({length: 48 << 20})",
            "own-constructor": "new (Object.getPrototypeOf(new Uint8Array(1)).constructor)(48 << 20)",
            "species-slice": "new Uint8Array(20 << 20).slice().slice()",
            "same-type-copy": "new Uint8Array(20 << 20).toReversed()",
            "transfer": "new ArrayBuffer(8).transfer(48 << 20)",
            "resizable": "new ArrayBuffer(8, {maxByteLength: 1 << 30})",
            "subclass": "new (class extends Uint8Array {})(48 << 20)",
        }
        for name, expr in probes.items():
            code = f"function onRequest(c) {{ globalThis.keep = {expr}; return c; }}"
            result = await engine.run_hook(src(code, 10 + len(name)), "onRequest", REQ)
            assert not result.ok and "ArrayBuffer allocations exceed" in result.error, (name, result)
        gone = "function onRequest(c) { c.kinds = [typeof WebAssembly, typeof SharedArrayBuffer, typeof Intl];"
        gone += " return c; }"
        result = await engine.run_hook(src(gone, 2), "onRequest", REQ)
        assert result.ok and result.context["kinds"] == ["undefined", "undefined", "undefined"]
        # Buffers kept across calls stay bounded: the context is rebuilt before the budget runs out.
        keeper = src(
            "globalThis.kept = []; function onRequest(c) { kept.push(new Uint8Array(12 << 20).fill(7)); return c; }",
            3,
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(30):
            assert (await engine.run_hook(keeper, "onRequest", REQ)).ok
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        assert grown_mb < 150, grown_mb  # 30 x 12 MB = 360 MB without a budget
        ok = "function onRequest(c) { const a = new Uint8Array(1024).fill(1);"
        ok += " c.sum = a.reduce((x, y) => x + y); return c; }"
        result = await engine.run_hook(src(ok, 4), "onRequest", REQ)
        assert result.ok and result.context["sum"] == 1024
    finally:
        await engine.close()


async def test_contexts_of_deleted_or_changed_scripts_are_freed_at_once():
    engine = ScriptEngine(timeout_ms=1000)
    try:
        before = context_count()
        for sid in (1, 2, 3):
            assert (await engine.run_hook(src("function onRequest(c) { return c; }", sid), "onRequest", REQ)).ok
        assert context_count() == before + 3
        engine.retain({1: "v1", 2: "v2"})  # 3 deleted, 2 changed, 1 unchanged
        deadline = time.monotonic() + 5
        while context_count() > before + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert context_count() == before + 1
        assert (await engine.run_hook(src("function onRequest(c) { return c; }", 1), "onRequest", REQ)).ok
        assert context_count() == before + 1  # script 1 kept its context
    finally:
        await engine.close()


CRAFTED = [
    # each closes the checker's wrapper, runs at the top level of the checking context, and reopens it
    '})()); Object.defineProperty(JSON, \'stringify\', {value: () => \'["tdz","tdz","tdz"]\'});'
    " JSON.stringify((function(){",
    "})()); globalThis.JSON = {stringify() { throw new Error('validator broken'); }}; JSON.stringify((function(){",
    "})()); while (true) {} JSON.stringify((function(){",
]


async def test_validation_never_runs_code_in_a_shared_context():
    for crafted in CRAFTED:
        started = time.perf_counter()
        lag, _ = await max_loop_lag(validate(crafted))
        assert time.perf_counter() - started < 5 and lag < 0.5
        # whatever the crafted code did, it did it to a context of its own
        assert await validate("function onRequest(c) { return c; }") is None
        assert await validate("function helper(c) { return c; }") is not None
        assert await defined_hooks("function onResponse(c) { return c; }") == frozenset({"onResponse"})


async def test_hooks_a_script_defines_come_from_its_own_context():
    engine = ScriptEngine(timeout_ms=1000)
    try:
        blocker = src("function onRequest(c) { c.response = {status: 403, body: 'no'}; return c; }", 1)
        assert engine.has_hook(blocker, "onRequest")
        result = await engine.run_hook(blocker, "onRequest", REQ)
        assert result.ok and result.context["response"]["status"] == 403
        assert engine.has_hook(blocker, "onRequest") and not engine.has_hook(blocker, "onResponse")
    finally:
        await engine.close()


async def test_unchanged_bodies_come_back_as_the_callers_objects():
    engine = ScriptEngine(timeout_ms=1000)
    try:
        raw = RawJSON(b'{"model": "m",  "messages": [ ]}')
        context = {"request": {"headers": {}, "body": raw}, "response": {"status": 200, "body": "<html>"}}
        noop = src("function onRequest(c) { c.request.headers['x-a'] = '1'; return c; }", 1)
        result = await engine.run_hook(noop, "onRequest", context)
        assert result.ok and result.context["request"]["body"] is raw
        assert result.context["response"]["body"] == "<html>"
        changer = src("function onRequest(c) { c.request.body.n = 1; return c; }", 2)
        result = await engine.run_hook(changer, "onRequest", context)
        assert result.ok and result.context["request"]["body"] == {"model": "m", "messages": [], "n": 1}
        proto = {"request": {"headers": {}, "body": {"__proto__": {"x": 1}, "model": "m"}}}
        reader = src("function onRequest(c) { c.seen = Object.keys(c.request.body); return c; }", 3)
        result = await engine.run_hook(reader, "onRequest", proto)
        assert result.ok and result.context["seen"] == ["__proto__", "model"]
    finally:
        await engine.close()


async def test_large_bodies_are_handed_over_off_the_loop():
    """Raw bodies over OFF_LOOP_BYTES are spliced into the call's JSON text and copied into V8 on a worker
    thread; a "__proto__" key (also spelled with escapes, anywhere in a large body) is an own property."""
    from router.scripts import engine as engine_module

    window = 1 << 20  # where the key sits: just before a MiB boundary
    assert engine_module.OFF_LOOP_BYTES < 8 << 20
    engine = ScriptEngine(timeout_ms=5000, max_memory_mb=256)
    reader = src(
        "function onResponse(c) { c.seen = [Object.keys(c.request.body), Object.keys(c.response.body),"
        " c.request.body.a.length, c.response.body.a.length]; return c; }",
        1,
    )
    try:
        for key in (b"__proto__", b"\\u005f_proto__", b"_\\u005fpr\\u006Fto__"):
            for straddle in (1, 3):
                head = b'{"a": "'
                # the key starts `straddle` bytes before a scan window's end
                pad = window * 3 - straddle - len(head) - len(b'", "')
                request = RawJSON(head + b"y" * pad + b'", "' + key + b'": {"x": 1}}')
                response = RawJSON(b'{"a": "' + b"z" * (5 << 20) + b'", "b": []}')
                context = {"request": {"headers": {}, "body": request}, "response": {"status": 200, "body": response}}
                lag, result = await max_loop_lag(engine.run_hook(reader, "onResponse", context))
                assert isinstance(result, HookResult) and result.ok, (key, straddle, result)
                assert result.context["seen"] == [["a", "__proto__"], ["a", "b"], pad, 5 << 20], (key, straddle)
                assert result.context["request"]["body"] is request and result.context["response"]["body"] is response
                assert lag < 0.5
        plain = RawJSON(b'{"a": "' + b"y" * (5 << 20) + b'"}')
        result = await engine.run_hook(reader, "onResponse", {"request": {"body": plain}, "response": {"body": plain}})
        assert result.ok and result.context["seen"] == [["a"], ["a"], 5 << 20, 5 << 20]
    finally:
        await engine.close()
