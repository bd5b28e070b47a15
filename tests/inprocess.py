"""The real app in the test process, no subprocess: for everything that does not need a real process.

- `in_process`: httpx's ASGI transport plus the app's lifespan (no socket at all), for async tests.
- `RouterThread`: the app under uvicorn on a loopback port, from a thread; what `router_factory`
  gives by default (SDKs, WebSockets, streams and client disconnects need a real socket).

Subprocesses (`RouterProcess`) remain for signals, `--workers`, what a `serve` process does before
its Python code runs or after it exits, granian, real CLI clients and fan-out across processes
(Redis/PostgreSQL). `RouterThread` runs `serve`'s start-up (`router.cli.start_up`) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import uvicorn
import uvloop
from asgi_lifespan import LifespanManager

from router.app import create_app
from router.cli import build_parser, serve_settings, start_up, warn_if_accounts_off
from router.config import Settings, load_config_file, load_settings
from router.logging_setup import JsonFormatter, TextFormatter
from router.models.core import User
from router.server_limits import limited_httptools_protocol
from tests.conftest import (
    ADMIN_PASSWORD,
    RouterProcess,
    in_process_dialect,
    process_dialect,
    seed_databases,
    skip_unless_process_dialect,
    write_config,
)

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class InProcessRouter:
    client: httpx.AsyncClient
    app: Any
    api_key: str

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def chat(self, model: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        body = {"model": model, "messages": MESSAGES, **kwargs}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def gql(self, query: str, variables: dict | None = None) -> dict:
        response = await self.client.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {ADMIN_PASSWORD}"},
        )
        return response.json()


@contextlib.asynccontextmanager
async def in_process(
    data_dir: Path, servers: dict[str, dict] | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[InProcessRouter]:
    """The app with its lifespan, config.yaml `servers` synced and a user allowed everything.

    On SQLite in `data_dir`: skipped in the `TEST_DB=postgres` run, which it would only repeat.
    """
    skip_unless_process_dialect("sqlite")
    environ = {
        "DATA_DIR": str(data_dir),
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CATALOG_POLL_INTERVAL_S": "0.5",
        "LOG_FLUSH_INTERVAL_S": "0.05",
        **(env or {}),
    }
    settings = load_settings(environ, dotenv=False)
    seed_databases(environ)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        admin = app.state.admin
        if servers:
            specs = load_config_file(str(write_config(data_dir / "config.yaml", servers)), environ)
            await admin.sync_backends(specs)
            await app.state.runtime.models.refresh_all()
        existing = await User.get_or_none(name="alice")
        if existing is None:
            _, key = await admin.create_user("alice", all_backends=True)
        else:
            _, key = await admin.regenerate_key(existing.id)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router.test", timeout=30) as client:
            yield InProcessRouter(client, app, key)


# --- the app under a real server in a thread of the test process ------------------------------


class RouterThread(RouterProcess):
    """The app served by uvicorn on a loopback port from a thread of the test process.

    A drop-in for `RouterProcess` (same URL, CLI, log file and database helpers) without a Python
    start-up per router: for tests that need a real socket (SDKs, WebSockets, streams, client
    disconnects) but nothing of a process (signals, `--workers`, granian, a real `serve` command line).
    Before the app starts it runs `serve`'s own start-up (`router.cli.start_up`: session secret,
    config sync; `warn_if_accounts_off`), so its log says what serve's would. One at a time per process: Tortoise
    keeps one global connection context.
    """

    active: ClassVar[RouterThread | None] = None

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, config: Path | None = None) -> None:
        super().__init__(data_dir, env, config)
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._failure: BaseException | None = None
        self._handler: logging.Handler | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def app(self) -> Any:
        """The running app (its `state.runtime` included); None when stopped."""
        return self._server.config.app if self._server is not None else None

    def start(self, timeout: float = 30.0, extra_args: list[str] | None = None) -> RouterThread:
        """`serve` as its command line says (`--host 127.0.0.1` unless `bind_loopback` is off, `--config`,
        `extra_args` such as `--prune`): its own flags, settings and start-up (`router.cli.start_up`: the
        session secret, config sync), then the app under uvicorn in a thread."""
        argv = ["serve", "--port", str(self.port)]
        if self.bind_loopback:
            argv += ["--host", "127.0.0.1"]
        if self.config:
            argv += ["--config", str(self.config)]
        args = build_parser().parse_args([*argv, *(extra_args or [])])
        if args.workers not in (None, 1):
            raise ValueError("--workers needs a real process: router_factory(process=True)")
        if RouterThread.active is not None:
            raise RuntimeError("another in-process router is running: start this one with process=True")
        if not in_process_dialect(self.env):
            raise RuntimeError(f"its databases are not {process_dialect()} (one SQL dialect per test process)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.seed_databases:
            seed_databases(self.env)
        settings = serve_settings(load_settings(self.env, dotenv=False), args).with_overrides(server="uvicorn")
        self._capture_logs(settings)
        RouterThread.active = self
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, args=(settings, args.prune), name=f"router-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self._server is not None and self._server.started):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"router did not start ({self._failure!r}):\n{self.log()}")
            time.sleep(0.01)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop as a SIGTERM would (graceful shutdown, the lifespan's end); 0 when it went well."""
        if self._thread is None:
            return 0
        if self._server is not None:
            self._server.exit_now()
        self._thread.join(timeout)
        stuck = self._thread.is_alive()
        self._thread = self._server = None
        if RouterThread.active is self and not stuck:
            RouterThread.active = None
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if stuck:
            raise RuntimeError(f"the in-process router did not stop within {timeout}s:\n{self.log()}")
        return 1 if self._failure else 0

    def _capture_logs(self, settings: Settings) -> None:
        """The router's log records (not the test upstreams') into `log_path`, formatted as `serve` does."""
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
        handler.setLevel(settings.log_level.upper())
        handler.addFilter(self._is_the_routers)
        root = logging.getLogger()
        root.setLevel(min(root.level or logging.WARNING, handler.level))
        logging.getLogger("tortoise").setLevel(max(logging.INFO, handler.level))
        root.addHandler(handler)
        self._handler = handler

    def _is_the_routers(self, record: logging.LogRecord) -> bool:
        """Records of the router's thread, and of its loggers from any thread (not the tests' clients)."""
        thread = self._thread
        return (thread is not None and record.thread == thread.ident) or record.name.startswith(
            ("router", "tortoise", "uvicorn")
        )

    def _run(self, settings: Settings, prune: bool) -> None:
        async def serve(settings: Settings) -> None:
            config = uvicorn.Config(
                create_app(settings),
                host=settings.host,
                port=settings.port,
                http=limited_httptools_protocol(settings.max_request_header_bytes, settings.client_header_timeout_s),
                lifespan="on",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_s),
                proxy_headers=True,
            )
            self._server = _Server(config)
            await self._server.serve()

        try:
            settings = start_up(settings, prune, self.env)  # the migrations without --config: in the app's lifespan
            warn_if_accounts_off(settings)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(serve(settings))
        except BaseException as exc:  # reported by start() and stop()
            self._failure = exc
            logging.getLogger("router").exception("in-process router failed")


class _Server(uvicorn.Server):
    """uvicorn's server, told to exit at once rather than at its main loop's next 0.1 s tick."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:  # uvicorn's, with the sleep cut short by exit_now()
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list | None = None) -> None:
        """uvicorn's shutdown (the same steps and waits) with its fixed 0.1 s pause after asking the
        connections to close, and its 0.1 s polls, replaced by 5 ms polls: a stop took 0.1 s more
        than its work, for every in-process router of the suite."""
        logging.getLogger("uvicorn.error").info("Shutting down")
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await asyncio.sleep(0)  # idle connections close on the loop's next turn

        async def drained() -> None:
            while (self.server_state.connections or self.server_state.tasks) and not self.force_exit:
                await asyncio.sleep(0.005)
            for server in self.servers:
                await server.wait_closed()

        try:
            await asyncio.wait_for(drained(), timeout=self.config.timeout_graceful_shutdown)
        except TimeoutError:
            logging.getLogger("uvicorn.error").error(
                "Cancel %s running task(s), timeout graceful shutdown exceeded", len(self.server_state.tasks)
            )
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    def exit_now(self) -> None:
        """From another thread: as `should_exit = True` (a graceful shutdown), without the wait for a tick."""
        self.should_exit = True
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone already
                self._loop.call_soon_threadsafe(self._wake.set)
