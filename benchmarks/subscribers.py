"""Subscriber load for the live-usage cell (issue 17): dashboards holding GraphQL subscriptions open.

`SubscriberLoad(url, token, ticks=100, logs=10, max_per_second=5)` opens `ticks` WebSocket
connections each subscribed to `usageTicks` (1 s interval, the live charts' worst case) and `logs`
connections each on `requestLogged(maxPerSecond: …)`, over graphql-transport-ws, in a thread of
this process (which runs on the load generator's CPU). It reads every message, answers pings and
counts what arrived, so the router pays for real deliveries to readers that keep up.

    with SubscriberLoad("http://127.0.0.1:8080", "admin-password") as load:
        ...  # run the HTTP load
    print(load.counts)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

TICKS = (
    "subscription { usageTicks(intervalS: 1) { at skipped rows { requests errors totalTokens costUsd avgLatencyMs "
    "p50LatencyMs p95LatencyMs } } }"
)
LOGS = (
    "subscription($n: Int) { requestLogged(maxPerSecond: $n) { id requestId createdAt userName model statusCode "
    "totalTokens latencyMs skippedBefore } }"
)


@dataclass
class Counts:
    tick_messages: int = 0
    tick_skipped: int = 0
    log_messages: int = 0
    log_skipped_before: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self, seconds: float) -> dict[str, Any]:
        return {
            "tick_messages": self.tick_messages,
            "tick_messages_per_s": round(self.tick_messages / seconds, 1) if seconds else None,
            "tick_skipped": self.tick_skipped,
            "log_messages": self.log_messages,
            "log_messages_per_s": round(self.log_messages / seconds, 1) if seconds else None,
            "log_skipped_before": self.log_skipped_before,
            "errors": self.errors[:5],
        }


class _Clients:
    """The subscriptions themselves (run in the child process)."""

    def __init__(self, url: str, token: str, ticks: int = 100, logs: int = 10, max_per_second: int = 5) -> None:
        self.ws_url = url.replace("http://", "ws://", 1).rstrip("/") + "/graphql"
        self.token = token
        self.ticks, self.logs, self.max_per_second = ticks, logs, max_per_second
        self.counts = Counts()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    async def _one(self, kind: str, opened: list[int]) -> None:
        assert self._stop is not None
        try:
            async with connect(self.ws_url, subprotocols=["graphql-transport-ws"], max_size=None) as ws:  # type: ignore[list-item]
                await ws.send(
                    json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {self.token}"}})
                )
                ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if ack.get("type") != "connection_ack":
                    raise RuntimeError(f"not acknowledged: {ack}")
                query, variables = (TICKS, {}) if kind == "ticks" else (LOGS, {"n": self.max_per_second})
                await ws.send(
                    json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}})
                )
                opened[0] += 1
                if opened[0] == self.ticks + self.logs:
                    self._ready.set()
                reader = asyncio.ensure_future(self._read(ws, kind))
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in (reader, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        except Exception as exc:  # reported, not raised: the cell says how many subscribers failed
            self.counts.errors.append(f"{kind}: {exc!r}")
            self._ready.set()

    async def _read(self, ws: ClientConnection, kind: str) -> None:
        async for raw in ws:
            counts = self.counts  # replaced by reset()
            message = json.loads(raw)
            kind_of = message.get("type")
            if kind_of == "ping":
                await ws.send('{"type":"pong"}')
            elif kind_of == "next":
                data = (message.get("payload") or {}).get("data") or {}
                if kind == "ticks":
                    counts.tick_messages += 1
                    counts.tick_skipped += data.get("usageTicks", {}).get("skipped", 0)
                else:
                    counts.log_messages += 1
                    counts.log_skipped_before += data.get("requestLogged", {}).get("skippedBefore", 0)
            elif kind_of in ("error", "complete"):
                counts.errors.append(f"{kind}: {str(message)[:200]}")
                return

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        opened = [0]
        kinds = ["ticks"] * self.ticks + ["logs"] * self.logs
        await asyncio.gather(*(self._one(kind, opened) for kind in kinds))

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()


def _child(args: argparse.Namespace) -> None:
    clients = _Clients(args.url, args.token, args.ticks, args.logs, args.max_per_second)
    thread = threading.Thread(target=clients._run, daemon=True)
    thread.start()
    ready = clients._ready.wait(60)
    print("ready" if ready and not clients.counts.errors else f"failed {clients.counts.errors[:3]}", flush=True)
    clients.counts = Counts()
    started = time.monotonic()
    sys.stdin.read()  # until the parent closes it
    seconds = time.monotonic() - started
    counts = clients.counts
    if clients._loop is not None and clients._stop is not None:
        clients._loop.call_soon_threadsafe(clients._stop.set)
    thread.join(10)
    print(json.dumps({**asdict(counts), "seconds": seconds}), flush=True)


class SubscriberLoad:
    """The child process, from the benchmark's side: `start()` returns once every subscription is open."""

    def __init__(self, url: str, token: str, ticks: int = 100, logs: int = 10, max_per_second: int = 5) -> None:
        self.cmd = [sys.executable, str(Path(__file__).resolve()), url, token]
        self.cmd += ["--ticks", str(ticks), "--logs", str(logs), "--max-per-second", str(max_per_second)]
        self.proc: subprocess.Popen[str] | None = None
        self.counts = Counts()
        self.seconds = 0.0

    def start(self, timeout: float = 60.0) -> SubscriberLoad:
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"subscribers did not all connect: {line or 'no answer'}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        out, _ = self.proc.communicate(timeout=30)  # closes stdin: the child reports and exits
        self.proc = None
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            report = json.loads(lines[-1])
            self.seconds = report.pop("seconds")
            self.counts = Counts(**report)

    def __enter__(self) -> SubscriberLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--logs", type=int, default=10)
    parser.add_argument("--max-per-second", type=int, default=5)
    _child(parser.parse_args())
