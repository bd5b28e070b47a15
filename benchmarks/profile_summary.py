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
    path = frame[frame.rfind("(") + 1 : -1]
    if path.startswith("router/"):
        return "router"
    for lib in (
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
        if frames[0].startswith("process ") or frames[0].startswith("thread "):
            frames = frames[1:] or frames
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
