"""Several router processes as one system: two routers on different ports sharing one PostgreSQL
(both databases) and one Redis, `--workers N` on SQLite and PostgreSQL, concurrent start-ups, and
Redis going away and coming back under traffic.

The two-router tests set CATALOG_POLL_INTERVAL_S=60, so an admin change seen by the other router
within a second or two can only have come through Redis. Most of them share one pair of router
processes (`cluster`, started once per module), each test with its own users and models; the tests
that need other settings or stop Redis start their own. Each pair uses its own REDIS_PREFIX, so
tests running in parallel on one Redis never see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from router.routing import HealthTracker
from router.shared import record_from_wire, record_to_wire
from router.usage import RequestRecord
from tests.conftest import (
    ADMIN_PASSWORD,
    RouterProcess,
    create_pg_database,
    drop_pg_database,
    require_postgres,
    require_redis,
    router_for,
    skip_unless_process_dialect,
    until,
    write_config,
)
from tests.test_graphql_api import CREATE_PERMISSION, CREATE_USER, DELETE_PERMISSION, fails, ok
from tests.test_hardening_graphql import LOGIN
from tests.upstream import UpstreamServer, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
PROPAGATION_S = 3.0  # generous for a loaded CI machine; the catalog poll is 60 s


def chat(
    router: RouterProcess, key: str, request_id: str | None = None, timeout: float = 30, model: str = "test-model"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if request_id:
        headers["X-Request-ID"] = request_id
    return httpx.post(
        f"{router.v1}/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers=headers,
        timeout=timeout,
    )


def until_status(router: RouterProcess, key: str, status: int, within: float = PROPAGATION_S) -> float:
    """Seconds until `chat` on `router` answers `status` (fails after `within`)."""
    started = time.monotonic()
    while True:
        response = chat(router, key)
        if response.status_code == status:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"still {response.status_code} after {within} s: {response.text}"
        time.sleep(0.01)


def gql(router: RouterProcess, query: str, variables: dict | None = None) -> dict:
    return router.gql_ok(query, variables)


def backend_id(router: RouterProcess, name: str) -> str:
    return next(b["id"] for b in gql(router, "{ backends { id name } }")["backends"] if b["name"] == name)


@dataclass
class Cluster:
    a: RouterProcess
    b: RouterProcess
    env: dict[str, str]
    upstreams: dict[str, UpstreamServer]


@contextlib.contextmanager
def new_pg_databases() -> Iterator[dict[str, str]]:
    """CORE_DB_URL and ANALYTICS_DB_URL of two new, empty PostgreSQL databases (dropped afterwards)."""
    server = require_postgres()
    urls = {"CORE_DB_URL": create_pg_database(server), "ANALYTICS_DB_URL": create_pg_database(server)}
    try:
        yield urls
    finally:
        for url in urls.values():
            drop_pg_database(server, url)


@pytest.fixture
def pg_databases() -> Iterator[dict[str, str]]:
    with new_pg_databases() as urls:
        yield urls


def start_cluster(
    tmp_path: Path, upstreams: dict[str, UpstreamServer], env: dict[str, str], routers: list[RouterProcess]
) -> Cluster:
    """A (with config.yaml's backends, one per upstream) and B, on the same databases and Redis."""
    config = write_config(tmp_path / "config.yaml", {name: {"url": u.base_url} for name, u in upstreams.items()})
    a = RouterProcess(tmp_path / "a", env, config)
    routers.append(a)
    a.start()
    b = RouterProcess(tmp_path / "b", env)
    routers.append(b)
    b.start()
    return Cluster(a, b, env, upstreams)


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The module's pair of router processes: backend alpha (test-model) for most tests, and good and
    bad (health-model only, so that no other test's request goes there) for the health test."""
    redis_url = require_redis()
    upstreams = {
        "alpha": UpstreamServer(name="alpha", models=["test-model", "shared-model"]).start(),
        "bad": UpstreamServer(name="bad", models=["health-model"]).start(),
        "good": UpstreamServer(name="good", models=["health-model"]).start(),
    }
    routers: list[RouterProcess] = []
    try:
        with new_pg_databases() as databases:
            env = {
                **databases,
                "REDIS_URL": redis_url,
                "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
                "CATALOG_POLL_INTERVAL_S": "60",
                "LOG_FLUSH_INTERVAL_S": "0.05",
                "HEALTH_FAILURE_THRESHOLD": "1",  # the health test: one failure marks a backend down...
                "HEALTH_COOLDOWN_S": "60",  # ...for the rest of the module
                "MAX_ATTEMPTS": "2",
                "ADMIN_SESSION_SECRET": "shared-secret",  # both processes accept one admin session
            }
            try:
                yield start_cluster(tmp_path_factory.mktemp("cluster"), upstreams, env, routers)
            finally:
                for router in routers:
                    router.stop()
    finally:
        for upstream in upstreams.values():
            upstream.stop()


@pytest.fixture
def cluster(module_cluster: Cluster) -> Cluster:
    """The module's pair, both running (a test that stopped one gets it back: one start, not two)."""
    for router in (module_cluster.a, module_cluster.b):
        if not router.running:
            router.start()
    return module_cluster


# --- admin changes travel at once -------------------------------------------------------------


def test_user_created_through_a_works_on_b_at_once(cluster):
    created = gql(cluster.a, CREATE_USER, {"i": {"name": "ann", "allBackends": True}})["createUser"]
    key = created["apiKey"]
    elapsed = until_status(cluster.b, key, 200)
    assert elapsed < PROPAGATION_S
    assert chat(cluster.a, key).status_code == 200


def test_permission_revoked_through_b_is_refused_on_a(cluster):
    created = gql(cluster.a, CREATE_USER, {"i": {"name": "bea"}})["createUser"]
    user_id, key = created["user"]["id"], created["apiKey"]
    alpha = backend_id(cluster.a, "alpha")
    gql(cluster.a, CREATE_PERMISSION, {"u": user_id, "b": alpha})
    until_status(cluster.b, key, 200)
    assert chat(cluster.a, key).status_code == 200

    assert gql(cluster.b, DELETE_PERMISSION, {"u": user_id, "b": alpha}) == {"deletePermission": True}
    assert chat(cluster.b, key).status_code == 403  # the process that made the change: at once
    until_status(cluster.a, key, 403)

    # And a deactivation made through A locks the key out on B.
    gql(cluster.a, "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { id } }", {"id": user_id})
    until_status(cluster.b, key, 401)


def test_backend_marked_down_by_one_process_is_down_on_all(cluster):
    """Health: B learns that A marked a backend down (cooldown), and skips it without trying it."""
    a, b, bad = cluster.a, cluster.b, cluster.upstreams["bad"]
    key = a.add_user("hal")
    b.wait_for_key(key)
    bad.fail_status = 500
    try:
        # Round-robin over two backends: within two requests A tries `bad`, fails over, marks it down.
        for _ in range(2):
            assert chat(a, key, model="health-model").status_code == 200
        assert any(r.path == "/v1/chat/completions" for r in bad.received)
        deadline = time.monotonic() + PROPAGATION_S
        healthy = {}
        while time.monotonic() < deadline:
            healthy = {x["name"]: x["healthy"] for x in gql(b, "{ backends { name healthy } }")["backends"]}
            if healthy.get("bad") is False:
                break
            time.sleep(0.02)
        assert healthy == {"alpha": True, "bad": False, "good": True}
        tried_bad = len(bad.requests_to("/v1/chat/completions"))
        for _ in range(4):
            assert chat(b, key, model="health-model").status_code == 200
        assert len(bad.requests_to("/v1/chat/completions")) == tried_bad  # B never tried it
    finally:
        bad.fail_status = None


def test_logout_reaches_every_process_through_redis(cluster):
    """An admin session (one ADMIN_SESSION_SECRET) logged out on A is refused on B at once."""
    token = ok(cluster.a, LOGIN, {"p": ADMIN_PASSWORD}, token=None)["login"]["token"]
    assert ok(cluster.b, "{ users { id } }", token=token)
    assert ok(cluster.a, "mutation { logout }", token=token)["logout"]
    assert fails(cluster.b, "{ users { id } }", token=token)["code"] == "UNAUTHENTICATED"


def test_an_in_process_router_with_redis_closes_its_connections_when_it_stops(tmp_path):
    """The session revocation check's Redis client is closed with the app (it was left open: uvloop's
    loop.close() then met an open transport, and under warnings-as-errors never returned)."""
    skip_unless_process_dialect("sqlite")
    from tests.inprocess import RouterThread

    env = {"REDIS_URL": require_redis(), "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}"}
    router = RouterThread(tmp_path / "r", {**env, "CORE_DB_URL": "", "ANALYTICS_DB_URL": ""}).start()
    try:
        assert gql(router, "{ users { id } }") == {"users": []}  # an admin token: checked against Redis's revocations
    finally:
        assert router.stop(timeout=10) == 0


# --- live subscriptions see every process -----------------------------------------------------


async def subscribe(router: RouterProcess):
    ws = await connect(f"ws://127.0.0.1:{router.port}/graphql", subprotocols=["graphql-transport-ws"])
    await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {ADMIN_PASSWORD}"}}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
    query = "subscription { requestLogged { requestId backendName statusCode } }"
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
    deadline = time.monotonic() + 10
    while (await asyncio.to_thread(gql, router, "{ liveSubscribers }"))["liveSubscribers"] < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    return ws


async def collect(ws, wanted: set[str], settle_s: float = 1.0, timeout: float = 10.0) -> list[str]:
    """Request ids received until every wanted one has arrived, plus `settle_s` to catch duplicates."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    while True:
        now = time.monotonic()
        if settle_until is None and wanted <= set(seen):
            settle_until = now + settle_s
        end = settle_until if settle_until is not None else deadline
        if now >= end:
            return seen
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), end - now))
        except TimeoutError:
            continue
        if message["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        elif message["type"] == "next":
            seen.append(message["payload"]["data"]["requestLogged"]["requestId"])


async def test_subscriber_on_a_receives_requests_served_by_b_exactly_once(cluster):
    key = cluster.a.add_user("cat")
    cluster.b.wait_for_key(key)
    on_a, on_b = await subscribe(cluster.a), await subscribe(cluster.b)
    try:
        served_by_b = [f"b-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        served_by_a = [f"a-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        for rid in served_by_b:
            assert (await asyncio.to_thread(chat, cluster.b, key, rid)).status_code == 200
        for rid in served_by_a:
            assert (await asyncio.to_thread(chat, cluster.a, key, rid)).status_code == 200
        everything = set(served_by_a + served_by_b)
        seen_a, seen_b = await asyncio.gather(collect(on_a, everything), collect(on_b, everything))
        for seen in (seen_a, seen_b):
            assert sorted(seen) == sorted(everything), seen  # every request of both processes, once each
    finally:
        await on_a.close()
        await on_b.close()


# --- a graceful stop under load loses nothing -------------------------------------------------


def test_sigterm_under_load_every_finished_request_is_logged(cluster):
    key = cluster.a.add_user("dan")
    upstream = cluster.upstreams["alpha"]
    before = upstream.stream_delay_s, upstream.stream_chunks
    upstream.stream_delay_s = 0.02
    upstream.stream_chunks = 10
    finished: list[str] = []
    refused = 0
    lock = threading.Lock()
    stop = threading.Event()

    def load(stream: bool) -> None:
        nonlocal refused
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                rid = f"load-{uuid.uuid4().hex}"
                body = {"model": "test-model", "messages": MESSAGES, "stream": stream}
                headers = {"Authorization": f"Bearer {key}", "X-Request-ID": rid}
                try:
                    if stream:
                        with client.stream("POST", f"{cluster.a.v1}/chat/completions", json=body, headers=headers) as r:
                            lines = list(r.iter_lines())
                            done = r.status_code == 200 and any(line.strip() == "data: [DONE]" for line in lines)
                    else:
                        r = client.post(f"{cluster.a.v1}/chat/completions", json=body, headers=headers)
                        done = r.status_code == 200
                except httpx.HTTPError:
                    with lock:
                        refused += 1
                    time.sleep(0.01)
                    continue
                if done:
                    with lock:
                        finished.append(rid)

    threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        until(lambda: len(finished) > 10, 30, "no load reached the router")
        assert cluster.a.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # the `cluster` fixture starts it again
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        upstream.stream_delay_s, upstream.stream_chunks = before
    logged = {row["request_id"] for row in cluster.a.request_logs()}
    missing = [rid for rid in finished if rid not in logged]
    assert not missing, f"{len(missing)} of {len(finished)} finished requests are not in the log"
    assert "request log rows could not be written" not in cluster.a.log()


# --- Redis goes away and comes back -----------------------------------------------------------


class RedisServer:
    """A private redis-server on a free port (so stopping it does not disturb other tests)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(
                "needs the redis-server program (apt-get install redis-server) to run a private Redis that this "
                "test stops and restarts"
            )
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import redis

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return self
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for_log(router: RouterProcess, text: str, timeout: float = 15.0, after: int = 0) -> None:
    deadline = time.monotonic() + timeout
    while text not in router.log()[after:]:
        assert time.monotonic() < deadline, f"{text!r} not in the log of {router.url}:\n{router.log()[-3000:]}"
        time.sleep(0.05)


def test_redis_stopped_and_restarted_mid_traffic(tmp_path, upstream, pg_databases):
    redis_server = RedisServer(tmp_path / "redis").start()
    env = {
        **pg_databases,
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": "outage",
        "CATALOG_POLL_INTERVAL_S": "60",
        "ROUTING_STRATEGY": "least_busy",  # the in-flight counts are shared too
    }
    routers: list[RouterProcess] = []
    statuses: list[int] = []
    stop = threading.Event()
    try:
        cluster = start_cluster(tmp_path, {"alpha": upstream}, env, routers)
        key = cluster.a.add_user("eve")
        cluster.b.wait_for_key(key)

        def load(router: RouterProcess) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    response = client.post(
                        f"{router.v1}/chat/completions",
                        json={"model": "test-model", "messages": MESSAGES},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    statuses.append(response.status_code)
                    time.sleep(0.005)

        threads = [threading.Thread(target=load, args=(r,)) for r in (cluster.a, cluster.b, cluster.a, cluster.b)]
        for thread in threads:
            thread.start()
        until(lambda: len(statuses) > 10, 30, "no traffic reached the routers")

        redis_server.stop()
        for router in (cluster.a, cluster.b):
            wait_for_log(router, "Redis unavailable")
        during = len(statuses)
        # An admin change while Redis is away still applies on its own process.
        created = gql(cluster.a, CREATE_USER, {"i": {"name": "fay", "allBackends": True}})["createUser"]
        assert chat(cluster.a, created["apiKey"]).status_code == 200
        until(lambda: len(statuses) > during + 10, 30, "traffic stalled while Redis was away")

        mark = len(cluster.b.log())
        redis_server.start()
        wait_for_log(cluster.b, "Redis is reachable again", after=mark)
        # On reconnecting, B checked the revision: the change made during the outage is there.
        until_status(cluster.b, created["apiKey"], 200)
        # And broadcasts flow again.
        again = gql(cluster.b, CREATE_USER, {"i": {"name": "gus", "allBackends": True}})["createUser"]
        until_status(cluster.a, again["apiKey"], 200)
        recovered = len(statuses)
        until(lambda: len(statuses) > recovered + 10, 30, "traffic stalled after Redis came back")
        stop.set()
        for thread in threads:
            thread.join(30)
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    finally:
        stop.set()
        for router in routers:
            router.stop()
        redis_server.stop()


# --- --workers N, concurrent start-ups --------------------------------------------------------


def migration_rows(router: RouterProcess) -> list[tuple[str, str]]:
    import sqlite3

    url = router.env.get("CORE_DB_URL")
    rows: list[tuple[str, str]] = []
    if url:
        import asyncpg

        async def fetch(db_url: str) -> list[tuple[str, str]]:
            conn = await asyncpg.connect(db_url)
            try:
                return [(r["app"], r["name"]) for r in await conn.fetch("SELECT app, name FROM tortoise_migrations")]
            finally:
                await conn.close()

        for db_url in (url, router.env["ANALYTICS_DB_URL"]):
            rows += asyncio.run(fetch(db_url))
    else:
        for name in ("core.db", "analytics.db"):
            conn = sqlite3.connect(router.data_dir / name)
            rows += [tuple(r) for r in conn.execute("SELECT app, name FROM tortoise_migrations")]
            conn.close()
    return sorted(rows)


def all_migrations() -> list[tuple[str, str]]:
    """Every committed migration as (app, name): what a fresh database ends up with."""
    root = Path(__file__).resolve().parents[1] / "router" / "migrations"
    return sorted((app, p.stem) for app in ("core", "analytics") for p in (root / app).glob("0*.py"))


# uvicorn spawns its workers: what they are handed (the settings, the protocol factory) must pickle.
@pytest.mark.parametrize(
    ("database", "server"), [("sqlite", "granian"), ("sqlite", "uvicorn"), ("postgres", "granian")]
)
def test_workers_2_start_together_and_serve(tmp_path, upstream, database, server, request):
    # A catalog poll every 0.1 s: wait_for_key's streak spans two (0.2 s, not 1 s) to know both workers have a key.
    env: dict[str, str] = {"LOG_FLUSH_INTERVAL_S": "0.05", "SERVER": server, "CATALOG_POLL_INTERVAL_S": "0.1"}
    if database == "postgres":
        env.update(request.getfixturevalue("pg_databases"))
    else:
        env.update(CORE_DB_URL="", ANALYTICS_DB_URL="")  # SQLite files in DATA_DIR, even under TEST_DB=postgres
    config = write_config(tmp_path / "config.yaml", {"alpha": {"url": upstream.base_url}})
    router = RouterProcess(tmp_path / "w", env, config)
    router.seed_databases = False  # the workers' own migrations of new databases are what is tested
    try:
        router.start(extra_args=["--workers", "2"], timeout=60)
        # Both workers migrated the fresh databases at the same moment: once, without errors.
        deadline = time.monotonic() + 30
        while router.log().count("llm-router ready") < 2:
            assert time.monotonic() < deadline, router.log()
            time.sleep(0.1)
        assert migration_rows(router) == all_migrations()
        assert "Traceback" not in router.log()
        assert "admin changes take up to" in router.log()  # no REDIS_URL: the CLI says what that means
        key = router.add_user("ivy")  # by the CLI; without Redis each worker picks it up through its poll
        router.wait_for_key(key, streak=10)  # both workers know it
        ids = [f"w-{uuid.uuid4().hex[:8]}" for _ in range(20)]
        for rid in ids:
            assert chat(router, key, rid).status_code == 200
        logged = {row["request_id"] for row in router.wait_for_logs(len(ids))}
        assert set(ids) <= logged
    finally:
        router.stop()
        # The pre-existing database is upgraded in place: a second start finds nothing to migrate.
    second = RouterProcess(tmp_path / "w", env)
    try:
        second.start(extra_args=["--workers", "2"], timeout=60)
        # Both workers up before the stop: under granian a worker still starting when SIGTERM came finished
        # its start-up and ran on until the kill timeout (30 s of this test's every run, hidden by stop()).
        deadline = time.monotonic() + 30
        while second.log().count("llm-router ready") < 2:
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.05)
        assert migration_rows(second) == all_migrations()
        assert "Traceback" not in second.log()
    finally:
        second.stop()


def test_database_from_before_migrations_starts_and_is_recorded(tmp_path, upstream):
    """A SQLite database made by the old `generate_schema` start-up is taken as `0001_initial`."""
    skip_unless_process_dialect("sqlite")  # it opens the old SQLite files with Tortoise in this process
    import sqlite3

    from tortoise import Tortoise, connections
    from tortoise.migrations.executor import MigrationExecutor, MigrationTarget

    from router.config import sqlite_url
    from router.db import tortoise_config

    data = tmp_path / "old"
    data.mkdir()

    async def old_style() -> None:
        # The schema as it was then (0001_initial: later migrations add to it), with no migration record.
        config = tortoise_config(sqlite_url(str(data / "core.db")), sqlite_url(str(data / "analytics.db")))
        await Tortoise.init(config=config, _enable_global_fallback=True)
        for name in ("core", "analytics"):
            conn = connections.get(name)
            executor = MigrationExecutor(conn, {name: config["apps"][name]})
            await executor.migrate([MigrationTarget(name, "0001_initial")])
            await conn.execute_script("DROP TABLE tortoise_migrations")
        await connections.get("core").execute_insert(
            "INSERT INTO users (name, is_active, all_backends, api_key_hash, api_key_prefix, created_at, updated_at)"
            " VALUES ('old', 1, 1, 'h', 'p', '2024-01-01 00:00:00', '2024-01-01 00:00:00')",
            [],
        )
        await Tortoise.close_connections()

    asyncio.run(old_style())
    router = router_for(data, {"CORE_DB_URL": "", "ANALYTICS_DB_URL": ""})  # serve's start-up, in-process
    try:
        router.start()
        names = [u["name"] for u in gql(router, "{ users { name } }")["users"]]
        assert "old" in names
        assert "predates migrations" in router.log()
    finally:
        router.stop()
    conn = sqlite3.connect(data / "core.db")
    recorded = conn.execute("SELECT app, name FROM tortoise_migrations WHERE app = 'core' ORDER BY id").fetchall()
    committed = sorted(p.stem for p in (Path(__file__).parents[1] / "router/migrations/core").glob("0*.py"))
    assert recorded == [("core", name) for name in committed]  # 0001 recorded as found, the later ones applied
    conn.close()


# --- pure parts -------------------------------------------------------------------------------


def test_request_records_round_trip_through_the_wire_format():
    record = RequestRecord(request_id="r1", endpoint="/v1/chat/completions", user_id=3, user_name="u", backend_id=4)
    record.input = {"secret": "prompt"}
    record.finish(200)
    wire = json.loads(json.dumps(record_to_wire(record), default=str))
    assert "input" not in wire and "output" not in wire and "started_at" not in wire
    back = record_from_wire({**wire, "field_from_a_newer_version": 1})
    assert (back.id, back.request_id, back.user_id, back.backend_id, back.status_code) == (record.id, "r1", 3, 4, 200)
    assert back.created_at == record.created_at


def test_health_changes_are_reported_and_remote_ones_are_not_echoed():
    events: list[tuple[int, float]] = []
    now = [100.0]
    health = HealthTracker(threshold=2, cooldown_s=30, clock=lambda: now[0])
    health.on_change.connect(lambda b, c: events.append((b, c)))
    health.record_failure(1)
    assert events == []
    health.record_failure(1)
    assert events == [(1, 30)]
    health.mark_down(2, 150.0)  # learnt from another process: not reported again
    assert events == [(1, 30)] and not health.is_available(2)
    now[0] = 131.0
    assert health.is_available(1)  # the probe
    health.record_success(1)
    assert events == [(1, 30), (1, 0.0)]
    health.mark_up(2)
    assert health.is_healthy(2) and events == [(1, 30), (1, 0.0)]


async def test_committed_migrations_match_the_models():
    """A model change without its migration fails here: `tortoise -c router.db.TORTOISE_ORM makemigrations`."""
    from tortoise.context import TortoiseContext
    from tortoise.migrations.autodetector import MigrationAutodetector

    from router.db import tortoise_config

    config = tortoise_config("sqlite://:memory:", "sqlite://:memory:")
    async with TortoiseContext() as ctx:
        await ctx.init(config=config)
        writers = await MigrationAutodetector(ctx.apps, config["apps"]).changes()
    assert [(w.app_label, w.name) for w in writers] == []
