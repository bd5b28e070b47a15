"""The README's first commands, run as written on a "fresh machine": no secrets, an empty directory.

The commands are read from README.md itself, so the README cannot drift from what works. The
install steps are checked for shape (they would download); everything after them is run: the
config file written by the quick start, `users add`, and `serve`, started on a free port and
probed on /healthz, /v1/models and /graphql.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_cli import run_cli, serving
from tests.upstream import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
VENV_TOOL = re.compile(r"^\.venv/bin/(\S+)$")


def shell_blocks(heading: str) -> list[str]:
    """The ```sh blocks of one `## heading` section of the README."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def fresh_env(port: int) -> dict[str, str]:
    """A clean environment: no provider keys, no router settings, only where to listen."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(ROOT),  # the code of this checkout, as `pip install -e .` would give
        "SERVER_PORT": str(port),  # the README's port 3000 may be taken on a shared machine
        "SERVER_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }


def split_commands(line: str) -> list[list[str]]:
    """`a && b && c` as argument lists (comments dropped)."""
    words = shlex.split(line, comments=True)
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def is_install(argv: list[str]) -> bool:
    """`python3 -m venv .venv` or `.venv/bin/pip install -e .` / `-e '.[test]'`: checked, not run."""
    if argv == ["python3", "-m", "venv", ".venv"]:
        return True
    if argv[:3] == [".venv/bin/pip", "install", "-e"] and len(argv) == 4:
        target = argv[3]
        extras = re.fullmatch(r"\.(?:\[([a-z,]+)\])?", target)
        assert extras, f"unexpected install target {target!r}"
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
        for extra in filter(None, (extras.group(1) or "").split(",")):
            assert extra in declared, f"README installs the extra [{extra}], pyproject.toml has no such extra"
        return True
    return False


def as_process(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """`VAR=value .venv/bin/llm-router args` -> (the assignments, this interpreter running the CLI)."""
    assignments = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        name, value = argv[0].split("=", 1)
        assignments[name] = value
        argv = argv[1:]
    tool = VENV_TOOL.match(argv[0])
    assert tool and tool.group(1) == "llm-router", f"the README runs {argv[0]!r}; this test knows llm-router"
    return assignments, [sys.executable, "-m", "router", *argv[1:]]


class Served:
    """A `serve` command of the README running in the background."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / "serve.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"serve did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def run_readme(tmp_path: Path) -> Iterator:
    """Runs README lines in an empty directory; yields a function returning the started server."""
    servers: list[Served] = []

    def run(lines: list[str], cwd: Path) -> tuple[Served, list[str]]:
        port = free_port()
        outputs: list[str] = []
        served: Served | None = None
        pending = list(lines)
        while pending:
            line = pending.pop(0)
            heredoc = re.fullmatch(r"cat > (\S+) <<'(\w+)'", line.strip())
            if heredoc:
                end = pending.index(heredoc.group(2))
                (cwd / heredoc.group(1)).write_text("\n".join(pending[:end]) + "\n")
                pending = pending[end + 1 :]
                continue
            for argv in split_commands(line):
                if argv[0] in ("git", "cd") or is_install(argv):
                    continue  # a clone of this repository into this directory: see the fixtures below
                assert served is None, "the README runs something after `serve`, which does not return"
                assignments, process = as_process(argv)
                env = {**fresh_env(port), **assignments}
                if process[3] == "serve":
                    served = Served(process, env, cwd, port)
                    servers.append(served)
                else:  # the CLI's `main` in this process where it may run (no Python start-up), else a process
                    result = run_cli(cwd, env, *process[3:])
                    assert result.returncode == 0, f"{line!r} failed: {result.stderr}"
                    outputs.append(result.stdout)
        assert served is not None, "the README's block does not serve"
        served.wait_ready()
        return served, outputs

    yield run
    for served in servers:
        served.stop()


def test_fresh_machine_serve_command_runs_as_written(run_readme, tmp_path):
    serve_block, test_block = shell_blocks("On a fresh machine")
    # The test command's shape: a venv, the [test] extra, pytest with xdist's -n.
    *install, pytest_cmd = split_commands(test_block.strip())
    assert all(is_install(argv) for argv in install) and pytest_cmd[0] == ".venv/bin/pytest"

    shutil.copy(ROOT / "config.yaml.example", tmp_path / "config.yaml.example")
    served, _ = run_readme(serve_block.strip().splitlines(), tmp_path)

    assert httpx.get(f"{served.url}/healthz").json()["status"] == "ok"
    unauthenticated = httpx.get(f"{served.url}/v1/models")
    assert unauthenticated.status_code == 401 and unauthenticated.json()["error"]["code"] == "invalid_api_key"
    # The password of the command opens the admin API; servers needing an unset key are left out, saying why.
    backends = httpx.post(
        f"{served.url}/graphql",
        json={"query": "{ backends { name isActive } }"},
        headers={"Authorization": "Bearer change-me"},
    ).json()["data"]["backends"]
    assert backends == [{"name": "local", "isActive": True}]
    assert "${OPENAI_API_KEY} not set" in served.log() and "${OPENROUTER_API_KEY} not set" in served.log()
    assert (tmp_path / "data" / "core.db").exists()  # "embedded SQLite in ./data"


def test_quick_start_runs_as_written(run_readme, tmp_path):
    block = shell_blocks("Quick start: from clone to a first chat completion")[0]
    served, outputs = run_readme(block.strip().splitlines(), tmp_path)
    alice_key = outputs[0].strip().splitlines()[-1]
    assert alice_key.startswith("sk-")

    models = httpx.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {alice_key}"})
    assert models.status_code == 200 and models.json()["object"] == "list"
    assert "${OPENAI_API_KEY} not set" in served.log()
    # Once the key is there, the same file brings the provider in (and its models, from `override`). Not a
    # README command: `serve`'s start-up in this process where it may run, on the same files.
    served.stop()
    env = {**fresh_env(0), "ADMIN_PASSWORD": "change-me", "OPENAI_API_KEY": "sk-placeholder"}
    again = serving(tmp_path / "data", env, tmp_path / "config.yaml")
    again.env = {**env, "DATA_DIR": str(tmp_path / "data"), "SERVER_PORT": str(again.port)}  # no more than that
    again.start()
    try:
        listed = httpx.get(f"{again.url}/v1/models", headers={"Authorization": f"Bearer {alice_key}"}).json()
        assert "gpt-4o-mini" in [m["id"] for m in listed["data"]]
    finally:
        again.stop()
