"""The router's own CPU per request: its app called in-process, without an HTTP server in front.

The matrix (run.py) measures the router behind granian, so the server's share and the noise of a
shared machine sit in every number. This drives the real app (`create_app`, lifespan, a user and
its key made by the CLI, request logging on, the h1 client to the benchmarks' mock on the other CPU)
by calling it as an ASGI server would, `concurrency` requests at a time, and reports the process's
CPU time (all threads: the event loop and the log writer's) per request. The mock runs in another
process, so its CPU is not counted. What is left is the router's own code plus its upstream client:
the part the floor app (floor_app.py) does not have, plus the client both share.

    .venv/bin/python benchmarks/own_cost.py [--requests 20000] [--rounds 5] [--stream] [--profile out.prof]
    .venv/bin/python benchmarks/own_cost.py --router-src /tmp/wt      # another checkout's router
    .venv/bin/python benchmarks/own_cost.py 2>/dev/null               # the per-request log lines to /dev/null
    .venv/bin/python benchmarks/own_cost.py --floor [--stream]        # the floor app (floor_app.py, h1) the same way
    .venv/bin/python benchmarks/own_cost.py --stream --chunk-delay-ms 0.2   # a stream's events in reads of their own
    .venv/bin/python benchmarks/own_cost.py --without writer,access-line  # what those parts cost (the difference)

Rounds alternate nothing: run two checkouts one after the other, twice, to compare.
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
from typing import Any

HERE = Path(__file__).resolve().parent


async def drive(app: Any, key: str, requests: int, concurrency: int, stream: bool) -> None:
    """`requests` POSTs to /v1/chat/completions, `concurrency` at a time, each read to its end."""
    body = b'{"model":"bench-model","messages":[{"role":"user","content":"hi"}]%s}' % (
        b',"stream":true' if stream else b""
    )
    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    left = requests

    async def one() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        sent = [False]

        def receive() -> asyncio.Future[dict[str, Any]]:
            """Like granian's: a future, no coroutine; the disconnect comes when the response is over."""
            if sent[0]:
                return done
            sent[0] = True
            first: asyncio.Future[dict[str, Any]] = loop.create_future()
            first.set_result({"type": "http.request", "body": body, "more_body": False})
            return first

        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False) and not done.done():
                done.set_result({"type": "http.disconnect"})

        await app(scope, receive, send)
        if status != 200:
            raise RuntimeError(f"status {status}")

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# What `--without` switches off, each by replacing one method with one that does nothing: the
# difference to a run with everything on is what that part costs per request (its deferred work too:
# the writer's rows in SQLite, on its thread).
WITHOUT = {
    "accounting": "everything Runtime.finish does after RequestRecord.finish (the parts below, limits, prices)",
    "writer": "the request-log row (LogWriter.submit: the batch INSERTs, rollups and their thread)",
    "access-line": "the per-request log line (the router.requests logger set to WARNING)",
    "metrics": "Prometheus counters (Metrics.observe)",
    "ticker": "live usage ticks (UsageTicker.add)",
}


def switch_off(parts: set[str]) -> None:
    """Replace what `parts` name (keys of WITHOUT) with nothing, before the app is made."""
    import logging

    from router import live, metrics, runtime, usage

    def nothing(*args: Any) -> None:
        return None

    if unknown := parts - WITHOUT.keys():
        raise SystemExit(f"--without: unknown {', '.join(sorted(unknown))} (known: {', '.join(WITHOUT)})")
    if "accounting" in parts:
        runtime.Runtime.finish = lambda self, record, status, error=None: record.finish(status, error)  # type: ignore[method-assign]
    if "writer" in parts:
        usage.LogWriter.submit = nothing  # type: ignore[method-assign]
    if "access-line" in parts:
        runtime.log.setLevel(logging.WARNING)
    if "metrics" in parts:
        metrics.Metrics.observe = nothing  # type: ignore[method-assign]
    if "ticker" in parts:
        live.UsageTicker.add = nothing  # type: ignore[method-assign]


async def measure(args: argparse.Namespace, key: str, settings: Any, mock_url: str) -> list[float]:
    from asgi_lifespan import LifespanManager

    app: Any
    if args.floor:  # the bare forward-and-relay app on the router's client (h1): what the router adds is the rest
        import floor_app

        os.environ.update(FLOOR_UPSTREAM=mock_url, FLOOR_CLIENT="h1")
        app = floor_app.create()
    else:
        from router.app import create_app

        switch_off(set(filter(None, args.without.split(","))))
        app = create_app(settings)
        if args.watch_after_s is not None:  # RequestLimits -> V1FastPath's LateWatches
            app.watches.after_s = args.watch_after_s
    per_request: list[float] = []
    async with LifespanManager(app):
        deadline = time.monotonic() + 30
        while True:  # the router lists the mock's models after its first poll
            try:
                await drive(app, key, 1, 1, args.stream)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await drive(app, key, 500, args.concurrency, args.stream)  # warm-up: pool, caches, JIT-less warmth
        for _ in range(args.rounds):
            cpu0 = time.process_time()
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
                await drive(app, key, args.requests, args.concurrency, args.stream)
                profiler.disable()
                profiler.dump_stats(args.profile)
            else:
                await drive(app, key, args.requests, args.concurrency, args.stream)
            per_request.append((time.process_time() - cpu0) / args.requests * 1e6)
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--profile", help="cProfile the last round into this file")
    parser.add_argument("--router-src", help="run another checkout's router")
    parser.add_argument("--cpu", type=int, default=0, help="pin this process to this CPU (the mock gets the other)")
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="the mock sends a stream's chunks this far apart (each arrives in a read of its own, as real streams do)",
    )
    parser.add_argument(
        "--watch-after-s",
        type=float,
        help="start a request's disconnect watch after this long (the router's: client_watch.WATCH_AFTER_S)",
    )
    parser.add_argument("--floor", action="store_true", help="drive benchmarks/floor_app.py (h1) instead of the router")
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="the router's LOG_LEVEL (INFO, the default, writes its one line per request, as served; to stderr)",
    )
    parser.add_argument(
        "--without",
        default="",
        help="switch these parts off, comma-separated: " + "; ".join(f"{k}: {v}" for k, v in WITHOUT.items()),
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.router_src).resolve() if args.router_src else HERE.parent))
    sys.path.insert(1, str(HERE))
    import services
    import uvloop

    from router.config import load_settings

    cpus = os.cpu_count() or 1
    if hasattr(os, "sched_setaffinity") and cpus > 1:
        os.sched_setaffinity(0, {args.cpu})
    mock_cpu = str((args.cpu + 1) % cpus) if cpus > 1 else None
    mock = services.start_mock(mock_cpu, chunk_delay_ms=args.chunk_delay_ms)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(args.router_src).resolve() if args.router_src else services.REPO
            router = services.Router(Path(tmp), src, None, {"mock": f"{mock.url}/v1"}, [services.MODEL])
            router.prepare()
            env = router.env()
            config = str(Path(tmp) / "config.yaml")
            from router.cli import start_up

            settings = load_settings({**env, "CONFIG_FILE": config, "LOG_LEVEL": args.log_level}, dotenv=False)
            from router.logging_setup import setup_logging

            setup_logging(settings)  # as `serve` does: the access line per request, the handler that batches it
            settings = start_up(settings.with_overrides(config_file=config), prune=False, environ=env)
            results = uvloop.run(measure(args, router.key, settings, mock.url))
    finally:
        services.stop_process(mock.proc)
    kind = ("floor " if args.floor else "") + ("stream" if args.stream else "non-stream")
    rounds = ", ".join(f"{r:.1f}" for r in results)
    print(f"{kind} c{args.concurrency}: {statistics.median(results):.1f} µs CPU per request (median; rounds {rounds})")


if __name__ == "__main__":
    main()
