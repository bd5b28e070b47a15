"""The floor with the essentials: what any router with auth and request logging must do besides
forwarding, written as lean as Python allows, on the router's own client (h1).

Per request: find the bearer key and hash it, look its user up in a dict, parse the JSON body for
its model and stream flag, look the route up in a dict, send the body upstream with the backend's
key and a request id, read the usage from the answer (a stream's: from the event that carries it),
count it, log an access line, and queue a request-log row that a thread writes to SQLite in
batches (the router's table, with its indexes). Nothing else: no scripts, limits, prices, live
usage, rollups, failover or error shapes. `floor_app.py` serves it when `FLOOR_ESSENTIALS=1`.
It answers "how close to the bare floor could a router get at all", not "what the router should
do": the router does all that this leaves out.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from router.upstream_h1 import H1Upstream

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_COLUMNS = (
    "request_id, created_at, user_id, user_name, backend_id, backend_name, model, endpoint, status_code, stream,"
    " prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,"
    " latency_ms, attempts"
)
_SCHEMA = f"""
CREATE TABLE request_logs (id INTEGER PRIMARY KEY, {_COLUMNS.replace(",", " ,")}, response_id, ttft_ms, error,
  translated_to, cost_usd, attempt_errors);
CREATE INDEX r1 ON request_logs (request_id);
CREATE INDEX r2 ON request_logs (created_at);
CREATE INDEX r3 ON request_logs (response_id);
CREATE INDEX r4 ON request_logs (user_id, created_at);
CREATE INDEX r5 ON request_logs (backend_id, created_at);
"""
_INSERT = f"INSERT INTO request_logs ({_COLUMNS}) VALUES ({', '.join('?' * 18)})"


class _Rows:
    """Rows queued on the event loop, written by a thread in batches (as the router's LogWriter does)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, ...]] = []
        self.db = sqlite3.connect(Path(tempfile.mkdtemp()) / "lean.db", check_same_thread=False)
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
        self.task: asyncio.Task[None] | None = None

    def add(self, row: tuple[Any, ...]) -> None:
        self.pending.append(row)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.5)
            rows, self.pending = self.pending, []
            if rows:
                await loop.run_in_executor(None, self._write, rows)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        with self.db:
            self.db.executemany(_INSERT, rows)


class _Lines:
    """Access lines written once per event-loop turn, as the router's TurnBufferedHandler does."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def add(self, line: str) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO {line}\n")

    def flush(self) -> None:
        sys.stderr.write("".join(self.pending))
        sys.stderr.flush()
        self.pending.clear()


def create(upstream: str) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    client = H1Upstream(10.0, 60.0)
    users: dict[str, tuple[int, str]] = {}  # key hash -> (id, name); the first key seen is the user's
    routes = {(1, "bench-model"): (1, "mock", upstream + "/v1/chat/completions", "Bearer upstream-key")}
    rows = _Rows()
    counts: dict[tuple[int, str, int], int] = {}
    lines = _Lines()
    with_rows, with_access = os.environ.get("LEAN_ROWS", "1") == "1", os.environ.get("LEAN_ACCESS", "1") == "1"
    prefix, counter = "lean", itertools.count()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        key = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                key = value
                break
        digest = hashlib.sha256(key.removeprefix(b"Bearer ")).hexdigest()
        user_id, user_name = users.get(digest) or users.setdefault(digest, (1, "bench"))
        message = await receive()
        body = message.get("body", b"")
        payload = orjson.loads(body)
        model, stream = payload["model"], payload.get("stream") is True
        backend_id, backend_name, url, authorization = routes[(user_id, model)]
        request_id = f"{prefix}{next(counter):016x}"
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "X-Request-ID": request_id,
            "Authorization": authorization,
        }
        upstream_response = await client.send("POST", url, headers, body, stream)
        status, usage = upstream_response.status, None
        answer_head = [
            (b"content-type", upstream_response.headers.get("content-type", "").encode()),
            (b"x-request-id", request_id.encode()),
        ]
        if not stream:
            data = await upstream_response.read()
            usage = orjson.loads(data).get("usage")
            answer_head.append((b"content-length", b"%d" % len(data)))
            await send({"type": "http.response.start", "status": status, "headers": answer_head})
            await send({"type": "http.response.body", "body": data})
        else:
            await send({"type": "http.response.start", "status": status, "headers": answer_head})
            async for chunk in upstream_response.iter_chunks():
                if b'"usage":{' in chunk:
                    for event in chunk.split(b"\n\n"):
                        if b'"usage":{' in event:
                            usage = orjson.loads(event.removeprefix(b"data: ")).get("usage")
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        usage = usage or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        latency_ms = (time.perf_counter() - started) * 1000
        counted = (user_id, model, status)
        counts[counted] = counts.get(counted, 0) + 1
        if with_access:
            lines.add(f"{request_id} {user_name} {model} {status} {latency_ms:.1f}ms {prompt}+{completion}")
        if with_rows:
            rows.add(
                (
                    request_id,
                    time.time(),
                    user_id,
                    user_name,
                    backend_id,
                    backend_name,
                    model,
                    scope["path"],
                    status,
                    stream,
                    prompt,
                    completion,
                    prompt + completion,
                    0,
                    0,
                    0,
                    latency_ms,
                    1,
                )
            )

    return app
