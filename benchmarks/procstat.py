"""What a process (and its children) costs, read from /proc: CPU seconds, RSS, open file descriptors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """`pid` and every descendant (uvicorn --workers N forks its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        tree.extend(kids)
        frontier.extend(kids)
    return tree


def cpu_seconds_self(pid: int) -> float:
    """utime + stime of `pid` alone, in seconds (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pid: int, only: bytes | None = None) -> float:
    """utime + stime of `pid` and its descendants (those whose command line holds `only`), in seconds."""
    total = 0
    for p in children_of(pid):
        if only is not None and only not in cmdline(p):
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants."""
    return sum(_status_kib(p, "VmRSS") for p in children_of(pid)) / 1024


def peak_rss_mib(pid: int) -> float:
    """High-water mark of resident memory (the largest single process of the tree)."""
    return max(_status_kib(p, "VmHWM") for p in children_of(pid)) / 1024


def open_fds(pid: int) -> int:
    total = 0
    for p in children_of(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


class CpuMeter:
    """CPU time a process tree used between start() and stop(); `helper` = the part of it in helper processes."""

    HELPERS = b"router.tracing"  # the Langfuse exporter process: off the event loop

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start = 0.0
        self._helper_start = 0.0
        self.helper = 0.0

    def start(self) -> None:
        self._start = cpu_seconds(self.pid)
        self._helper_start = cpu_seconds(self.pid, self.HELPERS)

    def stop(self) -> float:
        self.helper = cpu_seconds(self.pid, self.HELPERS) - self._helper_start
        return cpu_seconds(self.pid) - self._start


def cpu_busy_seconds(cpu: int) -> float:
    """Non-idle time of one CPU since boot (all processes), from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
    return 0.0
