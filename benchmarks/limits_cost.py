"""What limits cost: admission + settlement per request (in-process and Redis stores). The usage /
spend queries over the rollups of N request-log rows on PostgreSQL: benchmarks/rollup_query.py.

    .venv/bin/python benchmarks/limits_cost.py admission [--requests 200000] [--redis-url redis://…]
    .venv/bin/python benchmarks/limits_cost.py router --redis-url redis://… [--seconds 5 --rounds 3]

`admission`: CPU time (process_time) per admit + settle of a user with RPM, TPM, maxConcurrent and a
budget on a backend with RPM and maxConcurrent, minus the same loop for an unlimited user (what the
limiter adds to a request). With --redis-url also the RedisStore: CPU of this process per request
and the wall time per admission round trip (settlements batched off the path, as in the router).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("admission")
    a.add_argument("--requests", type=int, default=200_000)
    a.add_argument("--redis-url")
    w = sub.add_parser("router")
    w.add_argument("--redis-url", required=True)
    w.add_argument("--seconds", type=float, default=5.0)
    w.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.what == "router":
        router_cells(args)
        return
    import uvloop  # the router's event loop (granian runs uvloop)

    uvloop.run(admission(args))


if __name__ == "__main__":
    main()
