"""V8 must not take the router down: hostile allocations and loops through the real engine, in-process
(SCRIPT_ISOLATION=thread) and in the script-host child (SCRIPT_ISOLATION=process).

The matrix runs in a subprocess of the test, so a V8 abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.scripts import IsolatedScriptEngine, ScriptEngine, ScriptSource
from router.scripts import engine as engine_module
from tests.inprocess import in_process

ROOT = Path(__file__).resolve().parents[1]
REQ = {"request": {"headers": {}, "body": {"model": "m"}}, "response": None}
NOOP = "function onRequest(c) { return c; }"

# (hook body, what the error says; "|" separates accepted alternatives)
HOSTILE = [
    ("Array.from({length: 2**28});", "over the script limit"),
    ("new Array(1e9).fill(0);", "over the script limit"),
    ("new Array(2**28).fill(0);", "over the script limit"),
    ("Array.prototype.fill.call({length: 2**40}, 0);", "over the script limit"),
    ("Array.prototype.indexOf.call({length: 2**53 - 1}, 1);", "over the script limit"),
    ("Array.prototype.forEach.call({length: 2**53 - 1}, () => 0);", "over the script limit"),
    ("const a = []; a.length = 2**32 - 1; a.reverse();", "over the script limit"),
    ("String(new Array(2**28));", "over the script limit"),
    ("Array.from(new Array(2**28).keys());", "over the script limit"),
    ("[...new Array(2**28)];", "out of memory|exceeded 50 ms|Invalid array length"),
    ("Array.from({length: 2**24}, (_, i) => i).map(String);", "out of memory|exceeded 50 ms"),
    ("'x'.repeat(2**29);", "Invalid string length"),
    ("let s = 'x'; for (;;) s += s;", "Invalid string length"),
    ("'x'.padStart(2**29);", "Invalid string length"),
    ("const a = []; for (;;) a.push(new Uint8Array(1 << 20));", "ArrayBuffer allocations exceed"),
    ("const a = []; let n = 1 << 16; for (;;) { a.push(new Float64Array(n)); n *= 2; }", "ArrayBuffer allocations"),
    ("const a = []; for (;;) a.push({});", "out of memory|exceeded 50 ms"),
    ("const m = new Map(); for (let i = 0; ; i++) m.set(i, i);", "out of memory|exceeded 50 ms"),
    ("new Set(new Array(2**32 - 1));", "exceeded 50 ms"),
    ("while (true) {}", "exceeded 50 ms"),
    ("function f() { return f(); } f();", "Maximum call stack size exceeded"),
]

RUNNER = r"""
import asyncio, json, sys, time
from router.scripts import ScriptSource, script_engine

async def main(isolation, cases):
    engine = script_engine(isolation, 50, 64)
    results = []
    for i, body in enumerate(cases):
        code = "function onRequest(ctx) {\n" + body + "\nreturn ctx;\n}"
        r = await engine.run_hook(ScriptSource(i + 1, f"case{i}", code, "1"), "onRequest", {"request": {}})
        results.append([r.ok, r.error])
    fine = ScriptSource(1000, "fine", "function onRequest(c) { c.request.seen = 1; return c; }", "1")
    after = await engine.run_hook(fine, "onRequest", {"request": {}})
    # Abandoned contexts must stop: one still running a built-in would burn a core, or abort V8 later.
    deadline = time.monotonic() + 20
    while isolation == "thread" and engine.stuck(0) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    lingering = engine.stuck(0) if isolation == "thread" else None
    print(json.dumps({"results": results, "after": after.context, "lingering": lingering}), flush=True)
    await engine.close()

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"""


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_hostile_allocations_fail_the_call_and_the_process_survives(isolation: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cases = [body for body, _ in HOSTILE]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, isolation, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"the engine's process died ({done.returncode}):\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for (body, expected), (ok, error) in zip(HOSTILE, report["results"], strict=True):
        assert not ok, body
        assert any(part in error for part in expected.split("|")), (body, error)
    assert report["after"] == {"request": {"seen": 1}}
    assert report["lingering"] is None, f"case {report['lingering']} still runs after its limit"


async def test_scripts_do_not_see_each_other_in_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_PASSWORD", "not-for-the-host")
    engine = IsolatedScriptEngine(timeout_ms=200)
    try:
        a = ScriptSource(1, "a", "globalThis.x = 1; Array.prototype.evil = 1; function onRequest(c) { return c; }", "1")
        b = ScriptSource(2, "b", "function onRequest(c) { c.seen = typeof x + ' ' + typeof [].evil; return c; }", "1")
        assert (await engine.run_hook(a, "onRequest", REQ)).ok
        result = await engine.run_hook(b, "onRequest", REQ)
        assert result.ok and result.context["seen"] == "undefined undefined"
        assert engine.has_hook(b, "onRequest") and not engine.has_hook(b, "onResponse")
        environ = Path(f"/proc/{engine.child_pid}/environ").read_bytes()
        assert b"ADMIN_PASSWORD" not in environ  # the router's secrets stay out of the host
    finally:
        await engine.close()


async def running_a_call(engine: IsolatedScriptEngine, within: float = 10.0) -> None:
    """Until a call was sent to the script host and one of its threads runs (state R; idle, they sleep)."""
    deadline = time.monotonic() + within

    def running() -> bool:
        child = engine._child
        if child is None or not child.pending:
            return False
        threads = Path(f"/proc/{child.proc.pid}/task").glob("*/stat")
        return any(stat.read_text().rsplit(")", 1)[1].split()[0] == "R" for stat in threads)

    while not running():
        assert time.monotonic() < deadline, "the script host never ran the call"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("how", [signal.SIGABRT, signal.SIGKILL])
async def test_a_dead_host_fails_only_its_calls_and_the_next_call_gets_a_new_one(how: signal.Signals) -> None:
    engine = IsolatedScriptEngine(timeout_ms=5000)
    try:
        assert (await engine.run_hook(ScriptSource(1, "ok", NOOP, "1"), "onRequest", REQ)).ok
        first = engine.child_pid
        assert first is not None
        spin = ScriptSource(2, "spin", "function onRequest(c) { for (;;) {} }", "1")
        call = asyncio.ensure_future(engine.run_hook(spin, "onRequest", REQ))
        await running_a_call(engine)  # the call is in the child (its limit is 5 s)
        os.kill(first, how)  # what a V8 abort (SIGABRT / SIGTRAP) does to the process
        result = await asyncio.wait_for(call, 10)
        assert not result.ok and "script host process ended" in (result.error or ""), result
        again = await engine.run_hook(ScriptSource(1, "ok", NOOP, "1"), "onRequest", REQ)
        assert again.ok and engine.child_pid not in (None, first)
    finally:
        await engine.close()


# A typed-array sort runs on after its time limit (V8 does not look at termination inside it).
SORT = """function onRequest(c) {
  const a = new Float64Array(6e6);
  for (let i = 0; i < 1024; i++) a[i] = Math.random();
  for (let k = 1024; k < a.length; k *= 2) a.copyWithin(k, 0, k);
  a.sort();
  return c;
}"""


async def test_an_in_process_context_that_ignores_termination_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine_module, "STUCK_S", 0.05)
    engine = ScriptEngine(timeout_ms=100)
    try:
        result = await engine.run_hook(ScriptSource(7, "sorter", SORT, "1"), "onRequest", REQ)
        assert not result.ok and "exceeded 100 ms" in (result.error or "")
        deadline = time.monotonic() + 20
        while "abandoned V8 isolate still runs" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert "script 7: its abandoned V8 isolate still runs" in caplog.text
    finally:
        await engine.close()


async def test_a_context_that_ignores_termination_retires_the_host_and_parks_the_script() -> None:
    sort = SORT
    # The sort runs ~0.35 s on a fast machine; the host polls every stuck_after_s / 2: 0.05 s finds the
    # abandoned context still sorting (0.2 s left a window of ~50 ms that a 0.1 s poll could miss).
    engine = IsolatedScriptEngine(timeout_ms=100, stuck_after_s=0.05)
    try:
        source = ScriptSource(7, "sorter", sort, "1")
        result = await engine.run_hook(source, "onRequest", REQ)
        assert not result.ok and "exceeded 100 ms" in (result.error or "")
        deadline = time.monotonic() + 20
        while 7 not in engine._quarantine and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        refused = await engine.run_hook(source, "onRequest", REQ)
        assert not refused.ok and "refused for now" in (refused.error or "")
        assert (await engine.run_hook(ScriptSource(8, "ok", NOOP, "1"), "onRequest", REQ)).ok
        assert engine.children_started == 2
        fixed = ScriptSource(7, "sorter", NOOP, "2")  # a new version runs
        assert (await engine.run_hook(fixed, "onRequest", REQ)).ok
    finally:
        await engine.close()


async def test_router_with_process_isolation_runs_scripts_and_survives_a_hostile_one(tmp_path: Path, upstream) -> None:
    servers = {"alpha": {"url": upstream.base_url}}
    async with in_process(tmp_path, servers, env={"SCRIPT_ISOLATION": "process"}) as router:
        assert isinstance(router.runtime.scripts, IsolatedScriptEngine)
        backend_id = (await router.gql("{ backends { id } }"))["data"]["backends"][0]["id"]
        create = "mutation($i: CreateScriptInput!) { createScript(input: $i) { id } }"
        code = "function onRequest(c) { c.request.body.temperature = 0.25; return c; }"
        common = {"type": "PER_BACKEND", "backendId": backend_id, "isActive": True}
        made = await router.gql(create, {"i": {"name": "temp", "code": code, **common}})
        assert "errors" not in made, made
        assert (await router.chat("test-model")).status_code == 200
        assert upstream.received[-1].body["temperature"] == 0.25

        hostile = "function onRequest(c) { Array.from({length: 2**28}); return c; }"
        made = await router.gql(create, {"i": {"name": "hostile", "code": hostile, "priority": 1, **common}})
        failed = await router.chat("test-model")
        assert failed.status_code >= 500 and "over the script limit" in failed.text, failed.text
        test = await router.gql(
            "mutation($id: ID!) { testScript(id: $id, input: {hook: ON_REQUEST}) { ok error } }",
            {"id": made["data"]["createScript"]["id"]},
        )
        assert test["data"]["testScript"]["ok"] is False
        assert "over the script limit" in test["data"]["testScript"]["error"]


def test_the_in_process_engine_is_the_default() -> None:
    from router.config import load_settings
    from router.scripts import script_engine

    settings = load_settings({}, dotenv=False)
    engine = script_engine(settings.script_isolation, 50, 64)
    assert type(engine) is ScriptEngine
