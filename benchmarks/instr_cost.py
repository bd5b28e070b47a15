"""Instructions per request: `own_cost.py` under valgrind's callgrind, which counts instructions, not time.

CPU time on this shared 2-core VM moves by ±10 % from run to run, so changes of a few µs per request
are lost in it; instruction counts repeat to within a fraction of a per cent whatever else the machine
does. This runs own_cost (the app in-process, the h1 client to the benchmarks' mock, which runs
natively in its own process and is not counted) for `--small` and `--large` requests; the difference of
the two totals over the difference of the counts is the steady state per request, with start-up and
warm-up cancelled out. Every thread of the router's process is counted (the log writer's SQLite work
included).

Under callgrind the router runs ~30x slower, so what depends on time would change: the log writer's
flush interval is set to 30 s, so that its batches fill to LOG_BATCH_SIZE as they do under load, and
a request's disconnect watch starts after 30x its 50 ms, so that it starts for as few requests as
when served (c64 requests last ~10 ms; under callgrind, before session 13, every one lasted past
50 ms and was watched).

    .venv/bin/python benchmarks/instr_cost.py                       # non-stream, c64
    .venv/bin/python benchmarks/instr_cost.py --stream
    .venv/bin/python benchmarks/instr_cost.py --floor               # the bare forward-and-relay app, the same way
    .venv/bin/python benchmarks/instr_cost.py --without writer      # what the request-log row costs (the difference)
    .venv/bin/python benchmarks/instr_cost.py --router-src /tmp/wt  # another checkout's router
    .venv/bin/python benchmarks/instr_cost.py --functions 40        # and the C functions that cost most per request
    .venv/bin/python benchmarks/instr_cost.py --functions 40 --inclusive   # ... with what they call

Instructions are not time: ~4 per ns of CPU on average here (460k per non-stream request at ~115
µs), but a tight C loop (a string scan, SQLite's) runs many more per ns than the interpreter does, so
compare versions of the same code with counts and read shares between kinds of work from CPU time
(own_cost.py --without).
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Under callgrind the router runs about this much slower; what is timed is stretched by it (see above).
SLOWDOWN = 30
WATCH_AFTER_S = 0.05  # router/client_watch.py's (not imported: --router-src may name another checkout)
_LINE = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)")


def callgrind(args: argparse.Namespace, requests: int, out: Path) -> int:
    """The instructions of one own_cost run of `requests` requests (one round), all threads."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(HERE / "own_cost.py"),
        "--requests",
        str(requests),
        "--rounds",
        "1",
        "--concurrency",
        str(args.concurrency),
        "--without",
        args.without,
    ]
    if args.stream:
        command.append("--stream")
    if args.floor:
        command.append("--floor")
    if args.router_src:
        command += ["--router-src", args.router_src]
    if not args.floor:  # a request lasts ~30x longer: without this every one would be watched, as few are served
        command += ["--watch-after-s", str(WATCH_AFTER_S * SLOWDOWN)]
    env = {**os.environ, "LOG_FLUSH_INTERVAL_S": "30"}
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if result.returncode != 0:
        raise SystemExit(f"own_cost under callgrind failed ({result.returncode}): {result.stdout[-2000:]}")
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"no summary in {out}")


def by_function(out: Path, inclusive: bool) -> dict[str, int]:
    """Instructions per C function of a callgrind output, self or inclusive (callgrind_annotate's view).

    Python functions are not among them: they are all the interpreter's `_PyEval_EvalFrameDefault`.
    """
    text = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=True,
    ).stdout
    totals: dict[str, int] = {}
    for line in text.splitlines():
        if match := _LINE.match(line):
            name = re.sub(r" \[.*\]$", "", match.group(2))
            name = re.sub(r"^/tmp/python-build[^:]*/Python-[\d.]+/", "", name)
            totals[name] = totals.get(name, 0) + int(match.group(1).replace(",", ""))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--without", default="", help="as own_cost.py's --without")
    parser.add_argument("--floor", action="store_true", help="the floor app (floor_app.py, h1) instead of the router")
    parser.add_argument("--router-src", help="run another checkout's router")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--small", type=int, default=1000, help="requests in the first run")
    parser.add_argument("--large", type=int, default=3000, help="requests in the second run")
    parser.add_argument("--functions", type=int, default=0, help="also list this many C functions, by their own cost")
    parser.add_argument("--inclusive", action="store_true", help="with --functions: by cost with what they call")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    src = Path(args.router_src).resolve() if args.router_src else HERE.parent
    # Byte-compiled once here, so that each run does not compile the router from source
    # (PYTHONDONTWRITEBYTECODE may be set), which is start-up work callgrind would count slowly.
    compileall.compile_dir(src / "router", quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        small_out, large_out = Path(tmp) / "small.out", Path(tmp) / "large.out"
        small = callgrind(args, args.small, small_out)
        large = callgrind(args, args.large, large_out)
        per_request = (large - small) / (args.large - args.small)
        kind = ("floor " if args.floor else "") + ("stream" if args.stream else "non-stream")
        without = f" without {args.without}" if args.without else ""
        print(f"{kind} c{args.concurrency}{without}: {per_request:,.0f} instructions per request")
        if args.functions:
            before, after = by_function(small_out, args.inclusive), by_function(large_out, args.inclusive)
            grown = {name: (after.get(name, 0) - before.get(name, 0)) / (args.large - args.small) for name in after}
            for name, count in sorted(grown.items(), key=lambda item: -item[1])[: args.functions]:
                print(f"{count:12,.0f}  {name[:150]}")


if __name__ == "__main__":
    main()
