"""Langfuse's SDK runs in a child process of each worker (router/tracing.py), never on the event loop's
process, and the child goes away with the router."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.upstream import free_port


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below `pid`."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def exporters(pid: int) -> list[int]:
    return [p for p, cmd in descendants(pid).items() if "router.tracing" in cmd]


def test_the_langfuse_sdk_runs_in_a_child_process_that_stops_with_the_router(router_factory):
    router = router_factory(
        process=True,  # the exporter is a child of the router's process
        env={
            "LANGFUSE_PUBLIC_KEY": "pk-test",
            "LANGFUSE_SECRET_KEY": "sk-test",
            "LANGFUSE_HOST": f"http://127.0.0.1:{free_port()}",  # nobody there: exports fail in the child
            "SHUTDOWN_GRACE_S": "1",  # how long the stop waits for the exporter's failing retries
        },
    )
    assert httpx.post(f"{router.v1}/chat/completions", json={}, timeout=10).status_code == 401  # traced too
    deadline = time.monotonic() + 10
    while not exporters(router.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    children = exporters(router.proc.pid)
    assert len(children) == 1, descendants(router.proc.pid)
    assert "exporter process" in router.log()
    router.stop()
    assert not Path(f"/proc/{children[0]}").exists() or "zombie" in Path(f"/proc/{children[0]}/status").read_text()
