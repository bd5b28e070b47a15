"""What limits cost: admission + settlement per request (in-process and Redis stores), and the usage /
spend queries over the hourly rollups of N request-log rows on PostgreSQL.

    .venv/bin/python benchmarks/limits_cost.py admission [--requests 200000] [--redis-url redis://…]
    .venv/bin/python benchmarks/limits_cost.py rollups --postgres-url postgres://… [--rows 10000000]
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

`rollups`: a fresh database with the router's tables; N rows over 30 days (100 users, 4 backends,
8 models) are COPYed into request_logs, the rollups are built by the same SQL as their migration's
backfill, then `usage` over the last 30 days (no grouping, by user, by user+model with DAY buckets)
and one user's month-to-date spend are timed (best and median of 5, after one warm-up run).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

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


# --- rollups ------------------------------------------------------------------------------------


async def rollups(args: argparse.Namespace) -> None:
    import asyncpg
    from tortoise import connections

    from router import analytics_queries as aq
    from router.config import Settings
    from router.db import close_db, init_db

    server = args.postgres_url
    name = f"llmrouter_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"{server.rsplit('/', 1)[0]}/{name}"
    try:
        await init_db(Settings(core_db_url=url, analytics_db_url=url))
        conn = await asyncpg.connect(url)
        now = datetime.now(UTC)
        started = time.perf_counter()
        await fill(conn, args.rows, now)
        print(f"inserted {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        migration = importlib.import_module("router.migrations.analytics.0003_cost_and_rollups")
        await migration.backfill_rollups(None, SimpleNamespace(client=connections.get("analytics")))
        rollup_rows = await conn.fetchval("SELECT count(*) FROM usage_rollups")
        print(f"rollups built in {time.perf_counter() - started:.1f} s: {rollup_rows:,} rows")
        await conn.execute("ANALYZE")
        await conn.close()
        since = now - timedelta(days=30)
        cases = {
            "usage 30 d, total": (aq.LogFilter(since=since), (), None),
            "usage 30 d, by user": (aq.LogFilter(since=since), ("user",), None),
            "usage 30 d, by user+model, DAY buckets": (aq.LogFilter(since=since), ("user", "model"), "day"),
            "usage 30 d, one user, by model": (aq.LogFilter(since=since, user_id=7), ("model",), None),
        }
        for label, (flt, group_by, bucket) in cases.items():
            times = await timed(lambda f=flt, g=group_by, b=bucket: aq.usage(f, g, b))
            print(f"{label}: best {min(times):.1f} ms, median {statistics.median(times):.1f} ms")
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        times = await timed(lambda: aq.spent_usd(7, month, now + timedelta(hours=1)))
        print(f"spend month-to-date, one user: best {min(times):.1f} ms, median {statistics.median(times):.1f} ms")
    finally:
        await close_db()
        admin = await asyncpg.connect(server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def timed(make, runs: int = 5) -> list[float]:
    await make()
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        await make()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def fill(conn, rows: int, now: datetime) -> None:
    rng = random.Random(1)
    columns = [
        "id",
        "request_id",
        "created_at",
        "user_id",
        "user_name",
        "backend_id",
        "backend_name",
        "model",
        "endpoint",
        "status_code",
        "stream",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "latency_ms",
        "attempts",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost_usd",
    ]
    span = 30 * 86400
    chunk = 200_000
    for offset in range(0, rows, chunk):
        batch = []
        for i in range(offset, min(offset + chunk, rows)):
            user = rng.randrange(1, 101)
            backend = rng.randrange(1, 5)
            prompt, completion = rng.randrange(10, 2000), rng.randrange(1, 500)
            batch.append(
                (
                    i + 1,
                    f"r{i}",
                    now - timedelta(seconds=rng.randrange(span)),
                    user,
                    f"user{user}",
                    backend,
                    f"b{backend}",
                    f"model-{rng.randrange(8)}",
                    "/v1/chat/completions",
                    200 if rng.random() > 0.02 else 502,
                    False,
                    prompt,
                    completion,
                    prompt + completion,
                    rng.uniform(50, 3000),
                    1,
                    prompt // 4,
                    0,
                    0,
                    (prompt + 4 * completion) * 1e-6,
                )
            )
        await conn.copy_records_to_table("request_logs", records=batch, columns=columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("admission")
    a.add_argument("--requests", type=int, default=200_000)
    a.add_argument("--redis-url")
    r = sub.add_parser("rollups")
    r.add_argument("--postgres-url", required=True)
    r.add_argument("--rows", type=int, default=10_000_000)
    w = sub.add_parser("router")
    w.add_argument("--redis-url", required=True)
    w.add_argument("--seconds", type=float, default=5.0)
    w.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.what == "router":
        router_cells(args)
        return
    import uvloop  # the router's event loop (granian runs uvloop)

    uvloop.run(admission(args) if args.what == "admission" else rollups(args))


if __name__ == "__main__":
    main()
