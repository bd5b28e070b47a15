"""`usageTicks` over real WebSockets (graphql-transport-ws) against running routers: totals equal
the requests sent, a quiet interval still ticks, a stuck subscriber gets the newest tick with the
count it skipped, auth, and two processes sharing Redis showing the same totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed

from router import live
from router.usage import RequestRecord
from tests.conftest import RouterProcess, require_redis, router_for, write_config
from tests.inprocess import RouterThread
from tests.test_graphql_api import CREATE_BACKEND, GqlEnv, start_env, stop_env
from tests.test_graphql_subscriptions import V1, StuckClient, Subscriber, agql, new_user, open_subscription

TICK_FIELDS = (
    "at intervalS skipped rows { userId userName backendName model requests errors promptTokens "
    "completionTokens totalTokens cachedTokens reasoningTokens costUsd avgLatencyMs p50LatencyMs p95LatencyMs }"
)
FAT_ALIASES = 20_000  # `at` this many times: ~0.8 MB per tick, so a client that does not read stalls the router's sends


class FastClock(live.Clock):
    """Seconds `speed` times shorter than real ones, continuing from the wall clock's time when made.

    The module's router counts its usage seconds with it: whole seconds, aligned intervals and
    skipped counts are the same as on the wall clock, only sooner (the ticks' `at` runs ahead).
    """

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.origin = time.time()

    def time(self) -> float:
        return self.origin + (time.time() - self.origin) * self.speed

    async def sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, (at - self.time()) / self.speed))


TICK_SPEED = 5  # the module router's usage seconds last 0.2 s


@pytest.fixture(scope="module")
def genv(tmp_path_factory) -> Iterator[GqlEnv]:
    gql_env, databases = start_env(
        tmp_path_factory.mktemp("usage-ticks"),
        {
            "GRAPHQL_MAX_ALIASES": str(FAT_ALIASES + 10),
            "GRAPHQL_MAX_TOKENS": str(4 * FAT_ALIASES),
            "GRAPHQL_MAX_QUERY_KB": "1024",
            "GRAPHQL_MAX_COST": str(4 * FAT_ALIASES),
            # backendHealthChanged: one failure marks a backend down, 1 s later a request may probe it
            "HEALTH_FAILURE_THRESHOLD": "1",
            "HEALTH_COOLDOWN_S": "1",
            "HEALTH_CHECK_INTERVAL_S": "0",
        },
        in_thread=True,
    )
    if isinstance(gql_env.router, RouterThread):  # else (the other dialect's run) a process, on the wall clock
        gql_env.router.app.state.runtime.ticker.clock = FastClock(TICK_SPEED)
    yield gql_env
    stop_env(gql_env, databases)


@pytest.fixture
def router(genv: GqlEnv) -> RouterProcess:
    return genv.router


@pytest.fixture
async def v1(router: RouterProcess) -> AsyncIterator[V1]:
    clients = V1(router)
    yield clients
    await clients.close()


async def tick_subscription(router: RouterProcess, args: str = "", fields: str = TICK_FIELDS) -> Subscriber:
    sub = await Subscriber.connect(router)
    await sub.acknowledged()
    await sub.subscribe(f"subscription {{ usageTicks{args} {{ {fields} }} }}")
    return sub


async def next_tick(sub: Subscriber, timeout: float = 10.0) -> dict[str, Any]:
    message = await sub.message(timeout)
    assert message["type"] == "next", message
    assert not message["payload"].get("errors"), message
    tick: dict[str, Any] = message["payload"]["data"]["usageTicks"]
    return tick


async def tick_subscribers(router: RouterProcess, count: int, timeout: float = 20.0) -> None:
    """Until the router's ticker has `count` subscribers (at once on a router in another process)."""
    if not isinstance(router, RouterThread):
        return
    ticker = router.app.state.runtime.ticker
    deadline = time.monotonic() + timeout
    while ticker.subscriber_count < count:
        assert time.monotonic() < deadline, f"{ticker.subscriber_count} usageTicks subscribers, not {count}"
        await asyncio.sleep(0.02)


def epoch(at: str) -> float:
    return datetime.fromisoformat(at).timestamp()


async def chat_usage(base_url: str, key: str, count: int) -> int:
    """`count` chat completions through the official SDK; the sum of their total_tokens."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30) as client:
        total = 0
        for _ in range(count):
            reply = await client.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.usage is not None
            total += reply.usage.total_tokens
    return total


async def ticks_until(sub: Subscriber, requests: int, quiet_after: int = 2) -> list[dict[str, Any]]:
    """Ticks until `requests` requests were counted, plus `quiet_after` more (which must be empty)."""
    ticks: list[dict[str, Any]] = []
    while sum(row["requests"] for t in ticks for row in t["rows"]) < requests:
        ticks.append(await next_tick(sub))
        assert len(ticks) < 30, ticks
    for _ in range(quiet_after):
        ticks.append(await next_tick(sub))
    return ticks


# --- the latency histogram (no router needed) --------------------------------------------------


def record(latency_ms: float, user: int = 1) -> RequestRecord:
    r = RequestRecord("r", "/v1/chat/completions", user_id=user, user_name=f"u{user}", model="m")
    r.status_code, r.latency_ms, r.total_tokens = 200, latency_ms, 3
    return r


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q)) - 1]


def test_latency_buckets_are_log_spaced_and_clamped():
    assert live.latency_bucket(0) == 0 and live.latency_bucket(-3) == 0 and live.latency_bucket(1e-9) == 0
    assert live.latency_bucket(1e12) == live.LATENCY_BUCKETS - 1
    for ms in (0.01, 0.7, 1.0, 3.3, 42.0, 999.0, 12_345.0, 300_000.0):
        i = live.latency_bucket(ms)
        assert abs(live.bucket_value(i) / ms - 1) <= 2 ** (1 / 16) - 1 + 1e-9  # half a bucket: 4.4 %
        assert live.latency_bucket(ms * 2) == i + live.LATENCY_BUCKETS_PER_OCTAVE  # 8 buckets per doubling


def test_percentiles_of_merged_seconds_and_processes_equal_those_of_all_requests():
    """Histograms add up exactly: seconds and processes (through the Redis encoding) merge without loss."""
    import random

    rng = random.Random(17)
    latencies = [rng.lognormvariate(5, 1.2) for _ in range(3000)]
    one: live.Bucket = {}
    for ms in latencies:
        live.add_record(one, record(ms))
    # three processes over four seconds, each bucket through the Redis hash encoding
    parts: list[live.Bucket] = [{} for _ in range(12)]
    for n, ms in enumerate(latencies):
        live.add_record(parts[n % 12], record(ms))
    redis_hash: dict[bytes, float] = {}
    for part in parts:
        for _command, field, value in live.encode_bucket(part):
            redis_hash[field] = redis_hash.get(field, 0) + value
    decoded = live.decode_bucket({k: str(v).encode() for k, v in redis_hash.items()})
    [whole] = live.rows_of(one, [])
    [merged] = live.rows_of(live.merge([decoded]), [])
    [merged_seconds] = live.rows_of(live.merge(parts), [])

    def pcts(row: live.UsageRow) -> tuple[float | None, float | None]:
        return row.p50_latency_ms, row.p95_latency_ms

    assert pcts(whole) == pcts(merged) == pcts(merged_seconds)
    assert merged.requests == 3000
    for q, got in ((0.5, merged.p50_latency_ms), (0.95, merged.p95_latency_ms)):
        assert got is not None and abs(got / exact_quantile(latencies, q) - 1) <= 0.045


def test_percentiles_per_group_and_unknown_redis_fields_are_left_out():
    bucket: live.Bucket = {}
    for ms in (10.0, 10.0, 10.0, 1000.0):
        live.add_record(bucket, record(ms, user=1))
    live.add_record(bucket, record(50.0, user=2))
    rows = {r.user_id: r for r in live.rows_of(bucket, ["user"])}
    assert rows[1].p50_latency_ms == pytest.approx(10.0, rel=0.045)
    assert rows[1].p95_latency_ms == pytest.approx(1000.0, rel=0.045)
    assert rows[2].p50_latency_ms == rows[2].p95_latency_ms == pytest.approx(50.0, rel=0.045)
    entries = {field: str(value).encode() for _c, field, value in live.encode_bucket(bucket)}
    entries[b'[1,"u1",null,null,"m"]|h99999'] = b"5"  # out of range
    entries[b'[1,"u1",null,null,"m"]|future'] = b"5"  # a newer process's field
    decoded = live.decode_bucket(entries)
    assert sum(sum(g.hist.values()) for g in decoded.values()) == 5
    assert live.quantile({}, 0.5) is None


# --- one execution per tick and selection, shared by its subscribers (in-process schema) --------


class _TickContext:
    """What usageTicks needs of the context: the admin check and the runtime's ticker."""

    auth_error = None

    def __init__(self, ticker: live.UsageTicker) -> None:
        self.runtime = type("Runtime", (), {"ticker": ticker})()

    def require_admin(self) -> None:
        pass


async def test_a_tick_is_executed_once_per_selection_and_shared():
    from graphql_schema.schema import build_schema

    schema = build_schema()
    ticker = live.UsageTicker()
    full = "subscription { usageTicks { at skipped rows { requests totalTokens p50LatencyMs p95LatencyMs } } }"
    other = "subscription Other { usageTicks { skipped rows { requests } } }"
    streams = [await schema.subscribe(q, context_value=_TickContext(ticker)) for q in (full, full, full, other)]
    pending = [asyncio.ensure_future(anext(stream)) for stream in streams]
    deadline = asyncio.get_running_loop().time() + 5
    while ticker.subscriber_count < len(streams):  # each generator has subscribed its mailbox
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    bucket: live.Bucket = {}
    for ms in (10.0, 20.0, 400.0):
        live.add_record(bucket, record(ms))
    tick = live.Tick(datetime.now().astimezone(), 1, live.rows_of(bucket, []))
    for mailbox in list(ticker._mailboxes):
        mailbox.put(tick)
    results = await asyncio.gather(*pending)
    assert all(not r.errors for r in results), results
    assert results[0].data == results[1].data == results[2].data  # the same answer...
    shared = tick.views[0]
    assert len(shared.shared_results) == 2  # ...executed once per distinct selection, not per subscriber
    [row] = results[0].data["usageTicks"]["rows"]
    assert row["requests"] == 3 and row["p50LatencyMs"] == pytest.approx(20.0, rel=0.045)
    assert results[3].data == {"usageTicks": {"skipped": 0, "rows": [{"requests": 3}]}}
    for stream in streams:
        await stream.aclose()


# --- two processes sharing Redis --------------------------------------------------------------


@pytest.fixture
def redis_pair(tmp_path: Path, upstream) -> Iterator[tuple[RouterProcess, RouterProcess]]:
    """Two routers (personal mode: no keys to share) on the same Redis prefix, each with its own database:
    a router process, and one in this process where it may be (the tests below start the module's
    in-process router: these come first), else another router process."""
    env = {
        "REDIS_URL": require_redis(),
        "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
        "ENABLE_ACCOUNT_MANAGEMENT": "false",
    }
    routers: list[RouterProcess] = []
    for name, kind in (("a", router_for), ("b", RouterProcess)):
        config = write_config(tmp_path / f"{name}.yaml", {"alpha": {"url": upstream.base_url}})
        routers.append(kind(tmp_path / name, env, config))
    with contextlib.ExitStack() as stopping:  # each router is stopped even if stopping another raised
        for router in routers:
            stopping.callback(router.stop)
            router.start()
        yield routers[0], routers[1]


async def test_two_processes_sharing_redis_show_the_same_totals(redis_pair):
    a, b = redis_pair
    on_a, on_b = await tick_subscription(a), await tick_subscription(b)
    try:
        await next_tick(on_a)
        await next_tick(on_b)
        tokens = await chat_usage(a.v1, "local", 3) + await chat_usage(b.v1, "local", 4)
        seen_a, seen_b = await ticks_until(on_a, 7), await ticks_until(on_b, 7)

        def per_second(ticks: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
            return {
                t["at"]: (sum(r["requests"] for r in t["rows"]), sum(r["totalTokens"] for r in t["rows"]))
                for t in ticks
                if t["rows"]
            }

        def percentiles(ticks: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
            return {t["at"]: [(r["p50LatencyMs"], r["p95LatencyMs"]) for r in t["rows"]] for t in ticks if t["rows"]}

        assert per_second(seen_a) == per_second(seen_b)  # the same intervals, the same numbers
        assert percentiles(seen_a) == percentiles(seen_b)  # histograms merged through Redis
        assert sum(n for n, _ in per_second(seen_a).values()) == 7  # each request counted once
        assert sum(t for _, t in per_second(seen_a).values()) == tokens
    finally:
        await on_a.close()
        await on_b.close()


# --- totals -----------------------------------------------------------------------------------


async def test_tick_totals_equal_the_requests_sent(router):
    user, key = await new_user(router, "alpha")
    whole = await tick_subscription(router)
    grouped = await tick_subscription(router, "(groupBy: [USER, MODEL])")
    try:
        await next_tick(whole)  # subscribed: everything from here on is counted
        await next_tick(grouped)
        tokens = await chat_usage(router.v1, key, 5)
        ticks = await ticks_until(whole, 5)
        assert all(t["intervalS"] == 1 and t["skipped"] == 0 for t in ticks)
        rows = [row for t in ticks for row in t["rows"]]
        assert sum(r["requests"] for r in rows) == 5 and sum(r["totalTokens"] for r in rows) == tokens
        assert sum(r["promptTokens"] + r["completionTokens"] for r in rows) == tokens
        assert all(r["errors"] == 0 and r["avgLatencyMs"] > 0 and r["userId"] is None for r in rows)
        assert all(0 < r["p50LatencyMs"] <= r["p95LatencyMs"] for r in rows)
        assert ticks[-1]["rows"] == []  # nothing after the requests: quiet ticks

        by_user = [row for t in await ticks_until(grouped, 5) for row in t["rows"]]
        assert {(r["userId"], r["model"], r["backendName"]) for r in by_user} == {(user, "test-model", None)}
        assert sum(r["requests"] for r in by_user) == 5
    finally:
        await whole.close()
        await grouped.close()


async def test_errors_are_counted(router):
    _user, key = await new_user(router, "alpha")
    sub = await tick_subscription(router, "(groupBy: [USER])")
    try:
        await next_tick(sub)
        async with openai.AsyncOpenAI(base_url=router.v1, api_key=key, max_retries=0) as client:
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        rows = [row for t in await ticks_until(sub, 1, quiet_after=0) for row in t["rows"]]
        assert [(r["requests"], r["errors"], r["totalTokens"]) for r in rows] == [(1, 1, 0)]
    finally:
        await sub.close()


# --- quiet intervals and longer intervals -----------------------------------------------------


async def test_an_empty_interval_still_ticks(router):
    sub = await tick_subscription(router, "(intervalS: 1)")
    try:
        first, second, third = [await next_tick(sub) for _ in range(3)]
        assert first["rows"] == second["rows"] == third["rows"] == []
        assert epoch(second["at"]) - epoch(first["at"]) == 1 and epoch(third["at"]) - epoch(second["at"]) == 1
        assert epoch(third["at"]) % 1 == 0 and third["skipped"] == 0
    finally:
        await sub.close()


async def test_a_longer_interval_is_aligned_and_sums_its_seconds(router):
    _user, key = await new_user(router, "alpha")
    sub = await tick_subscription(router, "(intervalS: 2)", fields="at intervalS skipped rows { requests }")
    try:
        first = await next_tick(sub)
        assert first["intervalS"] == 2 and epoch(first["at"]) % 2 == 0
        await chat_usage(router.v1, key, 3)
        ticks = await ticks_until(sub, 3, quiet_after=1)
        assert [epoch(t["at"]) - epoch(first["at"]) for t in ticks] == [2.0 * (i + 1) for i in range(len(ticks))]
        assert sum(r["requests"] for t in ticks for r in t["rows"]) == 3
    finally:
        await sub.close()


@pytest.mark.parametrize("interval", [0, -1, 61])
async def test_an_interval_out_of_range_is_refused(router, interval):
    sub = await tick_subscription(router, f"(intervalS: {interval})", fields="at")
    try:
        message = await sub.message()
        errors = message["payload"] if message["type"] == "error" else message["payload"].get("errors")
        [error] = errors
        assert error["extensions"]["code"] == "BAD_USER_INPUT" and error["extensions"]["field"] == "intervalS"
        assert "between 1 and 60" in error["message"]
    finally:
        await sub.close()


# --- a slow subscriber ------------------------------------------------------------------------


async def test_a_stuck_subscriber_gets_the_newest_tick_with_the_skipped_count(router):
    fat = " ".join(f"f{i}: at" for i in range(FAT_ALIASES))
    stuck = await asyncio.to_thread(StuckClient, router)
    try:
        stuck.send({"type": "connection_init", "payload": {"Authorization": "Bearer " + router.env["ADMIN_PASSWORD"]}})
        assert (await asyncio.to_thread(stuck.read))["type"] == "connection_ack"
        query = f"subscription {{ usageTicks {{ at skipped {fat} }} }}"
        stuck.send({"id": "1", "type": "subscribe", "payload": {"query": query}})
        await tick_subscribers(router, 1)  # its document (20,000 aliases) is parsed and validated
        healthy = await tick_subscription(router, fields="at skipped")
        try:
            seen = [await next_tick(healthy) for _ in range(12)]  # 12 s during which the stuck one reads nothing
            # The healthy one is not held up: it gets most ticks (a loaded machine may make even a
            # reader that keeps up miss one), and what it misses is counted, never lost silently.
            assert sum(t["skipped"] for t in seen) < len(seen) // 2, seen
            for before, after in itertools.pairwise(seen):
                assert epoch(after["at"]) - epoch(before["at"]) == 1 + after["skipped"]
        finally:
            await healthy.close()
        got: list[dict[str, Any]] = []
        while not got or epoch(got[-1]["at"]) < epoch(seen[-1]["at"]):
            message = await asyncio.to_thread(stuck.read)
            assert message["type"] == "next", str(message)[:300]
            got.append(message["payload"]["data"]["usageTicks"])
        skipped = [t["skipped"] for t in got]
        assert any(skipped), f"the router never had to skip: {got}"
        # Nothing lost silently: the gap between two messages is exactly 1 + the ticks skipped.
        for before, after in itertools.pairwise(got):
            assert epoch(after["at"]) - epoch(before["at"]) == 1 + after["skipped"]
    finally:
        stuck.close()


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-password"])
async def test_usage_ticks_without_a_valid_token_are_refused(router, token):
    sub = await Subscriber.connect(router, token=token)
    await sub.subscribe(f"subscription {{ usageTicks {{ {TICK_FIELDS} }} }}")
    with pytest.raises(ConnectionClosed) as closed:
        await sub.message()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


# --- requestLogged with a rate cap ------------------------------------------------------------


async def test_request_logged_with_max_per_second_counts_what_it_left_out(router, v1):
    user, key = await new_user(router, "alpha")
    capped = await open_subscription(router, f'(userId: "{user}", maxPerSecond: 2)', fields="requestId skippedBefore")
    every = await open_subscription(router, f'(userId: "{user}")', fields="requestId skippedBefore")
    try:
        sent = list(await asyncio.gather(*(v1.chat(key) for _ in range(8))))
        logged = [(await every.next_log())["requestId"] for _ in sent]
        assert sorted(logged) == sorted(sent)
        got = [await capped.next_log()]  # the first of the burst, at least
        while logged.index(got[-1]["requestId"]) < len(sent):  # until one after the burst came through
            assert len(logged) < len(sent) + 20, got
            logged.append(await v1.chat(key))  # later requests (later seconds) bring the count of the rest
            assert (await every.next_log())["requestId"] == logged[-1]
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append(await capped.next_log(timeout=0.3))
        # Each message says how many were left out before it: together they account for every request up to
        # the last one delivered, in the order they were logged.
        last = logged.index(got[-1]["requestId"])
        assert len(got) + sum(m["skippedBefore"] for m in got) == last + 1
        positions = [logged.index(m["requestId"]) for m in got]
        assert positions == sorted(positions)
        assert sum(m["skippedBefore"] for m in got) > 0 and len(got) < last + 1
    finally:
        await capped.close()
        await every.close()


@pytest.mark.parametrize("cap", [0, -5, 10_001])
async def test_request_logged_refuses_a_max_per_second_out_of_range(router, cap):
    sub = await Subscriber.connect(router)
    await sub.acknowledged()
    await sub.subscribe(f"subscription {{ requestLogged(maxPerSecond: {cap}) {{ requestId }} }}")
    try:
        message = await sub.message()
        errors = message["payload"] if message["type"] == "error" else message["payload"].get("errors")
        [error] = errors
        assert error["extensions"]["code"] == "BAD_USER_INPUT" and error["extensions"]["field"] == "maxPerSecond"
    finally:
        await sub.close()


# --- backendHealthChanged ---------------------------------------------------------------------


async def served(router: RouterProcess, key: str, model: str, timeout: float = 15.0) -> None:
    """Until the router lists `model` to `key` (new backends' models are fetched in the background)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            response = await http.get(f"{router.v1}/models", headers={"Authorization": f"Bearer {key}"})
            if response.status_code == 200 and any(m["id"] == model for m in response.json()["data"]):
                return
            assert time.monotonic() < deadline, f"{model} not served to the new key: {response.text[:300]}"
            await asyncio.sleep(0.05)


async def test_backend_health_changed_reports_down_with_the_reason_and_up_again(router, upstream_factory):
    """On the module's router (HEALTH_* as this test needs them): two more backends, a user of only those."""
    bad = upstream_factory(name="bad", models=["test-model"])
    good = upstream_factory(name="good", models=["test-model"])
    for name, upstream in (("bad", bad), ("good", good)):
        await agql(router, CREATE_BACKEND, {"i": {"name": name, "baseUrl": upstream.base_url}})
    _user, key = await new_user(router, "bad", "good")
    await served(router, key, "test-model")
    try:
        sub = await Subscriber.connect(router)
        await sub.acknowledged()
        await sub.subscribe("subscription { backendHealthChanged { backendId backendName healthy reason at } }")
        refused = await Subscriber.connect(router, token=None)
        await refused.subscribe("subscription { backendHealthChanged { backendId } }")
        with pytest.raises(ConnectionClosed):
            await refused.message()
        bad.fail_status = 500
        async with openai.AsyncOpenAI(base_url=router.v1, api_key=key, max_retries=0) as client:
            for _ in range(2):  # round-robin: one of them tries `bad`, fails over to `good`
                await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
            message = await sub.message()
            down = message["payload"]["data"]["backendHealthChanged"]
            assert (down["backendName"], down["healthy"]) == ("bad", False)
            assert "500" in down["reason"] or "failing" in down["reason"], down
            bad.fail_status = None
            up = None
            for _ in range(50):  # after the 1 s cooldown a request probes `bad`, which answers now
                await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
                with contextlib.suppress(TimeoutError):
                    up = (await sub.message(timeout=0.2))["payload"]["data"]["backendHealthChanged"]
                    break
            assert up is not None and (up["backendId"], up["healthy"], up["reason"]) == (down["backendId"], True, None)
        await sub.close()
    finally:
        bad.fail_status = None
