"""Fixtures that start the real router (in-process by default, or a subprocess) and real upstreams (aiohttp, in-thread).

Environment:
- TEST_POSTGRES_URL: a PostgreSQL server URL (e.g. postgres://postgres@127.0.0.1:5432/postgres);
  tests that need it skip with a reason when it is unset or unreachable.
- TEST_REDIS_URL: likewise for Redis.
- TEST_DB=postgres: run every router of the suite on PostgreSQL (a fresh database each).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import BinaryIO
from unittest import mock

import httpx
import pytest

from router.db import is_postgres
from tests.upstream import UpstreamServer, free_port

ADMIN_PASSWORD = "test-admin-password"


def _share_default_ssl_contexts() -> None:
    """httpx builds a new SSL context for every client (a CA bundle read and parsed: 30-100 ms), so
    for every `httpx.post(...)` of a test and every SDK client (the OpenAI and Anthropic SDKs use
    its fork httpx2), while the tests speak plain HTTP on loopback. The default one (verify=True,
    no cert) is built once per test process and CA source (SSL_CERT_FILE, SSL_CERT_DIR or the
    library's default, in the libraries' order); any other verify is built as before."""
    import importlib
    import ssl

    for name in ("httpx", "httpx2"):
        try:
            transports = importlib.import_module(f"{name}._transports.default")
        except ImportError:
            continue
        build = transports.create_ssl_context
        made: dict[tuple[str, str], ssl.SSLContext] = {}

        def create_ssl_context(verify=True, cert=None, trust_env=True, build=build, made=made):
            if verify is not True or cert:
                return build(verify=verify, cert=cert, trust_env=trust_env)
            source = ("", "")
            for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
                if trust_env and os.environ.get(variable):
                    source = (variable, os.environ[variable])
                    break
            if source not in made:
                made[source] = build(verify=verify, cert=cert, trust_env=trust_env)
            return made[source]

        transports.create_ssl_context = create_ssl_context


def pytest_configure(config: pytest.Config) -> None:
    """tmp_path (and so every test router's SQLite) on tmpfs where there is one: the same code paths,
    without a disk sync per commit (a fresh router's migrations took 0.4-0.6 s on disk, 0.17 s there).
    PYTEST_DEBUG_TEMPROOT or --basetemp set by the caller win."""
    shm = Path("/dev/shm")
    if config.option.basetemp is None and shm.is_dir() and os.access(shm, os.W_OK):
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(shm))
    _share_default_ssl_contexts()
    if not hasattr(config, "workerinput"):  # once, in xdist's controller (or the only process)
        _compile_the_router()


def _compile_the_router() -> None:
    """The router's bytecode, written once before any test (0.3 s; 0.03 s when it is current).

    With PYTHONDONTWRITEBYTECODE set (as here and in the Dockerfile) each router or CLI subprocess
    compiled router/ and graphql_schema/ afresh, until test_readme_commands.py's routers (whose
    environment lacks the setting) happened to write the bytecode: 0.15 s of CPU per process, about
    15 % of `import router.app` (an installed package has its bytecode from pip). Python reads
    bytecode whatever the setting says and checks it against the source's mtime and size, so an
    edited file never runs stale.
    """
    if not sys.dont_write_bytecode:
        return
    import compileall

    root = Path(__file__).resolve().parents[1]
    for package in ("router", "graphql_schema"):
        compileall.compile_dir(root / package, quiet=1)


# --- order and distribution over xdist workers ------------------------------------------------

# The slowest modules, slowest first: each module's summed test time (setup, call and teardown, from
# --junitxml), run alone with TEST_POSTGRES_URL and TEST_REDIS_URL set as in CI, the mean of two
# runs (2026-11-30, at 5d91d28; those of 4 s or more). The rest follow in their usual order. With
# `-n 2` each module runs whole on one worker (its module fixtures, routers included, start once,
# not once per worker), handed out in this order: the long modules start first and the short ones
# at the end fill both workers until the run ends together.
SLOW_MODULES_FIRST = (
    "test_dashboard_e2e.py",  # 42 s
    "test_scale_out.py",  # 25
    "test_usage_ticks.py",  # 16
    "test_proxy.py",  # 16
    "test_upstream.py",  # 15
    "test_observability.py",  # 12
    "test_hooks.py",  # 10
    "test_health.py",  # 10
    "test_limits_redis.py",  # 10
    "test_server_limits.py",  # 10
    "test_hardening_graphql.py",  # 9
    "test_limits_integration.py",  # 9
    "test_script_limits.py",  # 8
    "test_script_hardening.py",  # 8
    "test_quota_events.py",  # 8
    "test_responses_api.py",  # 7
    "test_storage_security.py",  # 6
    "test_graphql_subscriptions.py",  # 6
    "test_graphql_api.py",  # 6
    "test_fuzz_graphql.py",  # 5
    "test_readme_commands.py",  # 5
    "test_script_host.py",  # 4
    "test_script_racer.py",  # 4
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's tests stay in order


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist (`-p no:xdist`) it is never called
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist load` (what `-n` means by default) as `loadfile` in collection order; another --dist as asked."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False  # keep SLOW_MODULES_FIRST's order, not "most tests first"
    return LoadFileScheduling(config, log)


# --- PostgreSQL / Redis -----------------------------------------------------------------------


def postgres_url() -> str | None:
    return os.environ.get("TEST_POSTGRES_URL")


def redis_url() -> str | None:
    return os.environ.get("TEST_REDIS_URL")


def process_dialect() -> str:
    """One SQL dialect per test process: Tortoise caches its statements per connection name.

    In-process databases (in-process routers included) are SQLite, or PostgreSQL in the
    `TEST_DB=postgres` run; a case of the other dialect runs in the other run.
    """
    return "postgres" if os.environ.get("TEST_DB") == "postgres" else "sqlite"


def in_process_dialect(env: dict[str, str]) -> bool:
    """Whether a router or CLI with this environment's databases may run in this process."""
    postgres = process_dialect() == "postgres"
    return all(is_postgres(env.get(name, "")) == postgres for name in ("CORE_DB_URL", "ANALYTICS_DB_URL"))


def skip_unless_process_dialect(dialect: str) -> None:
    if dialect != process_dialect():
        run = "TEST_DB=postgres run" if dialect == "postgres" else "default (SQLite) run"
        pytest.skip(f"the {dialect} case runs in the {run}: one SQL dialect per test process")


def run_async(coroutine):
    """Run a coroutine to completion from sync test code, even where a loop already runs (Playwright)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_async(run())


def create_pg_database(url: str, migrated: str | None = None) -> str:
    """A new database on the server of `url`; returns its URL. Empty, or with `migrated` ("core" or
    "analytics"), what the migrations make of that app's database (a copy of `Migrated`'s template)."""
    name = f"llmrouter_test_{uuid.uuid4().hex[:12]}"
    template = Migrated.postgres_template(url, migrated) if migrated else None
    if template:
        _pg_admin(url, f'CREATE DATABASE "{name}" TEMPLATE "{template.rsplit("/", 1)[1]}"')
    else:
        _pg_admin(url, f'CREATE DATABASE "{name}"')
    base = url.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str, db_url: str) -> None:
    name = db_url.rsplit("/", 1)[1]
    with contextlib.suppress(Exception):
        _pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_postgres() -> str:
    url = postgres_url()
    if not url:
        pytest.skip(
            "needs PostgreSQL: set TEST_POSTGRES_URL to a server where the tests may create databases, "
            "e.g. postgres://postgres@127.0.0.1:5432/postgres"
        )
    try:
        _pg_admin(url, "SELECT 1")
    except Exception as exc:
        pytest.skip(f"needs PostgreSQL: TEST_POSTGRES_URL={url} is not reachable ({exc.__class__.__name__})")
    return url


def require_redis() -> str:
    url = redis_url()
    if not url:
        pytest.skip("needs Redis: set TEST_REDIS_URL, e.g. redis://127.0.0.1:6379/0 (each test uses its own prefix)")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"needs Redis: TEST_REDIS_URL={url} is not reachable ({exc.__class__.__name__})")
    return url


def until(predicate, within: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it holds (an assertion error naming `what` after `within` seconds)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# --- pre-migrated databases ------------------------------------------------------------------


class Migrated:
    """The databases of a freshly migrated router, made once per test process and copied for each new one.

    A fresh router otherwise runs every migration (about 0.13 s per SQLite database, more on
    PostgreSQL), and the suite starts several hundred routers. A copy is what the migrations would
    have made: the router finds every migration applied and goes on as after a restart. The
    migrations themselves run from nothing where a test asks for it (`seed_databases = False`,
    test_scale_out.py's migration tests, the CLI's `(new, empty)` databases).
    """

    _sqlite: dict[str, bytes] | None = None
    _postgres: dict[str, str] = {}  # app -> template database URL, on the server of TEST_POSTGRES_URL

    @classmethod
    def _migrate(cls, core_url: str, analytics_url: str) -> bool:
        """Run the router's own start-up migrations, unless Tortoise's one global context is taken
        (a router or test of this process holds it): then the caller migrates for real."""
        from tortoise import context

        from router.config import load_settings
        from router.db import close_db, init_db

        if context._global_context is not None:
            return False
        settings = load_settings({"CORE_DB_URL": core_url, "ANALYTICS_DB_URL": analytics_url}, dotenv=False)

        async def migrate() -> None:
            await init_db(settings)
            await close_db()

        run_async(migrate())
        return True

    @classmethod
    def sqlite(cls) -> dict[str, bytes] | None:
        """{"core.db": ..., "analytics.db": ...}: the files' bytes, or None when they cannot be made now."""
        if cls._sqlite is None:
            import tempfile

            from router.config import sqlite_url

            with tempfile.TemporaryDirectory() as tmp:
                core, analytics = Path(tmp, "core.db"), Path(tmp, "analytics.db")
                if not cls._migrate(sqlite_url(str(core)), sqlite_url(str(analytics))):
                    return None
                cls._sqlite = {"core.db": core.read_bytes(), "analytics.db": analytics.read_bytes()}
        return cls._sqlite

    @classmethod
    def postgres_template(cls, server: str, app: str) -> str | None:
        """A migrated database of `app` ("core" or "analytics") to `CREATE DATABASE ... TEMPLATE` from."""
        if not cls._postgres:
            core, analytics = create_pg_database(server), create_pg_database(server)
            if not cls._migrate(core, analytics):
                drop_pg_database(server, core)
                drop_pg_database(server, analytics)
                return None
            cls._postgres.update(core=core, analytics=analytics)
        return cls._postgres[app]

    @classmethod
    def drop(cls) -> None:
        server = postgres_url()
        for url in cls._postgres.values():
            if server:
                drop_pg_database(server, url)
        cls._postgres.clear()


def pytest_sessionfinish(session: pytest.Session) -> None:
    Migrated.drop()


def seed_databases(env: dict[str, str]) -> None:
    """Copy migrated SQLite files to where a router with this environment keeps its databases, when
    neither is there yet (nor a journal of it) and their directory exists (a router that makes its
    data directory, with its mode, is left to do so)."""
    from router.config import ConfigError, load_settings
    from router.db import _sqlite_path

    try:
        settings = load_settings(env, dotenv=False)
    except ConfigError:  # a test of a bad setting: the router says so itself
        return
    paths = {"core.db": _sqlite_path(settings.core_db_url), "analytics.db": _sqlite_path(settings.analytics_db_url)}
    files = [Path(path) for path in paths.values() if path is not None]
    if len(files) != 2 or not all(file.parent.is_dir() for file in files):
        return
    if any(Path(f"{file}{suffix}").exists() for file in files for suffix in ("", "-journal", "-wal")):
        return
    migrated = Migrated.sqlite()
    if migrated is None:
        return
    for name, path in paths.items():
        assert path is not None
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # as the router creates them
        with os.fdopen(fd, "wb") as file:
            file.write(migrated[name])


# --- the router as a subprocess ---------------------------------------------------------------


class RouterProcess:
    """`python -m router serve` on a free loopback port, with its own data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.config = config
        self.env = {
            **os.environ,
            "DATA_DIR": str(data_dir),
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "LOG_LEVEL": "INFO",
            "CATALOG_POLL_INTERVAL_S": "0.5",
            "LOG_FLUSH_INTERVAL_S": "0.05",  # rows (and requestLogged) within 0.05 s, not the default 0.2
            "HEALTH_COOLDOWN_S": "30",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self._log: BinaryIO | None = None
        self.bind_loopback = True  # tests set False to see the router's own default
        self.seed_databases = True  # False: a fresh router migrates its new databases itself
        self.log_path = data_dir / f"router-{self.port}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def start(
        self, timeout: float = 30.0, extra_args: list[str] | None = None, logged: str | None = None
    ) -> RouterProcess:
        """Start `serve`; return once /healthz answers, or once its log has `logged` (start-up's own messages)."""
        args = [sys.executable, "-m", "router", "serve", "--port", str(self.port)]
        if self.bind_loopback:
            args += ["--host", "127.0.0.1"]
        if self.config:
            args += ["--config", str(self.config)]
        args += extra_args or []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.seed_databases and not any(arg.startswith("--data-dir") for arg in args):  # another directory
            seed_databases(self.env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        # Its own process group: a stop that times out kills the workers too, not only their parent.
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log()}")
                if logged is not None and logged in self.log():
                    return self
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"router did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        try:
            if self.proc is None or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else 0
            if sig == signal.SIGKILL:  # the whole group: a worker of a killed server must not live on
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()

    def request_logs(self) -> list[dict]:
        """Every request-log row, oldest first, read straight from the analytics database."""
        url = self.env.get("ANALYTICS_DB_URL")
        if url and url.startswith("postgres"):
            import asyncpg

            async def fetch() -> list[dict]:
                conn = await asyncpg.connect(url)
                try:
                    return [dict(r) for r in await conn.fetch("SELECT * FROM request_logs ORDER BY id")]
                finally:
                    await conn.close()

            return run_async(fetch())
        path = self.data_dir / "analytics.db"
        if not path.exists():
            return []
        conn = sqlite3.connect(path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM request_logs ORDER BY id")]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def wait_for_logs(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Poll until at least `count` rows are logged (the writer batches every LOG_FLUSH_INTERVAL_S);
        fewer after `timeout` fail the test (a wrong count would otherwise sit out the timeout unseen)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.request_logs()
            if len(rows) >= count:
                return rows
            assert time.monotonic() < deadline, f"{len(rows)} request-log rows after {timeout} s, not {count}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`llm-router ...` against the same databases.

        An admin command runs the CLI's `main` in this process (no Python start-up per command)
        unless an in-process router holds Tortoise's one context here or its databases are of the
        other dialect than `process_dialect()`; `serve` is always
        `python -m router` (tests/test_cli.py and test_readme_commands.py run the real command too).
        """
        from tests.inprocess import RouterThread

        if args[0] != "serve" and RouterThread.active is None and in_process_dialect(self.env):
            result = cli_in_process(list(args), self.env)
        else:
            result = subprocess.run(
                [sys.executable, "-m", "router", *args], env=self.env, capture_output=True, text=True, timeout=60
            )
        if check and result.returncode != 0:
            raise AssertionError(f"llm-router {' '.join(args)} failed: {result.stderr}")
        return result

    def add_user(self, name: str, permissions: str = "*") -> str:
        """Create a user and return its API key: through GraphQL when running (instant), else the CLI."""
        if not self.running:
            return self.cli("users", "add", name, "--permissions", permissions).stdout.strip().splitlines()[-1]
        created = self.gql_ok(
            "mutation($name: String!, $all: Boolean) { createUser(input: {name: $name, allBackends: $all}) "
            "{ user { id } apiKey } }",
            {"name": name, "all": permissions == "*"},
        )["createUser"]
        if permissions != "*":
            backends = {b["name"]: b["id"] for b in self.gql_ok("{ backends { id name } }")["backends"]}
            for backend in permissions.split(","):
                self.gql_ok(
                    "mutation($u: ID!, $b: ID!) { createPermission(input: {userId: $u, backendId: $b}) { id } }",
                    {"u": created["user"]["id"], "b": backends[backend.strip()]},
                )
        return created["apiKey"]

    def wait_for_key(self, key: str, timeout: float = 15.0, streak: int = 1) -> None:
        """Wait until the running router accepts a key made elsewhere (another process, the CLI).

        With several workers, ask for `streak` successes in a row (each request is a new
        connection, which the kernel spreads over the workers) spanning two catalog polls
        (CATALOG_POLL_INTERVAL_S): every worker reloads the catalog once per poll, so by then each
        has seen the key, while a quick streak may all have reached one worker (the kernel need not
        take turns) before the other had polled.
        """
        started = time.monotonic()
        deadline = started + timeout
        span = 2 * float(self.env.get("CATALOG_POLL_INTERVAL_S") or 5) if streak > 1 else 0.0
        in_a_row = 0
        while in_a_row < streak or time.monotonic() - started < span:
            if time.monotonic() > deadline:
                raise AssertionError("the router did not pick up the new key")
            response = httpx.get(f"{self.v1}/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            in_a_row = in_a_row + 1 if response.status_code != 401 else 0
            if in_a_row == 0 or in_a_row >= streak:
                time.sleep(0.02)

    def graphql(self, query: str, variables: dict | None = None, token: str | None = ADMIN_PASSWORD) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, headers=headers, timeout=30
        )
        return response.json()

    def gql_ok(self, query: str, variables: dict | None = None) -> dict:
        result = self.graphql(query, variables)
        assert not result.get("errors"), result["errors"]
        return result["data"]


def router_for(data_dir: Path, env: dict[str, str] | None = None, config: Path | None = None) -> RouterProcess:
    """A router (not started) for a module's fixture: in-process (`RouterThread`) where it may be (no
    other in-process router, databases of this process's dialect), else a subprocess."""
    from tests.inprocess import RouterThread

    in_thread = RouterThread.active is None and in_process_dialect(env or {})
    return (RouterThread if in_thread else RouterProcess)(data_dir, env, config)


def cli_in_process(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`router.cli.main(argv)` with `env` as the whole environment (and `cwd` as the working directory),
    as `python -m router` would run it."""
    from router.cli import main

    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with (
            mock.patch.dict(os.environ, env, clear=True),
            contextlib.chdir(cwd or Path.cwd()),
            redirect_stdout(out),
            redirect_stderr(err),
        ):
            try:
                main(argv)
            except SystemExit as exit_:
                if isinstance(exit_.code, str):  # as the interpreter does: the message on stderr, status 1
                    print(exit_.code, file=sys.stderr)
                    return 1
                return exit_.code or 0
            return 0

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # its own thread: main runs its own event loop
        code = pool.submit(call).result()
    return subprocess.CompletedProcess(["llm-router", *argv], code, out.getvalue(), err.getvalue())


def write_config(path: Path, servers: dict[str, dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"servers": servers}))
    return path


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    """The SDK clients the test made with tests/clients.py, closed when it ends."""
    yield
    if clients := sys.modules.get("tests.clients"):  # not imported: none made (and no SDK import for it)
        clients.close_all()


@pytest.fixture(scope="module", autouse=True)
def _collect_at_module_end() -> Iterator[None]:
    """A cyclic collection after each module, so that a socket it left open (an unclosed client in a
    reference cycle) fails the module's last test on its ResourceWarning, not whichever later test
    collects (an in-process router's start-up does). 0.1-140 ms a module, median 3 ms (most of the
    heap is frozen by the routers' tune_gc)."""
    yield
    gc.collect()


@pytest.fixture
def upstream_factory() -> Iterator:
    servers: list[UpstreamServer] = []

    def make(**kwargs) -> UpstreamServer:
        server = UpstreamServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def upstream(upstream_factory) -> UpstreamServer:
    return upstream_factory(name="alpha", models=["test-model", "shared-model"])


@pytest.fixture
def router_factory(tmp_path: Path) -> Iterator:
    routers: list[RouterProcess] = []
    databases: list[str] = []
    use_pg = os.environ.get("TEST_DB") == "postgres"

    def make(
        env: dict[str, str] | None = None,
        config: Path | None = None,
        start: bool = True,
        data_dir: Path | None = None,
        process: bool = False,
    ) -> RouterProcess:
        """An in-process router (`RouterThread`) unless `process`, `SERVER=granian`, a second one running
        or databases of the other dialect than `process_dialect()`."""
        from tests.inprocess import RouterThread

        env = dict(env or {})
        if use_pg and "CORE_DB_URL" not in env:
            server = require_postgres()
            core, analytics = create_pg_database(server, "core"), create_pg_database(server, "analytics")
            databases.extend([core, analytics])
            env.update(CORE_DB_URL=core, ANALYTICS_DB_URL=analytics)
        in_thread = (
            not process
            and env.get("SERVER", "uvicorn") == "uvicorn"  # RouterThread serves with uvicorn as `serve` does
            and RouterThread.active is None
            and in_process_dialect(env)
        )
        kind = RouterThread if in_thread else RouterProcess
        router = kind(data_dir or tmp_path / f"router{len(routers)}", env, config)
        routers.append(router)
        return router.start() if start else router

    yield make
    for router in routers:
        router.stop()
    for db in databases:
        drop_pg_database(postgres_url(), db)


@pytest.fixture
def router_with_backend(router_factory, upstream, tmp_path):
    """A router with one config.yaml backend ("alpha") and a user allowed everything."""
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = router_factory(config=config)
    router.api_key = router.add_user("alice")
    return router


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
