"""The benchmark harness: mock upstream + router (pinned to one core) + load from the other core.

    .venv/bin/python benchmarks/run.py                      # the main matrix (~6 min), README + JSON
    .venv/bin/python benchmarks/run.py --quick              # 3-second cells, for a smoke run
    .venv/bin/python benchmarks/run.py --vs-litellm         # also LiteLLM's proxy, same mock, same cells
    .venv/bin/python benchmarks/run.py --no-matrix --soak 600 --analytics 1000000 --workers-compare
    .venv/bin/python benchmarks/run.py --no-matrix --profile 15   # py-spy under load, top frames
    .venv/bin/python benchmarks/run.py --protocols --no-readme    # chat vs Responses vs Messages streams
    .venv/bin/python benchmarks/run.py --subscribers --no-readme  # c64 with/without 110 live subscribers

Results go to benchmarks/results/latest.json (each section keeps its own timestamp; sections not
run this time are kept) and into the generated part of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
import procstat
import report
from services import (
    ADMIN_PASSWORD,
    MODEL,
    REPO,
    SLOW_MODEL,
    Floor,
    GraphQLError,
    GraphQLUnavailable,
    Mock,
    Router,
    install_litellm,
    start_floor,
    start_litellm,
    start_mock,
    stop_process,
)
from subscribers import SubscriberLoad

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHAT = "/v1/chat/completions"
NOISY_PCT = 10.0  # other processes above this share of the server's CPU during a cell: measure again


@dataclass
class Cpus:
    """Router on CPU 0; this process, the load generator and the mock on the others."""

    router: str | None
    load: set[int] | None

    @classmethod
    def detect(cls) -> Cpus:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(str(available[0]), set(available[1:]))

    @property
    def router_set(self) -> set[int] | None:
        return {int(self.router)} if self.router is not None else None

    @property
    def load_str(self) -> str | None:
        return ",".join(map(str, sorted(self.load))) if self.load else None


@dataclass
class Ctx:
    args: argparse.Namespace
    cpus: Cpus
    work: Path
    fast: Mock
    slow: Mock

    @property
    def duration(self) -> float:
        return 3.0 if self.args.quick else float(self.args.duration)

    @property
    def warmup(self) -> float:
        return 1.0

    @property
    def router_env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.args.router_env)

    def new_router(self, name: str) -> Router:
        router = Router(
            self.work / name,
            Path(self.args.router_src).resolve(),
            self.cpus.router,
            {"mock": f"{self.fast.url}/v1", "slow": f"{self.slow.url}/v1"},
            [MODEL, SLOW_MODEL],
        )
        router.prepare()
        return router


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- one cell ---------------------------------------------------------------------------------


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy the whole machine is (% of one core, summed over cores) over `seconds`."""
    cores = sorted(os.sched_getaffinity(0) | (Cpus.detect().router_set or set()))
    before = sum(procstat.cpu_busy_seconds(c) for c in cores)
    time.sleep(seconds)
    return 100 * (sum(procstat.cpu_busy_seconds(c) for c in cores) - before) / seconds


def wait_quiet(ctx: Ctx) -> float:
    """Wait (up to --quiet-wait s) until other processes leave the CPUs alone; the busy % seen last."""
    deadline = time.monotonic() + ctx.args.quiet_wait
    busy = machine_busy_pct()
    if busy > ctx.args.quiet_threshold:
        log(f"machine busy ({busy:.0f} % of a core used by other processes): waiting up to {ctx.args.quiet_wait} s")
    while busy > ctx.args.quiet_threshold and time.monotonic() < deadline:
        busy = machine_busy_pct(2.0)
    return busy


def measure(
    label: str,
    url: str,
    stream: bool,
    concurrency: int,
    ctx: Ctx,
    key: str | None = None,
    pid: int | None = None,
    model: str = MODEL,
    body: bytes | None = None,
) -> dict[str, Any]:
    """One row of the matrix; re-run (up to --retries times) when other processes shared the server's CPU."""
    best: dict[str, Any] | None = None
    for _ in range(ctx.args.retries + 1):
        row = measure_once(label, url, stream, concurrency, ctx, key, pid, model, body)
        if best is None or row.get("others_on_cpu_pct", 0) < best.get("others_on_cpu_pct", 0):
            best = row
        if row.get("others_on_cpu_pct", 0) <= NOISY_PCT:
            break
        log(f"  noisy: other processes used {row['others_on_cpu_pct']} % of the server's CPU; measuring again")
    assert best is not None
    best["noisy"] = best.get("others_on_cpu_pct", 0) > NOISY_PCT
    return best


def measure_once(
    label: str,
    url: str,
    stream: bool,
    concurrency: int,
    ctx: Ctx,
    key: str | None,
    pid: int | None,
    model: str,
    body: bytes | None = None,
) -> dict[str, Any]:
    """Wait for quiet, warm up, then run the load (a chat body unless `body`) while metering the server's CPU."""
    quiet = wait_quiet(ctx)
    body = body or loadgen.chat_body(model, stream)
    loadgen.run_load(url, body, key, concurrency, ctx.warmup)
    meter = procstat.CpuMeter(pid) if pid else None
    if meter:
        meter.start()
    core = int(ctx.cpus.router) if ctx.cpus.router is not None else None
    core_before = procstat.cpu_busy_seconds(core) if core is not None else 0.0
    result = loadgen.run_load(url, body, key, concurrency, ctx.duration)
    core_busy = procstat.cpu_busy_seconds(core) - core_before if core is not None else 0.0
    row: dict[str, Any] = {"target": label, "mode": "stream" if stream else "non-stream", **result.as_dict()}
    row["machine_busy_before_pct"] = round(quiet, 1)
    if meter and pid:
        cpu = meter.stop()
        if meter.helper:  # the Langfuse exporter process: reported apart from the event loop's CPU
            row["helper_cpu_ms_per_req"] = round(meter.helper * 1000 / max(result.requests, 1), 3)
            cpu -= meter.helper
        row["cpu_ms_per_req"] = round(cpu * 1000 / max(result.requests, 1), 3)
        row["cpu_busy_pct"] = round(100 * cpu / result.duration_s, 1)
        # What one dedicated core would sustain at this CPU cost: robust to other processes on a shared machine.
        row["capacity_rps"] = round(1000 / row["cpu_ms_per_req"], 0) if row["cpu_ms_per_req"] else None
        row["rss_mib"] = round(procstat.rss_mib(pid), 1)
        if core is not None:  # other processes of the machine that ran on the server's CPU meanwhile
            row["others_on_cpu_pct"] = round(max(0.0, 100 * (core_busy - cpu) / result.duration_s), 1)
    row["loadavg"] = float(Path("/proc/loadavg").read_text().split()[0])
    log(
        f"{label:<16} {row['mode']:<10} c={concurrency:<3} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
        + (
            f"  cpu {row['cpu_ms_per_req']:.3f} ms/req ({row['cpu_busy_pct']:.0f} %), others on its CPU "
            f"{row.get('others_on_cpu_pct', 0):.0f} %"
            if "cpu_ms_per_req" in row
            else ""
        )
    )
    return row


def matrix(label: str, base: str, ctx: Ctx, key: str | None, pid: int | None, conc: tuple[int, ...]) -> list[dict]:
    return [measure(label, base + CHAT, stream, c, ctx, key, pid) for stream in (False, True) for c in conc]


TTFT_ROUNDS = 3


def ttft_alternating(ctx: Ctx, targets: list[tuple[str, str, str | None]]) -> list[dict[str, Any]]:
    """Time to first token of each (label, base URL, key), measured in turns (TTFT_ROUNDS rounds of
    sequential streams each), so that a drift of the machine reaches every target alike; per target
    the median over rounds of each statistic (p10, p50, p90, mean)."""
    n = 20 if ctx.args.quick else 40
    rounds: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in targets}
    for i in range(TTFT_ROUNDS):
        for label, base, key in targets:
            wait_quiet(ctx)
            body = loadgen.chat_body(SLOW_MODEL, True)
            result = asyncio.run(loadgen.time_to_first_token(base + CHAT, body, key, n))
            p10, p50 = result["p10_ms"], result["p50_ms"]
            log(f"{label:<16} TTFT (10 ms/chunk) round {i + 1}: p10 {p10:.2f} p50 {p50:.2f} ms")
            rounds[label].append(result)
    out = []
    for label, results in rounds.items():
        merged: dict[str, Any] = {"target": label, "n": sum(r["n"] for r in results), "rounds": len(results)}
        merged["errors"] = sum(r["errors"] for r in results)
        for stat in ("p10_ms", "p50_ms", "p90_ms", "mean_ms"):
            merged[stat] = round(statistics.median(r[stat] for r in results), 3)
        out.append(merged)
    return out


def ttft(label: str, base: str, ctx: Ctx, key: str | None) -> dict[str, Any]:
    n = 20 if ctx.args.quick else 60
    wait_quiet(ctx)
    result = asyncio.run(loadgen.time_to_first_token(base + CHAT, loadgen.chat_body(SLOW_MODEL, True), key, n))
    log(f"{label:<16} TTFT (10 ms/chunk) p50 {result['p50_ms']:.2f} ms  mean {result['mean_ms']:.2f} ms")
    return {"target": label, **result}


# --- the main matrix --------------------------------------------------------------------------


def run_lite(ctx: Ctx) -> dict[str, Any]:
    """Router-only cells for A/B runs of hot-path changes (`--lite --router-src /tmp/wt`)."""
    section: dict[str, Any] = {"cells": [], "ttft": []}
    router = ctx.new_router("lite")
    router.start(ctx.router_env)
    try:
        for stream, c in ((False, 1), (False, 64), (True, 64)):
            section["cells"].append(measure("router", router.url + CHAT, stream, c, ctx, router.key, router.pid))
        section["peak_rss_mib"] = round(procstat.peak_rss_mib(router.pid), 1)
    finally:
        router.stop()
    return section


def run_protocols(ctx: Ctx) -> dict[str, Any]:
    """Chat vs Responses vs Messages streams through one router, c64, the same 20 text events (issue 12)."""
    cells = (
        ("chat", CHAT, loadgen.chat_body(MODEL, True)),
        ("responses", "/v1/responses", loadgen.responses_body(MODEL)),
        ("messages", "/v1/messages", loadgen.messages_body(MODEL)),
    )
    section: dict[str, Any] = {"cells": []}
    router = ctx.new_router("protocols")
    router.start(ctx.router_env)
    try:
        for label, path, body in cells:
            row = measure(label, router.url + path, True, 64, ctx, router.key, router.pid, body=body)
            section["cells"].append(row)
    finally:
        router.stop()
    return section


def run_subscribers(ctx: Ctx) -> dict[str, Any]:
    """Issue 17: non-stream c64 without and with 100 `usageTicks` + 10 `requestLogged(maxPerSecond: 5)`
    subscribers, alternating within each of --rounds rounds (A B, then B A), so both share the noise."""
    ticks, logs, cap = 100, 10, 5
    router = ctx.new_router("subscribers")
    router.start(ctx.router_env)
    samples: dict[str, list[dict[str, Any]]] = {"none": [], "subscribers": []}
    try:
        for round_ in range(ctx.args.rounds):
            log(f"subscribers round {round_ + 1}/{ctx.args.rounds}")
            for variant in ("none", "subscribers") if round_ % 2 == 0 else ("subscribers", "none"):
                if variant == "none":
                    row = measure_once("router", router.url + CHAT, False, 64, ctx, router.key, router.pid, MODEL)
                else:
                    with SubscriberLoad(router.url, ADMIN_PASSWORD, ticks, logs, cap) as load:
                        row = measure_once(
                            "router+subscribers", router.url + CHAT, False, 64, ctx, router.key, router.pid, MODEL
                        )
                    row["subscribers"] = load.counts.as_dict(load.seconds)
                    log(f"  subscribers got {row['subscribers']}")
                samples[variant].append(row)
    finally:
        router.stop()

    def median(variant: str, key: str) -> float:
        return round(statistics.median(r[key] for r in samples[variant] if r.get(key) is not None), 3)

    paired = [s["rps"] / n["rps"] for n, s in zip(samples["none"], samples["subscribers"], strict=True) if n["rps"]]
    paired_cpu = [
        n["cpu_ms_per_req"] / s["cpu_ms_per_req"]
        for n, s in zip(samples["none"], samples["subscribers"], strict=True)
        if s.get("cpu_ms_per_req") and n.get("cpu_ms_per_req")
    ]
    summary = {
        "subscribers": f"{ticks} usageTicks(intervalS: 1) + {logs} requestLogged(maxPerSecond: {cap})",
        "rounds": ctx.args.rounds,
        "rps_median": {v: median(v, "rps") for v in samples},
        "cpu_ms_per_req_median": {v: median(v, "cpu_ms_per_req") for v in samples},
        "throughput_ratio_median_of_rounds": round(statistics.median(paired), 3) if paired else None,
        "cpu_capacity_ratio_median_of_rounds": round(statistics.median(paired_cpu), 3) if paired_cpu else None,
    }
    log(f"subscribers: {summary}")
    return {"summary": summary, "samples": samples}


NOOP_SCRIPT_KEY = "BENCH_NOOP_SCRIPT"  # a variant's `BENCH_NOOP_SCRIPT=1`: not router environment


def run_ab(ctx: Ctx) -> dict[str, Any]:
    """Variants of the router measured in alternation (A B C A B C ...), so they share the same noise.

    `--variant NAME=SRC[,K=V...]`: a checkout to run the router from, plus router environment;
    `BENCH_NOOP_SCRIPT=1` among them activates one no-op PER_BACKEND script (the script cell's).
    """
    routers: dict[str, Router] = {}
    specs = [x.split(":") for x in ctx.args.ab_cells.split(",")]
    cells = tuple((kind == "st", int(c)) for kind, c in specs if kind != "ttft")
    ttft_n = next((int(c) for kind, c in specs if kind == "ttft"), 0)  # `ttft:N`: N sequential streams a round
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    ttfts: dict[str, list[dict[str, Any]]] = {}
    try:
        for spec in ctx.args.variant:
            name, _, rest = spec.partition("=")
            src, *env = rest.split(",")
            router = Router(
                ctx.work / f"ab-{name}",
                Path(src).resolve(),
                ctx.cpus.router,
                {"mock": f"{ctx.fast.url}/v1", "slow": f"{ctx.slow.url}/v1"},
                [MODEL, SLOW_MODEL],
            )
            router.prepare()
            settings = dict(e.split("=", 1) for e in env)
            noop_script = settings.pop(NOOP_SCRIPT_KEY, "") == "1"
            router.start(settings)
            if noop_script:  # the variant runs with one active no-op PER_BACKEND script
                create_noop_script(router)
                time.sleep(1.0)  # the catalog refresh is asynchronous
            routers[name] = router
        floors = start_floors(ctx, ctx.args.floors) if ctx.args.floor else []
        # TTFT through the floor needs a floor in front of the slow mock (granian + h1, the router's pairing)
        slow_floor = start_floor("granian", "h1", ctx.slow.url, ctx.cpus.router, ctx.work) if ttft_n else None
        targets = [(name, r.url, r.key, r.pid) for name, r in routers.items()]
        targets += [(f.name, f.url, None, f.pid) for f in floors]
        for round_ in range(ctx.args.rounds):
            log(f"A/B round {round_ + 1}/{ctx.args.rounds}")
            for stream, c in cells:
                for name, url, key, pid in targets:
                    row = measure_once(name, url + CHAT, stream, c, ctx, key, pid, MODEL)
                    samples.setdefault(name, {}).setdefault(f"{row['mode']} c{c}", []).append(row)
            if ttft_n:  # the direct slow mock and each router variant (the floors only know the fast mock)
                ttft_targets: list[tuple[str, str, str | None]] = [("direct", ctx.slow.url, None)]
                ttft_targets += [(n, r.url, r.key) for n, r in routers.items()]
                if slow_floor is not None:
                    ttft_targets.append((slow_floor.name, slow_floor.url, None))
                for name, url, api_key in ttft_targets:
                    wait_quiet(ctx)
                    body = loadgen.chat_body(SLOW_MODEL, True)
                    first = asyncio.run(loadgen.time_to_first_token(url + CHAT, body, api_key, ttft_n))
                    log(f"{name:<16} TTFT (10 ms/chunk) p10 {first['p10_ms']:.2f} p50 {first['p50_ms']:.2f} ms")
                    ttfts.setdefault(name, []).append(first)
    finally:
        for router in routers.values():
            router.stop()
        for floor in [*(locals().get("floors") or []), *filter(None, [locals().get("slow_floor")])]:
            stop_process(floor.proc)
    summary = ab_summary(samples)
    return {
        "variants": ctx.args.variant,
        "rounds": ctx.args.rounds,
        "summary": summary,
        "vs_floor": floor_ratios(samples, list(routers), [f.name for f in floors]),
        "ttft_added": ttft_added(ttfts),
    }


def ttft_added(ttfts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: medians over rounds of its TTFT p10/p50 minus the direct mock's in the same round."""
    out: dict[str, Any] = {}
    direct = ttfts.get("direct", [])
    for name, rows in ttfts.items():
        if name == "direct" or not direct:
            continue
        out[name] = {
            q: round(statistics.median(r[q] - d[q] for r, d in zip(rows, direct, strict=False)), 3)
            for q in ("p10_ms", "p50_ms")
        }
        log(f"{name}: TTFT added p10 {out[name]['p10_ms']:.2f} ms, p50 {out[name]['p50_ms']:.2f} ms (median of rounds)")
    return out


# granian+h1-lean: the router's pairing with only a router's essentials (lean_floor.py), for comparison
FLOORS = (
    ("granian", "h1"),
    ("granian", "aiohttp"),
    ("uvicorn", "h1"),
    ("granian", "pyreqwest"),
    ("granian", "h1-lean"),
)


def start_floors(ctx: Ctx, only: str = "") -> list[Floor]:
    """The bare forward-and-relay app on the router's pairing (granian+h1), the fallbacks', pyreqwest's.

    `only`: a comma-separated subset as `server+client` (A/B runs that need one floor, not three).
    """
    wanted = {tuple(x.split("+", 1)) for x in only.split(",") if x} or set(FLOORS)
    pairs = [pair for pair in FLOORS if pair in wanted]
    return [start_floor(server, client, ctx.fast.url, ctx.cpus.router, ctx.work) for server, client in pairs]


def floor_ratios(
    samples: dict[str, dict[str, list[dict[str, Any]]]], variants: list[str], floors: list[str]
) -> dict[str, Any]:
    """Per variant, cell and floor: median over rounds of (variant req/s ÷ floor req/s in the same round)."""
    out: dict[str, Any] = {}
    for variant in variants:
        for floor in floors:
            for cell_name, rows in samples.get(variant, {}).items():
                floor_rows = samples.get(floor, {}).get(cell_name, [])
                ratios = [r["rps"] / f["rps"] for r, f in zip(rows, floor_rows, strict=False) if f["rps"]]
                if ratios:
                    out.setdefault(variant, {}).setdefault(cell_name, {})[floor] = round(statistics.median(ratios), 3)
    for variant, cells in out.items():
        for cell_name, by_floor in cells.items():
            log(f"{variant} {cell_name}: " + ", ".join(f"{v:.0%} of {k}" for k, v in by_floor.items()))
    return out


def ab_summary(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per variant and cell: median req/s, CPU ms/request, p50, and the noise seen."""
    out: dict[str, Any] = {}
    for name, by_cell in samples.items():
        out[name] = {
            cell_name: {
                "rps": round(statistics.median(r["rps"] for r in rows), 0),
                "cpu_ms_per_req": round(statistics.median(r["cpu_ms_per_req"] for r in rows), 3),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 3),
                "others_on_cpu_pct": round(statistics.median(r.get("others_on_cpu_pct", 0) for r in rows), 1),
            }
            for cell_name, rows in by_cell.items()
        }
    for name, cells in out.items():
        log(
            f"{name:<12} "
            + " | ".join(
                f"{k}: {v['rps']:.0f} req/s {v['cpu_ms_per_req']:.3f} ms/req p50 {v['p50_ms']:.2f}"
                for k, v in cells.items()
            )
        )
    return out


def run_matrix(ctx: Ctx) -> dict[str, Any]:
    section: dict[str, Any] = {"cells": [], "ttft": [], "skipped": {}}
    cells, conc = section["cells"], (1, 16, 64)
    log("direct to the mock (mock moved to the router's CPU while the router is idle)")
    ctx.fast.pin(ctx.cpus.router_set)
    cells += matrix("direct", ctx.fast.url, ctx, None, ctx.fast.proc.pid, conc)
    ctx.fast.pin(ctx.cpus.load)

    router = ctx.new_router("router")
    router.start(ctx.router_env)
    try:
        log(f"router (its default server and transport), pid {router.pid}, CPU {ctx.cpus.router}")
        cells += matrix("router", router.url, ctx, router.key, router.pid, conc)
        # Time to first token: the mock directly, the router, and the bare proxy on the router's server
        # and client (the part of the router's TTFT that is the stack's), in turns.
        slow_floor = start_floor("granian", "h1", ctx.slow.url, ctx.cpus.router, ctx.work)
        try:
            section["ttft"] = ttft_alternating(
                ctx,
                [
                    ("direct", ctx.slow.url, None),
                    ("router", router.url, router.key),
                    (slow_floor.name, slow_floor.url, None),
                ],
            )
        finally:
            stop_process(slow_floor.proc)
        section["peak_rss_mib"] = round(procstat.peak_rss_mib(router.pid), 1)
        script_cells(ctx, router, section)
    finally:
        router.stop()

    variants = (
        ("router-aiohttp", {"UPSTREAM_TRANSPORT": "aiohttp"}),
        ("router-pyreqwest", {"UPSTREAM_TRANSPORT": "pyreqwest"}),
        ("router-uvicorn", {"SERVER": "uvicorn"}),
    )
    for label, env in variants:
        router.start({**ctx.router_env, **env})
        try:
            cells += matrix(label, router.url, ctx, router.key, router.pid, (16, 64))
        finally:
            router.stop()
    for floor in start_floors(ctx):
        try:
            cells += matrix(floor.name, floor.url, ctx, None, floor.pid, (16, 64))
        finally:
            stop_process(floor.proc)
    langfuse_cells(ctx, router, section)
    return section


def script_cells(ctx: Ctx, router: Router, section: dict[str, Any]) -> None:
    """The same router with one active no-op PER_BACKEND script (via the GraphQL API)."""
    try:
        script_id = create_noop_script(router)
    except (GraphQLUnavailable, GraphQLError) as exc:
        section["skipped"]["script"] = f"no-op script cell skipped: {exc}"
        log(section["skipped"]["script"])
        return
    time.sleep(1.0)
    try:
        for c in (1, 64):
            section["cells"].append(measure("router+script", router.url + CHAT, False, c, ctx, router.key, router.pid))
    finally:
        router.graphql("mutation($id: ID!) { deleteScript(id: $id) }", {"id": script_id})


def create_noop_script(router: Router) -> str:
    backends = router.graphql("{ backends { id name } }")["backends"]
    backend_id = next(b["id"] for b in backends if b["name"] == "mock")
    created = router.graphql(
        "mutation($input: CreateScriptInput!) { createScript(input: $input) { id } }",
        {
            "input": {
                "name": "bench-noop",
                "type": "PER_BACKEND",
                "backendId": backend_id,
                "code": "function onRequest(c){return c}",
                "isActive": True,
            }
        },
    )
    script_id = created["createScript"]["id"]
    router.graphql("mutation($id: ID!) { activateScript(id: $id) { id isActive } }", {"id": script_id})
    return script_id


def langfuse_cells(ctx: Ctx, router: Router, section: dict[str, Any]) -> None:
    """Langfuse on, exporting to the mock (which answers 200 to any POST and counts them)."""
    env = {"LANGFUSE_PUBLIC_KEY": "pk-bench", "LANGFUSE_SECRET_KEY": "sk-bench", "LANGFUSE_HOST": ctx.fast.url}
    before = ctx.fast.stats()["sink_posts"]
    router.start(env)
    move_helpers_off_the_router_core(ctx, router.pid)
    rows = []
    try:
        for c in (1, 64):
            rows.append(measure("router+langfuse", router.url + CHAT, False, c, ctx, router.key, router.pid))
        deadline = time.monotonic() + 15
        while ctx.fast.stats()["sink_posts"] == before and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        router.stop()
    posts = ctx.fast.stats()["sink_posts"] - before
    if posts == 0:
        section["skipped"]["langfuse"] = (
            "Langfuse cell skipped: with LANGFUSE_* set the router sent nothing to the local sink "
            "(tracing is not wired into this router build yet); its numbers would equal the plain router's"
        )
        log(section["skipped"]["langfuse"])
        return
    section["langfuse_sink_posts"] = posts
    section["cells"] += rows


def move_helpers_off_the_router_core(ctx: Ctx, pid: int) -> None:
    """The exporter child inherits the router's `taskset` pin; unpinned (as in production) the OS runs it on
    another core. Left on the router's core it took 40-50 % of it, so the Langfuse cells read as disturbed."""
    if ctx.cpus.load is None:
        return
    for child in procstat.children_of(pid):
        if child != pid and procstat.CpuMeter.HELPERS in procstat.cmdline(child):
            os.sched_setaffinity(child, ctx.cpus.load)


# --- LiteLLM ----------------------------------------------------------------------------------


def run_litellm(ctx: Ctx) -> dict[str, Any]:
    venv = Path(ctx.args.litellm_venv)
    log(f"installing litellm[proxy] into {venv} (once)")
    try:
        exe = install_litellm(venv)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return {"skipped": f"could not install litellm[proxy]: {exc}"}
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    work = ctx.work / "litellm"
    work.mkdir(exist_ok=True)
    try:
        proxy = start_litellm(
            exe, work, {MODEL: f"{ctx.fast.url}/v1", SLOW_MODEL: f"{ctx.slow.url}/v1"}, ctx.cpus.router
        )
    except RuntimeError as exc:
        log(f"LiteLLM did not start: {exc}")
        return {"skipped": f"LiteLLM {version} proxy did not start: {str(exc).splitlines()[0]}"}
    try:
        log(f"LiteLLM {version} proxy, pid {proxy.pid}")
        cells = [
            measure("litellm", proxy.url + CHAT, s, c, ctx, proxy.key, proxy.pid)
            for s in (False, True)
            for c in (1, 16, 64)
        ]
        return {
            "version": version,
            "cells": cells,
            "ttft": ttft("litellm", proxy.url, ctx, proxy.key),
            "peak_rss_mib": round(procstat.peak_rss_mib(proxy.pid), 1),
        }
    finally:
        stop_process(proxy.proc)


# --- soak -------------------------------------------------------------------------------------


def run_soak(ctx: Ctx, seconds: int) -> dict[str, Any]:
    """Steady mixed load (non-stream c32 + stream c16) for `seconds`; RSS and fds every 5 s."""
    router = ctx.new_router("soak")
    router.start()
    samples: list[dict[str, float]] = []
    try:
        log(f"soak for {seconds} s against pid {router.pid}")
        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            jobs = [
                pool.submit(loadgen.run_load, router.url + CHAT, loadgen.chat_body(MODEL, s), router.key, c, seconds)
                for s, c in ((False, 32), (True, 16))
            ]
            while not all(j.done() for j in jobs):
                samples.append(
                    {
                        "t_s": round(time.monotonic() - started, 1),
                        "rss_mib": round(procstat.rss_mib(router.pid), 1),
                        "fds": procstat.open_fds(router.pid),
                    }
                )
                time.sleep(5)
            results = [j.result() for j in jobs]
        samples.append(
            {
                "t_s": round(time.monotonic() - started, 1),
                "rss_mib": round(procstat.rss_mib(router.pid), 1),
                "fds": procstat.open_fds(router.pid),
            }
        )
    finally:
        router.stop()
    return soak_summary(seconds, samples, results)


def soak_summary(seconds: int, samples: list[dict[str, float]], results: list[loadgen.LoadResult]) -> dict[str, Any]:
    """Flatness: every sample after the first 10 % (warm-up) within ±10 % of the post-warm-up median."""
    steady = [s for s in samples if s["t_s"] >= max(10.0, seconds * 0.1)] or samples
    rss = [s["rss_mib"] for s in steady]
    median = statistics.median(rss)
    deviation = max(abs(r - median) / median for r in rss) * 100
    fds = [s["fds"] for s in steady]
    summary = {
        "seconds": seconds,
        "requests": sum(r.requests for r in results),
        "errors": sum(r.errors for r in results),
        "rps_non_stream": round(results[0].rps, 1),
        "rps_stream": round(results[1].rps, 1),
        "rss_first_mib": samples[0]["rss_mib"],
        "rss_steady_median_mib": round(median, 1),
        "rss_steady_min_mib": min(rss),
        "rss_steady_max_mib": max(rss),
        "rss_max_deviation_pct": round(deviation, 1),
        "rss_flat": deviation <= 10.0,
        "fds_steady_first": fds[0],
        "fds_steady_last": fds[-1],
        "fds_max": max(s["fds"] for s in samples),
        "fd_growth": fds[-1] - fds[0],
        "samples": samples,
    }
    log(
        f"soak: RSS {min(rss)}-{max(rss)} MiB (±{deviation:.1f} %), fds {fds[0]} -> {fds[-1]}, "
        f"errors {summary['errors']}"
    )
    return summary


# --- analytics at scale -----------------------------------------------------------------------


def run_analytics(ctx: Ctx, rows: int) -> dict[str, Any]:
    router = ctx.new_router("analytics")
    router.start()  # creates the tables (and writes a real row to copy the formats from)
    loadgen.run_load(router.url + CHAT, loadgen.chat_body(MODEL, False), router.key, 1, 1)
    time.sleep(1.0)
    router.stop()
    db = router.data_dir / "analytics.db"
    log(f"inserting {rows:,} request-log rows into {db}")
    t0 = time.perf_counter()
    insert_rows(db, rows)
    section: dict[str, Any] = {"rows": rows, "insert_s": round(time.perf_counter() - t0, 1)}
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=24)).isoformat()
    section["sql"] = time_sql(db, since)
    router.start()
    try:
        section["graphql"] = time_graphql(router, since)
    except (GraphQLUnavailable, GraphQLError) as exc:
        section["skipped"] = f"GraphQL timings skipped: {exc}"
        log(section["skipped"])
    finally:
        router.stop()
    return section


def insert_rows(db: Path, rows: int, days: int = 30, batch: int = 100_000) -> None:
    """N rows spread over `days` (newest now), 100 users, 5 backends, 4 models, ~2 % errors."""
    conn = sqlite3.connect(db)
    sample = conn.execute("SELECT created_at FROM request_logs LIMIT 1").fetchone()
    columns = [c[1] for c in conn.execute("PRAGMA table_info(request_logs)")]
    now = time.time()
    span = days * 86400
    models = ["gpt-4o", "gpt-4o-mini", "llama-3-70b", MODEL]
    epoch_ms = 1_704_067_200_000
    conn.execute("PRAGMA synchronous=OFF")
    for start in range(0, rows, batch):
        values = []
        for i in range(start, min(rows, start + batch)):
            ts = now - span + span * i / rows
            created = dt.datetime.fromtimestamp(ts, dt.UTC)
            row = {
                "id": ((int(ts * 1000) - epoch_ms) << 22) | (i & 0x3FFFFF),
                "request_id": f"gen{i:010d}",
                "created_at": format_ts(created, sample[0] if sample else None),
                "user_id": i % 100 + 1000,
                "user_name": f"user{i % 100}",
                "backend_id": i % 5 + 1000,
                "backend_name": f"backend{i % 5}",
                "model": models[i % 4],
                "endpoint": CHAT,
                "status_code": 500 if i % 50 == 0 else 200,
                "stream": i % 3 == 0,
                "prompt_tokens": 100 + i % 400,
                "completion_tokens": 20 + i % 300,
                "total_tokens": 120 + i % 400 + i % 300,
                "latency_ms": 200.0 + i % 1000,
                "ttft_ms": 50.0 + i % 100,
                "attempts": 1,
                "error": "upstream HTTP 500" if i % 50 == 0 else None,
            }
            values.append(tuple(row.get(c) for c in columns))
        marks = ",".join("?" * len(columns))
        with conn:
            conn.executemany(f"INSERT INTO request_logs ({','.join(columns)}) VALUES ({marks})", values)
    with conn:  # the hourly and daily rollups `usage` reads, as the log writer would have kept them
        from router.usage import rollup_backfill_sql

        conn.execute("DELETE FROM usage_rollups")
        conn.execute("DELETE FROM usage_rollups_daily")
        for statement in rollup_backfill_sql(postgres=False):
            conn.execute(statement)
    conn.execute("ANALYZE")
    conn.close()


def format_ts(value: dt.datetime, sample: str | None) -> str:
    """A timestamp in the same text format as the router's own rows."""
    if sample and "T" in sample:
        return value.isoformat()
    return value.isoformat(sep=" ")


def timed(fn: Callable[[], Any], repeat: int = 5) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"first_ms": round(times[0], 1), "median_ms": round(statistics.median(times), 1)}


def time_sql(db: Path, since: str) -> dict[str, Any]:
    """The floor: what the two queries cost in SQLite itself (a newest-first page + count; GROUP BY user)."""
    conn = sqlite3.connect(db)
    page = timed(
        lambda: (
            conn.execute("SELECT * FROM request_logs ORDER BY id DESC LIMIT 51").fetchall(),
            conn.execute("SELECT COUNT(*) FROM request_logs").fetchone(),
        )
    )
    usage = timed(
        lambda: conn.execute(
            "SELECT user_id, user_name, COUNT(*), SUM(status_code >= 400), SUM(prompt_tokens), SUM(completion_tokens), "
            "SUM(total_tokens), AVG(latency_ms) FROM request_logs WHERE created_at >= ? GROUP BY user_id, user_name",
            (
                since.replace("T", " ")
                if " " in (conn.execute("SELECT created_at FROM request_logs LIMIT 1").fetchone()[0])
                else since,
            ),
        ).fetchall()
    )
    conn.close()
    log(f"SQL floor: requestLogs page {page['median_ms']} ms, usage by user 24 h {usage['median_ms']} ms")
    return {"request_logs_page": page, "usage_by_user_24h": usage}


def time_graphql(router: Router, since: str) -> dict[str, Any]:
    page_query = (
        "{ requestLogs(first: 50) { totalCount nextCursor items { id requestId createdAt userName "
        "model statusCode latencyMs totalTokens } } }"
    )
    usage_query = (
        "query($since: DateTime!) { usage(groupBy: [USER], filter: {since: $since}) "
        "{ userId userName requests errors totalTokens avgLatencyMs } }"
    )
    page = timed(lambda: router.graphql(page_query))
    usage = timed(lambda: router.graphql(usage_query, {"since": since}))
    log(f"GraphQL: requestLogs page {page['median_ms']} ms, usage by user 24 h {usage['median_ms']} ms")
    # What the answers held, so a fast empty answer is not mistaken for a fast query.
    logs = router.graphql(page_query)["requestLogs"]
    rows = router.graphql(usage_query, {"since": since})["usage"]
    checks = {
        "total_count": logs["totalCount"],
        "items": len(logs["items"]),
        "usage_rows": len(rows),
        "usage_requests": sum(r["requests"] for r in rows),
    }
    log(f"GraphQL answers: {checks}")
    return {"request_logs_page": page, "usage_by_user_24h": usage, "answers": checks}


# --- workers ----------------------------------------------------------------------------------


def run_workers(ctx: Ctx) -> dict[str, Any]:
    section: dict[str, Any] = {"sqlite": workers_ratio(ctx, "workers-sqlite", {})}
    pg = ctx.args.postgres_url or os.environ.get("TEST_POSTGRES_URL")
    if not pg:
        section["postgres"] = {"skipped": "PostgreSQL skipped: neither --postgres-url nor TEST_POSTGRES_URL is set"}
    else:
        section["postgres"] = workers_on_postgres(ctx, pg)
    return section


def workers_ratio(ctx: Ctx, name: str, env: dict[str, str]) -> dict[str, Any]:
    router = ctx.new_router(name) if not env else _router_with_env(ctx, name, env)
    rows = {}
    all_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    for workers, cpus in ((1, ctx.cpus.router), (2, all_cpus)):
        router.start(env, workers=workers, cpus=cpus)
        try:
            pids = procstat.children_of(router.pid)
            before = {p: procstat.cpu_seconds_self(p) for p in pids}
            rows[workers] = measure(f"workers={workers}", router.url + CHAT, False, 64, ctx, router.key, router.pid)
            # How the work spread over the processes (supervisor + workers), in % of one core.
            split = [100 * (procstat.cpu_seconds_self(p) - before[p]) / rows[workers]["duration_s"] for p in pids]
            rows[workers]["cpu_pct_per_process"] = [round(x, 1) for x in split]
            log(f"  CPU per process (supervisor, workers): {rows[workers]['cpu_pct_per_process']}")
        finally:
            router.stop()
    ratio = rows[2]["rps"] / rows[1]["rps"] if rows[1]["rps"] else 0.0
    log(f"{name}: --workers 2 / --workers 1 = {ratio:.2f}x")
    return {"workers_1": rows[1], "workers_2": rows[2], "ratio": round(ratio, 2)}


def _router_with_env(ctx: Ctx, name: str, env: dict[str, str]) -> Router:
    router = Router(
        ctx.work / name,
        Path(ctx.args.router_src).resolve(),
        ctx.cpus.router,
        {"mock": f"{ctx.fast.url}/v1", "slow": f"{ctx.slow.url}/v1"},
        [MODEL, SLOW_MODEL],
        extra_env=env,
    )
    router.prepare()
    return router


def workers_on_postgres(ctx: Ctx, server_url: str) -> dict[str, Any]:
    import asyncpg

    name = f"llmrouter_bench_{int(time.time())}"
    urls = {
        "CORE_DB_URL": f"{server_url.rsplit('/', 1)[0]}/{name}_core",
        "ANALYTICS_DB_URL": f"{server_url.rsplit('/', 1)[0]}/{name}_analytics",
    }

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        for url in urls.values():
            asyncio.run(admin(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"'))
    except Exception as exc:
        return {"skipped": f"PostgreSQL skipped: cannot create a database on {server_url}: {exc}"}
    try:
        return workers_ratio(ctx, "workers-postgres", urls)
    finally:
        for url in urls.values():
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))


# --- profile ----------------------------------------------------------------------------------


def run_profile(ctx: Ctx, seconds: int) -> dict[str, Any]:
    """py-spy the router under c64 load: non-stream, stream, and non-stream with a no-op script (if possible)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    router = ctx.new_router("profile")
    router.start(ctx.router_env)
    section: dict[str, Any] = {"seconds": seconds}
    try:
        for name, stream in (("nonstream", False), ("stream", True)):
            section[name] = profile_once(ctx, router, py_spy, name, stream, seconds)
        try:
            script_id = create_noop_script(router)
        except (GraphQLUnavailable, GraphQLError) as exc:
            section["script_skipped"] = f"no-op script profile skipped: {exc}"
        else:
            time.sleep(1.0)
            section["nonstream_script"] = profile_once(ctx, router, py_spy, "nonstream-script", False, seconds)
            router.graphql("mutation($id: ID!) { deleteScript(id: $id) }", {"id": script_id})
    finally:
        router.stop()
    return section


def profile_once(ctx: Ctx, router: Router, py_spy: str, name: str, stream: bool, seconds: int) -> dict[str, Any]:
    import profile_summary

    out = RESULTS / f"profile-{name}.txt"
    body = loadgen.chat_body(MODEL, stream)
    wait_quiet(ctx)
    loadgen.run_load(router.url + CHAT, body, router.key, 64, 1)
    load = threading.Thread(target=loadgen.run_load, args=(router.url + CHAT, body, router.key, 64, seconds + 2))
    load.start()
    time.sleep(1)
    subprocess.run(
        [
            py_spy,
            "record",
            "--nonblocking",
            "-r",
            "250",
            "-d",
            str(seconds),
            "-f",
            "raw",
            "-o",
            str(out),
            "--subprocesses",  # granian serves from a worker process
            "--pid",
            str(router.pid),
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    load.join()
    summary = profile_summary.summarize(out, top=40)
    log(f"profile {name}: {summary['samples']} samples -> {out.name}")
    return summary


# --- main -------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    versions = {}
    for pkg in ("starlette", "uvicorn", "uvloop", "httptools", "aiohttp", "httpx", "orjson", "tortoise-orm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "-"
    wrk = (
        subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
        if (loadgen.WRK)
        else "absent: Python (aiohttp) load generator used"
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": versions,
        "load_generator": wrk,
        "git": git_state(),
    }


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "router")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted router/ changes in the tree" if dirty else "")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3-second cells")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per cell (default 10)")
    p.add_argument("--no-matrix", action="store_true", help="skip the main matrix (run only the extra modes)")
    p.add_argument("--vs-litellm", action="store_true", help="also measure LiteLLM's proxy (own venv)")
    p.add_argument("--litellm-venv", default=str(Path(tempfile.gettempdir()) / "llm-router-bench-litellm"))
    p.add_argument("--soak", type=int, metavar="SECONDS", help="steady load for N seconds, RSS/fds sampled")
    p.add_argument("--analytics", type=int, metavar="ROWS", help="time GraphQL analytics over N generated rows")
    p.add_argument("--workers-compare", action="store_true", help="--workers 2 vs 1 throughput")
    p.add_argument("--postgres-url", help="server URL for the PostgreSQL workers comparison")
    p.add_argument("--profile", type=int, metavar="SECONDS", help="py-spy the router under c64 load")
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=20.0,
        help="before a cell, wait until other processes use less than this %% of a core (default 20)",
    )
    p.add_argument("--quiet-wait", type=int, default=30, help="wait at most this many seconds for quiet")
    p.add_argument("--retries", type=int, default=1, help="re-runs of a cell disturbed by other processes")
    p.add_argument("--router-src", default=str(REPO), help="run the router from this checkout (a scratch worktree)")
    p.add_argument("--router-env", action="append", default=[], metavar="K=V", help="extra router environment")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SRC[,K=V...]",
        help="A/B mode: router variants measured in alternation (repeat the flag)",
    )
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds")
    p.add_argument("--floor", action="store_true", help="A/B: measure the floor apps in the same rounds")
    p.add_argument("--floors", default="", help="with --floor: only these, e.g. granian+h1,granian+pyreqwest")
    p.add_argument(
        "--ab-cells", default="ns:64,st:64,ns:16,ns:1", help="A/B cells: ns|st:concurrency,... and ttft:N (N streams)"
    )
    p.add_argument("--lite", action="store_true", help="router-only cells (ns c1/c64, stream c64) for A/B runs")
    p.add_argument("--protocols", action="store_true", help="chat vs Responses vs Messages streams, c64 (issue 12)")
    p.add_argument(
        "--subscribers",
        action="store_true",
        help="non-stream c64 with and without 100 usageTicks + 10 capped requestLogged subscribers (issue 17)",
    )
    p.add_argument("--output", default=str(RESULTS / "latest.json"))
    p.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop what we started
    cpus = Cpus.detect()
    if cpus.load:
        os.sched_setaffinity(0, cpus.load)  # this process and everything it starts without taskset
    else:
        log("fewer than 2 CPUs or no taskset: nothing is pinned; numbers mix router and load generator")
    if not loadgen.WRK:
        log("wrk is not installed: using the Python (aiohttp) load generator, which saturates first")
    RESULTS.mkdir(exist_ok=True)
    output = Path(args.output)
    results: dict[str, Any] = json.loads(output.read_text()) if output.exists() else {}
    results["machine"] = machine_info()
    results["machine"]["pinning"] = (
        f"router on CPU {cpus.router}; load generator and mock on CPU {cpus.load_str}" if cpus.load else "none"
    )
    if args.router_src != str(REPO):
        results["machine"]["router_src"] = args.router_src
    with tempfile.TemporaryDirectory(prefix="llm-router-bench-") as tmp:
        fast = start_mock(cpus.load_str)
        slow = start_mock(cpus.load_str, SLOW_MODEL, chunk_delay_ms=10)
        ctx = Ctx(args, cpus, Path(tmp), fast, slow)
        try:
            sections: dict[str, Callable[[], dict[str, Any]]] = {}
            if args.variant:
                sections["ab"] = lambda: run_ab(ctx)
            elif args.lite:
                sections["lite"] = lambda: run_lite(ctx)
            elif args.protocols:
                sections["protocols"] = lambda: run_protocols(ctx)
            elif args.subscribers:
                sections["subscribers"] = lambda: run_subscribers(ctx)
            elif not args.no_matrix:
                sections["matrix"] = lambda: run_matrix(ctx)
            if args.vs_litellm:
                sections["litellm"] = lambda: run_litellm(ctx)
            if args.soak:
                sections["soak"] = lambda: run_soak(ctx, args.soak)
            if args.analytics:
                sections["analytics"] = lambda: run_analytics(ctx, args.analytics)
            if args.workers_compare:
                sections["workers"] = lambda: run_workers(ctx)
            if args.profile:
                sections["profile"] = lambda: run_profile(ctx, args.profile)
            for name, run in sections.items():
                section = run()
                if "skipped" in section and results.get(name) and "skipped" not in results[name]:
                    log(f"{name}: {section['skipped']}; the earlier measurement stays in {output.name}")
                    continue
                results[name] = {"measured_at": results["machine"]["date"], "duration_s": ctx.duration, **section}
                output.write_text(json.dumps(results, indent=2))
        finally:
            stop_process(fast.proc)
            stop_process(slow.proc)
    output.write_text(json.dumps(results, indent=2))
    log(f"results: {output}")
    if not args.no_readme:
        report.update_readme(HERE / "README.md", results)
        log("README: benchmarks/README.md")


if __name__ == "__main__":
    main()
