"""Start and stop the processes a benchmark needs: the mock upstream, the router, LiteLLM's proxy."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TASKSET = shutil.which("taskset")
ADMIN_PASSWORD = "bench-admin-password"
MODEL = "bench-model"
SLOW_MODEL = "bench-slow"  # served by the mock that waits between stream chunks (TTFT cell)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """`cmd` prefixed with `taskset -c cpus` (taskset execs: the pid stays the program's)."""
    if cpus is None or TASKSET is None:
        return cmd
    return [TASKSET, "-c", cpus, *cmd]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None, ok: int = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer {ok} within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the mock upstream ------------------------------------------------------------------------


@dataclass
class Mock:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/__stats", timeout=5).json()

    def pin(self, cpus: set[int] | None) -> None:
        if cpus is not None:
            os.sched_setaffinity(self.proc.pid, cpus)


def start_mock(cpus: str | None, model: str = MODEL, chunk_delay_ms: float = 0.0) -> Mock:
    port = free_port()
    cmd = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port), "--model", model]
    cmd += ["--chunk-delay-ms", str(chunk_delay_ms)]
    proc = subprocess.Popen(pinned(cmd, cpus))
    wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
    return Mock(proc, port)


# --- the router -------------------------------------------------------------------------------


@dataclass
class Router:
    """One `python -m router serve` on a data directory, with a user created by the CLI."""

    data_dir: Path
    src: Path
    cpus: str | None
    backends: dict[str, str]  # name -> base URL (…/v1)
    models: list[str]  # what the backends serve (the router must list them before a run)
    key: str = ""
    port: int = 0
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {**os.environ, "DATA_DIR": str(self.data_dir), "ADMIN_PASSWORD": ADMIN_PASSWORD}
        env["PYTHONUNBUFFERED"] = "1"
        if self.src != REPO:
            env["PYTHONPATH"] = str(self.src) + os.pathsep + env.get("PYTHONPATH", "")
        return {**env, **self.extra_env}

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "router", *args],
            env=self.env(),
            cwd=self.src,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"llm-router {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def prepare(self) -> None:
        """config.yaml pointing at the mocks, and a user (so auth and request logging are on)."""
        import yaml

        self.data_dir.mkdir(parents=True, exist_ok=True)
        servers = {name: {"url": url} for name, url in self.backends.items()}
        (self.data_dir / "config.yaml").write_text(yaml.safe_dump({"servers": servers}))
        self.key = self.cli("users", "add", "bench").strip().splitlines()[-1]

    def start(self, extra_env: dict[str, str] | None = None, workers: int = 1, cpus: str | None = None) -> None:
        self.extra_env = extra_env or {}
        self.port = free_port()
        cmd = [sys.executable, "-m", "router", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--config", str(self.data_dir / "config.yaml"), "--workers", str(workers)]
        log = open(self.data_dir / f"router-{self.port}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            pinned(cmd, cpus or self.cpus), env=self.env(), cwd=self.src, stdout=log, stderr=subprocess.STDOUT
        )
        wait_http(f"{self.url}/healthz", proc=self.proc, timeout=60)
        self.wait_for_models()

    def wait_for_models(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(self.models)
        while time.monotonic() < deadline:
            resp = httpx.get(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {self.key}"}, timeout=5)
            if resp.status_code == 200 and wanted <= {m["id"] for m in resp.json()["data"]}:
                return
            time.sleep(0.2)
        raise RuntimeError(f"router did not list the mock's models: {resp.status_code} {resp.text[:300]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    # --- GraphQL (the admin API) ---

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `data` of a GraphQL call; raises GraphQLUnavailable / GraphQLError."""
        try:
            resp = httpx.post(
                f"{self.url}/graphql",
                json={"query": query, "variables": variables or {}},
                headers={"Authorization": f"Bearer {ADMIN_PASSWORD}"},
                timeout=120,
            )
        except httpx.HTTPError as exc:
            raise GraphQLUnavailable(f"/graphql did not answer: {exc}") from None
        if resp.status_code == 404 or "json" not in resp.headers.get("content-type", ""):
            raise GraphQLUnavailable(f"no GraphQL API at /graphql (HTTP {resp.status_code})")
        result = resp.json()
        if result.get("errors"):
            raise GraphQLError(result["errors"])
        return result["data"]


class GraphQLUnavailable(Exception):
    pass


class GraphQLError(Exception):
    pass


# --- LiteLLM's proxy, in its own virtual environment ------------------------------------------


def install_litellm(venv: Path) -> Path:
    """A fresh venv with `litellm[proxy]`; returns its `litellm` executable."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True, timeout=1800)
    return exe


LITELLM_KEY = "sk-bench-" + "0" * 32  # a master key: LiteLLM refuses to start without one (auth on, no DB)


@dataclass
class LiteLLM:
    proc: subprocess.Popen
    port: int
    key: str = LITELLM_KEY

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_litellm(exe: Path, work: Path, mocks: dict[str, str], cpus: str | None) -> LiteLLM:
    import yaml

    model_list = [
        {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": url, "api_key": "sk-bench"}}
        for name, url in mocks.items()
    ]
    config = work / "litellm.yaml"
    config.write_text(yaml.safe_dump({"model_list": model_list}))
    port = free_port()
    env = {**os.environ, "LITELLM_LOG": "ERROR", "NO_DOCS": "True", "LITELLM_MASTER_KEY": LITELLM_KEY}
    env.pop("DATABASE_URL", None)
    log = open(work / "litellm.log", "ab")  # noqa: SIM115
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = subprocess.Popen(pinned(cmd, cpus), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc=proc, timeout=180)
    except RuntimeError as exc:
        stop_process(proc)
        tail = (work / "litellm.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{exc}\n{tail}") from None
    return LiteLLM(proc, port)


# --- the floor: a bare forward-and-relay app on a given server and client -------------------------


@dataclass
class Floor:
    """`benchmarks/floor_app.py` on `server` (granian|uvicorn) with `client` (aiohttp|pyreqwest|pyqwest)."""

    server: str
    client: str
    proc: subprocess.Popen
    port: int

    @property
    def name(self) -> str:
        return f"floor {self.server}+{self.client}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_floor(server: str, client: str, upstream: str, cpus: str | None, work: Path) -> Floor:
    port = free_port()
    env = {**os.environ, "FLOOR_UPSTREAM": upstream, "FLOOR_CLIENT": client, "PYTHONPATH": str(REPO)}
    app = "benchmarks.floor_app:create"
    if server == "granian":
        cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--http", "1"]
        cmd += ["--factory", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", app]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "--loop", "uvloop", "--http", "httptools"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log", app]
    log = open(work / f"floor-{server}-{client}.log", "ab")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(pinned(cmd, cpus), env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    return Floor(server, client, proc, port)
