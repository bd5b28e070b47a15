"""What one no-op script costs: CPU time, not wall time (the machine is shared).

Two measurements:

* ``engine``: ``ScriptEngine.run_hook`` of ``function onRequest(c){return c}`` on a ~1 KB
  chat context, in this process; CPU per call from ``time.process_time()`` (all threads,
  so V8's own thread counts too).
* ``router``: the real router (``python -m router serve``) against the benchmark mock, the
  same sequential chat requests without and with one active no-op ``PER_BACKEND`` script,
  in alternating rounds; CPU per request = utime+stime of the router and its worker processes
  (``/proc``) / requests. The script's added CPU per request is the median of the per-round
  differences (each scripted round against the plain round next to it, in ABBA order).

    .venv/bin/python benchmarks/script_cost.py [--requests 2000] [--rounds 3] [--engine-only] [--isolation process]
        [--server granian|uvicorn] [--router-src /path/to/older/tree] [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import MODEL, Router, start_mock, stop_process

NOOP = "function onRequest(c){return c}"
VERBOSE = False
CONTEXT = {
    "user": {"id": 1, "name": "bench", "email": None},
    "backend": {"id": 1, "name": "mock", "baseUrl": "http://127.0.0.1:1/v1"},
    "request": {
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": {"content-type": "application/json", "user-agent": "bench", "accept": "*/*"},
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 120}], "max_tokens": 16},
        "isStream": False,
    },
    "response": None,
}


def engine_cost(calls: int, isolation: str = "thread") -> float:
    """CPU ms per no-op hook call (with SCRIPT_ISOLATION=process, the script host's CPU included)."""
    from router.scripts import ScriptSource, script_engine

    async def run() -> float:
        engine = script_engine(isolation, 50, 64)
        source = ScriptSource(1, "noop", NOOP, "1")
        for _ in range(200):
            await engine.run_hook(source, "onRequest", CONTEXT)
        host = getattr(engine, "child_pid", None)
        host_cpu = (lambda: process_cpu_s(host)) if host else (lambda: 0.0)
        started, host_started = time.process_time(), host_cpu()
        for _ in range(calls):
            await engine.run_hook(source, "onRequest", CONTEXT)
        cost = (time.process_time() - started + host_cpu() - host_started) / calls * 1000
        await engine.close()
        return cost

    return asyncio.run(run())


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the server may run the app in worker processes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid] + [p for child in children for p in process_tree(int(child))]


def _cpu_of(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime+stime of the router and its worker processes."""
    total = 0.0
    for proc in process_tree(pid):
        try:
            total += _cpu_of(Path(f"/proc/{proc}/stat").read_text())
        except OSError:
            continue
    return total


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each process's main thread and of all other threads, to see where a cost lands."""
    out: dict[str, float] = {}
    for proc in process_tree(pid):
        for task in Path(f"/proc/{proc}/task").iterdir():
            try:
                cpu = _cpu_of((task / "stat").read_text())
            except OSError:
                continue
            name = "main threads" if task.name == str(proc) else "other threads"
            out[name] = out.get(name, 0.0) + cpu
    return out


def router_round(router: Router, client: httpx.Client, requests: int) -> float:
    """CPU ms per request of `requests` sequential chat requests."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 120}], "max_tokens": 16}
    headers = {"Authorization": f"Bearer {router.key}"}
    for _ in range(50):  # warm-up (compiles the script once per version)
        client.post(f"{router.url}/v1/chat/completions", json=body, headers=headers).raise_for_status()
    started = process_cpu_s(router.pid)
    threads = thread_cpu_s(router.pid)
    for _ in range(requests):
        response = client.post(f"{router.url}/v1/chat/completions", json=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
    if VERBOSE:
        after = thread_cpu_s(router.pid)
        spent = {k: round((v - threads.get(k, 0.0)) / requests * 1000, 3) for k, v in after.items()}
        print("  per thread, ms/request:", {k: v for k, v in spent.items() if v}, file=sys.stderr)
    return (process_cpu_s(router.pid) - started) / requests * 1000


def router_cost(requests: int, rounds: int, src: Path, server: str | None, isolation: str) -> dict[str, float]:
    mock = start_mock(None)
    with tempfile.TemporaryDirectory() as tmp:
        router = Router(Path(tmp), src, None, {"mock": mock.url + "/v1"}, [MODEL])
        try:
            router.prepare()
            router.start({"SCRIPT_ISOLATION": isolation, **({"SERVER": server} if server else {})})
            plain: list[float] = []
            scripted: list[float] = []
            backend = router.graphql("{ backends { id } }")["backends"][0]["id"]
            created = router.graphql(
                "mutation($in: CreateScriptInput!) { createScript(input: $in) { id } }",
                {"in": {"name": "noop", "type": "PER_BACKEND", "backendId": backend, "code": NOOP}},
            )
            script_id = created["createScript"]["id"]

            def switch(on: bool) -> None:
                verb = "activateScript" if on else "deactivateScript"
                router.graphql(f"mutation($id: ID!) {{ {verb}(id: $id) {{ id }} }}", {"id": script_id})
                time.sleep(0.5)  # the catalog refresh is asynchronous

            with httpx.Client(timeout=30) as client:
                # Alternating, so both sides share the machine's noise; in ABBA order (plain first in
                # even rounds, scripted first in odd ones), so a drift over the run (warm-up, other
                # load coming or going) does not count for or against the script.
                for index in range(rounds):
                    if index % 2 == 0:
                        plain.append(router_round(router, client, requests))
                        switch(True)
                        scripted.append(router_round(router, client, requests))
                    else:
                        scripted.append(router_round(router, client, requests))
                        switch(False)
                        plain.append(router_round(router, client, requests))
        except Exception:
            for log in Path(tmp).glob("router-*.log"):
                print(log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            router.stop()
            stop_process(mock.proc)
    pairs = sorted(b - a for a, b in zip(plain, scripted, strict=True))
    return {
        "plain_ms": statistics.median(plain),
        "script_ms": statistics.median(scripted),
        "added_ms": statistics.median(pairs),  # median of the per-round differences
        "added_q1_ms": pairs[len(pairs) // 4],
        "added_q3_ms": pairs[(3 * len(pairs)) // 4],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--engine-only", action="store_true")
    parser.add_argument("--isolation", choices=["thread", "process"], default="thread", help="SCRIPT_ISOLATION")
    parser.add_argument("--server", choices=["granian", "uvicorn"], help="SERVER for the router (its default if unset)")
    parser.add_argument("--verbose", action="store_true", help="CPU per thread name for each round")
    parser.add_argument(
        "--router-src",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the router tree to measure (e.g. a worktree of an older commit)",
    )
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    print(f"engine ({args.isolation}): no-op onRequest, CPU per call: {engine_cost(args.calls, args.isolation):.3f} ms")
    if not args.engine_only:
        result = router_cost(args.requests, args.rounds, args.router_src, args.server, args.isolation)
        print(
            f"router: CPU per request without script {result['plain_ms']:.3f} ms, "
            f"with a no-op script {result['script_ms']:.3f} ms, added {result['added_ms']:.3f} ms "
            f"(median of {args.rounds} paired rounds; "
            f"quartiles {result['added_q1_ms']:.3f}-{result['added_q3_ms']:.3f})"
        )


if __name__ == "__main__":
    main()
