"""What limits cost: admission + settlement per request (in-process and Redis stores). The usage /
spend queries over the rollups of N request-log rows on PostgreSQL: benchmarks/rollup_query.py.

    .venv/bin/python benchmarks/limits_cost.py admission [--requests 200000] [--redis-url redis://…]
    .venv/bin/python benchmarks/limits_cost.py path [--rounds 30 --requests 400 --concurrency 16]
    .venv/bin/python benchmarks/limits_cost.py router --redis-url redis://… [--seconds 5 --rounds 3]

`admission`: CPU time (process_time) per admit + settle of a user with RPM, TPM, maxConcurrent and a
budget on a backend with RPM and maxConcurrent, minus the same loop for an unlimited user (what the
limiter adds to a request). With --redis-url also the RedisStore: CPU of this process per request
and the wall time per admission round trip (settlements batched off the path, as in the router).

`path`: the limiter inside the real request path. The app (router.app.create_app, SQLite, request
log on) runs in this process, driven through ASGI directly (no HTTP client: its CPU would drown
the difference), against two mock upstreams. Two cells alternate in paired rounds in the same
process (same caches, same garbage collector): "limits on", a user with RPM, TPM and
maxConcurrent on a backend with RPM and maxConcurrent (all far above the load), and "limits off",
a user without limits on a backend without limits. CPU per request is the event loop thread's
CPU time (thread_time: the limiter runs there; the request log's SQLite thread flushes at its own
pace and would only add noise) over a round of `--requests` non-stream requests,
`--concurrency` at once; the cost
of limits is the median (and quartiles) of the per-pair differences. `--no-limits` sets no limits
in either cell: what the harness itself puts between them (should be ~0).

`router`: the whole router (benchmarks/services.py: `serve --workers 1`, the mock upstream, wrk),
non-stream c64, CPU ms of the router per request in four cells: no limits, limits in-process,
and the same two with REDIS_URL (Redis also shares catalog, logs and health, so its no-limits cell
is the baseline of the Redis limits cell). Limits: the user's RPM, TPM and maxConcurrent and the
backend's RPM and maxConcurrent, all far above the load. Cells alternate for `--rounds` rounds;
medians are reported.

"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.limits import Limiter, Limits, LocalStore, RedisStore


@dataclass(frozen=True)
class Subject:
    id: int
    name: str
    limits: Limits


USER = Subject(1, "alice", Limits(rpm=10**9, tpm=10**9, max_concurrent=1000, budget_usd=1e9))
BACKEND = Subject(1, "gpu", Limits(rpm=10**9, max_concurrent=1000))
FREE_USER, FREE_BACKEND = Subject(2, "bob", Limits()), Subject(2, "cpu", Limits())
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}


async def per_request_cpu(limiter: Limiter, user: Subject, backend: Subject, requests: int) -> float:
    """CPU seconds per admit + estimate + settle, as the request path does them."""
    for _ in range(1000):  # warm-up
        limiter.settle(await limiter.admit(user, backend, limiter.estimate(BODY, 120)), 80, 0.0001)
    started = time.process_time()
    for _ in range(requests):
        tokens = limiter.estimate(BODY, 120) if limiter.needs_estimate(user, backend) else 0
        admission = await limiter.admit(user, backend, tokens)
        limiter.settle(admission, 80, 0.0001)
    return (time.process_time() - started) / requests


async def concurrent_cpu(limiter: Limiter, requests: int, concurrency: int) -> float:
    """CPU seconds per request with `concurrency` requests admitted, held briefly and settled at once."""

    async def one_client(count: int) -> None:
        for _ in range(count):
            admission = await limiter.admit(USER, BACKEND, limiter.estimate(BODY, 120))
            await asyncio.sleep(0)
            limiter.settle(admission, 80, 0.0001)

    started = time.process_time()
    await asyncio.gather(*(one_client(requests // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (requests // concurrency * concurrency)


async def admission(args: argparse.Namespace) -> None:
    local = Limiter(LocalStore())
    free = await per_request_cpu(local, FREE_USER, FREE_BACKEND, args.requests)
    limited = await per_request_cpu(local, USER, BACKEND, args.requests)
    print(f"in-process: unlimited user {free * 1e6:.2f} µs, limited user {limited * 1e6:.2f} µs CPU per request")
    print(f"in-process: limits add {(limited - free) * 1e6:.2f} µs CPU per request (target ≤ 30 µs)")
    if args.redis_url:
        store = RedisStore(args.redis_url, f"bench-{uuid.uuid4().hex[:8]}")
        await store.start()
        remote = Limiter(store)
        requests = max(args.requests // 20, 1000)
        started = time.perf_counter()
        cpu = await per_request_cpu(remote, USER, BACKEND, requests)
        wall = (time.perf_counter() - started) / (requests + 1000)
        await store.stop()
        print(f"redis: {cpu * 1e6:.1f} µs CPU of this process and {wall * 1e3:.3f} ms wall per request (sequential)")
        store = RedisStore(args.redis_url, f"bench-{uuid.uuid4().hex[:8]}")
        await store.start()
        remote = Limiter(store)
        cpu = await concurrent_cpu(remote, requests, 64)
        await store.stop()
        print(f"redis: {cpu * 1e6:.1f} µs CPU of this process per request with 64 requests at once")


# --- the whole router ---------------------------------------------------------------------------

ROUTER_CELLS = ("no limits", "limits in-process", "Redis, no limits", "Redis, limits")


def router_cells(args: argparse.Namespace) -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import loadgen
    import procstat
    from services import MODEL, REPO, Router, start_mock

    mock = start_mock(None)
    work = Path(tempfile.mkdtemp(prefix="limits-bench-"))
    routers: dict[str, Router] = {}
    try:
        for index, cell in enumerate(ROUTER_CELLS):
            router = Router(work / f"r{index}", REPO, None, {"mock": f"{mock.url}/v1"}, [MODEL])
            router.prepare()
            env = {"REDIS_URL": args.redis_url, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
            router.start(env if cell.startswith("Redis") else {})
            if "no limits" not in cell:
                big = {"rpm": 10**9, "maxConcurrent": 10_000}
                users = router.graphql("{ users { id name } }")["users"]
                backends = router.graphql("{ backends { id name } }")["backends"]
                router.graphql(
                    "mutation($id: ID!, $l: LimitsInput!) { setUserLimits(userId: $id, limits: $l) { id } }",
                    {"id": users[0]["id"], "l": {**big, "tpm": 10**9}},
                )
                router.graphql(
                    "mutation($id: ID!, $l: LimitsInput!) { setBackendLimits(backendId: $id, limits: $l) { id } }",
                    {"id": backends[0]["id"], "l": big},
                )
            routers[cell] = router
        url, body = "/v1/chat/completions", loadgen.chat_body(MODEL, False)
        samples: dict[str, list[float]] = {cell: [] for cell in ROUTER_CELLS}
        for round_ in range(args.rounds):
            for cell, router in routers.items():
                loadgen.run_load(router.url + url, body, router.key, 64, 1.0)  # warm-up
                meter = procstat.CpuMeter(router.pid)
                meter.start()
                result = loadgen.run_load(router.url + url, body, router.key, 64, args.seconds)
                cpu_ms = meter.stop() * 1000 / max(result.requests, 1)
                samples[cell].append(cpu_ms)
                print(f"round {round_ + 1} {cell:<18} {result.rps:7.0f} req/s  {cpu_ms:.3f} ms CPU/req", flush=True)
        median = {cell: statistics.median(values) for cell, values in samples.items()}
        for cell in ROUTER_CELLS:
            print(f"median {cell:<18} {median[cell]:.3f} ms CPU per request")
        local = median["limits in-process"] - median["no limits"]
        shared = median["Redis, limits"] - median["Redis, no limits"]
        print(f"limits add in-process: {local * 1000:+.1f} µs; with Redis: {shared * 1000:+.1f} µs CPU per request")
        ratio = median["Redis, limits"] / median["limits in-process"]
        print(f"Redis limits cell / in-process limits cell: {ratio:.3f} (target ≤ 1.15)")
    finally:
        for router in routers.values():
            router.stop()
        mock.proc.terminate()
        mock.proc.wait()


# --- the real request path, in this process ----------------------------------------------------


class AsgiClient:
    """POSTs straight to an ASGI app: the whole body at once, a disconnect only after the answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def post(self, path: str, body: bytes, key: str) -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"router.test"),
                (b"authorization", b"Bearer " + key.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("router.test", 80),
        }
        done = asyncio.get_running_loop().create_future()
        sent = False
        status, headers, chunks = 0, {}, []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], dict(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and not done.done():
                    done.set_result(None)

        await self.app(scope, receive, send)
        if not done.done():
            done.set_result(None)
        return status, headers, b"".join(chunks)


PATH_CELLS = ("limits off", "limits on")


async def path_cells(args: argparse.Namespace) -> None:
    import json
    import logging
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from asgi_lifespan import LifespanManager
    from services import start_mock

    from router.app import create_app
    from router.config import load_config_file, load_settings

    logging.disable(logging.INFO)  # a log line per request would be most of the noise
    mocks = {cell: start_mock(None, model=f"m-{cell.split()[-1]}") for cell in PATH_CELLS}
    work = Path(tempfile.mkdtemp(prefix="limits-path-"))
    environ = {"DATA_DIR": str(work), "ADMIN_PASSWORD": "bench-admin-password", "LOG_LEVEL": "WARNING"}
    try:
        app = create_app(load_settings(environ, dotenv=False))
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            admin = app.state.admin
            servers = {f"b-{cell.split()[-1]}": {"url": f"{mock.url}/v1"} for cell, mock in mocks.items()}
            config = work / "config.yaml"
            config.write_text(json.dumps({"servers": servers}))  # JSON is YAML
            await admin.sync_backends(load_config_file(str(config), environ))
            await app.state.runtime.models.refresh_all()
            keys: dict[str, str] = {}
            for cell in PATH_CELLS:
                user, keys[cell] = await admin.create_user(f"u-{cell.split()[-1]}", all_backends=True)
                if cell == "limits on" and not args.no_limits:
                    await admin.set_user_limits(user.id, Limits(rpm=10**9, tpm=10**9, max_concurrent=10_000))
                    backend = next(b for b in await admin.list_backends() if b.name == "b-on")
                    await admin.set_backend_limits(backend.id, Limits(rpm=10**9, max_concurrent=10_000))
            await app.state.runtime.catalog.reload()
            client = AsgiClient(manager.app)
            path = "/v1/chat/completions"
            bodies = {
                cell: json.dumps(
                    {"model": f"m-{cell.split()[-1]}", "messages": [{"role": "user", "content": "hi"}]}
                ).encode()
                for cell in PATH_CELLS
            }

            async def round_(cell: str, requests: int) -> float:
                async def one_client(count: int) -> None:
                    for _ in range(count):
                        status, headers, answer = await client.post(path, bodies[cell], keys[cell])
                        if status != 200:
                            raise RuntimeError(f"{cell}: HTTP {status} {answer[:200]!r}")
                        if (b"x-ratelimit-limit-requests" in headers) != (cell == "limits on" and not args.no_limits):
                            raise RuntimeError(f"{cell}: rate-limit headers {headers}")

                each = max(requests // args.concurrency, 1)
                started = time.thread_time()
                await asyncio.gather(*(one_client(each) for _ in range(args.concurrency)))
                return (time.thread_time() - started) / (each * args.concurrency)

            for cell in PATH_CELLS:  # warm-up
                await round_(cell, args.requests)
            samples: dict[str, list[float]] = {cell: [] for cell in PATH_CELLS}
            for index in range(args.rounds):
                order = PATH_CELLS if index % 2 == 0 else PATH_CELLS[::-1]
                for cell in order:
                    samples[cell].append(await round_(cell, args.requests))
            diffs = [on - off for on, off in zip(samples["limits on"], samples["limits off"], strict=True)]

            def quartiles(values: list[float]) -> str:
                q1, q2, q3 = statistics.quantiles(values, n=4)
                return f"median {q2 * 1e6:6.1f} µs (quartiles {q1 * 1e6:.1f}-{q3 * 1e6:.1f})"

            for cell in PATH_CELLS:
                print(f"{cell:<11} CPU per request: {quartiles(samples[cell])}")
            print(f"limits add: {quartiles(diffs)} CPU per request (target ≤ 30 µs); {args.rounds} paired rounds")
            if args.dump:
                Path(args.dump).write_text(json.dumps({**samples, "diffs": diffs}))
    finally:
        for mock in mocks.values():
            mock.proc.terminate()
            mock.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("admission")
    a.add_argument("--requests", type=int, default=200_000)
    a.add_argument("--redis-url")
    p = sub.add_parser("path")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-limits", action="store_true", help="an A/A run: no limits in either cell (the harness's bias)")
    p.add_argument("--dump", help="write the seconds per request of every round (JSON) to this file")
    w = sub.add_parser("router")
    w.add_argument("--redis-url", required=True)
    w.add_argument("--seconds", type=float, default=5.0)
    w.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.what == "router":
        router_cells(args)
        return
    import uvloop  # the router's event loop (granian runs uvloop)

    uvloop.run(path_cells(args) if args.what == "path" else admission(args))


if __name__ == "__main__":
    main()
