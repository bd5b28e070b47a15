"""Load generators: wrk (with a Lua script for POST + headers) when installed, else an aiohttp one.

Both return a `LoadResult`. The Python generator is itself CPU-bound at a few thousand req/s on
one core, so with it the high-concurrency cells measure the generator as much as the router;
the report says which tool produced each number.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WRK = shutil.which("wrk")

_LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON %d %d %d %d %d %d %d %.0f %.0f %.0f %.0f %.2f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    tool: str
    concurrency: int
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    error_detail: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": round(self.rps, 1)}


def chat_body(model: str, stream: bool) -> bytes:
    stream_part = ',"stream":true' if stream else ""
    return (
        b'{"model":"' + model.encode() + b'","messages":[{"role":"user","content":"Say hello in one short '
        b'sentence, please."}],"max_tokens":32' + stream_part.encode() + b"}"
    )


def responses_body(model: str) -> bytes:
    """A streamed Responses API request with the same prompt as `chat_body`."""
    return (
        b'{"model":"' + model.encode() + b'","input":"Say hello in one short sentence, please.",'
        b'"max_output_tokens":32,"stream":true}'
    )


def messages_body(model: str) -> bytes:
    """A streamed Anthropic Messages request with the same prompt as `chat_body`."""
    return (
        b'{"model":"' + model.encode() + b'","messages":[{"role":"user","content":"Say hello in one short '
        b'sentence, please."}],"max_tokens":32,"stream":true}'
    )


def run_load(url: str, body: bytes, key: str | None, concurrency: int, duration_s: float) -> LoadResult:
    if WRK:
        return run_wrk(url, body, key, concurrency, duration_s)
    return asyncio.run(python_load(url, body, key, concurrency, duration_s))


# --- wrk --------------------------------------------------------------------------------------


def run_wrk(url: str, body: bytes, key: str | None, concurrency: int, duration_s: float) -> LoadResult:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    script = _LUA.format(body=body.decode(), auth=auth)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        args = [WRK or "wrk", "-t1", f"-c{concurrency}", f"-d{duration_s:.0f}s", "--timeout", "10s", "-s", f.name, url]
        out = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + 60).stdout
    finally:
        Path(f.name).unlink(missing_ok=True)
    match = re.search(r"WRKJSON (.*)", out)
    if not match:
        raise RuntimeError(f"wrk gave no summary:\n{out}")
    n, dur_us, connect, read, write, status, timeout, p50, p90, p99, mx, _mean = (
        float(x) for x in match.group(1).split()
    )
    detail = {"connect": int(connect), "read": int(read), "write": int(write), "status": int(status)}
    detail["timeout"] = int(timeout)
    return LoadResult(
        "wrk",
        concurrency,
        int(n),
        dur_us / 1e6,
        sum(detail.values()),
        p50 / 1e3,
        p90 / 1e3,
        p99 / 1e3,
        mx / 1e3,
        {k: v for k, v in detail.items() if v},
    )


# --- the Python fallback ----------------------------------------------------------------------


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


async def python_load(url: str, body: bytes, key: str | None, concurrency: int, duration_s: float) -> LoadResult:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status >= 400:
                            errors["status"] = errors.get("status", 0) + 1
                            continue
                except (aiohttp.ClientError, TimeoutError):
                    errors["connect"] = errors.get("connect", 0) + 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(
        "python-aiohttp",
        concurrency,
        len(latencies),
        elapsed,
        sum(errors.values()),
        _percentile(latencies, 50),
        _percentile(latencies, 90),
        _percentile(latencies, 99),
        max(latencies or [0.0]),
        errors,
    )


# --- time to first token ----------------------------------------------------------------------


async def time_to_first_token(url: str, body: bytes, key: str | None, n: int) -> dict[str, float]:
    """Sequential streamed requests: ms until the first `data:` event arrives (p50/p90, mean)."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    firsts: list[float] = []
    errors = 0
    async with aiohttp.ClientSession() as session:
        for i in range(n + 5):
            t0 = time.perf_counter()
            first = None
            async with session.post(url, data=body, headers=headers) as resp:
                async for chunk in resp.content.iter_any():
                    if first is None and b"data:" in chunk:
                        first = (time.perf_counter() - t0) * 1000
                if resp.status != 200 or first is None:
                    errors += 1
                    continue
            if i >= 5:  # the first few warm up connections on both sides
                firsts.append(first)
    return {
        "n": len(firsts),
        "errors": errors,
        "p10_ms": round(_percentile(firsts, 10), 3),
        "p50_ms": round(_percentile(firsts, 50), 3),
        "p90_ms": round(_percentile(firsts, 90), 3),
        "mean_ms": round(statistics.fmean(firsts), 3) if firsts else 0.0,
    }
