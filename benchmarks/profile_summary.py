"""Summarize a py-spy `--format raw` (collapsed stacks) file: top frames by self and inclusive time.

python benchmarks/profile_summary.py benchmarks/results/profile-nonstream.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def short_frame(frame: str) -> str:
    """`func (…/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`; line numbers dropped."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3", "/work/main/", "/tmp/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    if path.startswith(".") and "/" in path:  # e.g. "11/asyncio/events.py" after lib/python3
        path = path.split("/", 1)[1]
    return f"{match.group('func')} ({path})"


def group_of(frame: str) -> str:
    """A coarse bucket for a frame: which library (or our code) it belongs to."""
    if frame in (NATIVE, LOOP):
        return "native: granian (Rust), uvloop (C)"
    path = frame[frame.rfind("(") + 1 : -1]
    if path.startswith("router/"):
        return "router"
    for lib in (
        "granian",
        "starlette",
        "uvicorn",
        "aiohttp",
        "httpx",
        "httpcore",
        "tortoise",
        "aiosqlite",
        "orjson",
        "anyio",
        "logging",
        "asyncio",
        "yarl",
        "multidict",
        "langfuse",
        "opentelemetry",
        "py_mini_racer",
    ):
        if lib in path:
            return lib
    return "other"


# Samples with no Python frame (granian's Rust threads, C code outside any Python call), and
# samples in a granian worker's entry frame itself (uvloop running, between Python callbacks).
NATIVE = "(no Python frame: granian's Rust threads, native code)"
LOOP = "(event loop between callbacks: uvloop's C code)"
_WORKER_ENTRY = ("_spawn_asgi_lifespan_worker (", "MPServer._spawn_asgi_lifespan_worker (")


def summarize(path: Path, top: int = 40) -> dict:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short_frame(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or [NATIVE]
        # A granian worker's stacks start with the fork from the server process: cut that prelude.
        cut = max((i for i, f in enumerate(frames) if f.startswith(_WORKER_ENTRY)), default=-1)
        if cut >= 0:
            frames = frames[cut + 1 :] or [LOOP]
        self_counts[frames[-1]] += count
        groups[group_of(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    return {"samples": total, "self": pct(self_counts), "inclusive": pct(inclusive), "self_by_library": pct(groups)}


def main() -> None:
    for arg in sys.argv[1:]:
        summary = summarize(Path(arg))
        print(f"# {arg}: {summary['samples']} samples")
        for title in ("self_by_library", "self", "inclusive"):
            print(f"\n## {title}")
            for name, share in summary[title]:
                print(f"{share:5.1f} %  {name}")


if __name__ == "__main__":
    main()
