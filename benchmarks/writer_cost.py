"""What the request-log writer costs per row, in CPU time of the whole process (all threads).

The router's `LogWriter` on a fresh SQLite data directory (the default databases), fed at a steady
rate as the router's requests would feed it, with no requests around it: the process's CPU time
(event loop + aiosqlite's thread + the kernel's share of the journal writes) over the rows written.

That total includes the feeder: making and finishing each record and the loop's wake-ups, which a
router pays per request anyway (~15 µs here). Each round is therefore paired with a feeder-only
round (the same loop, the database insert replaced by nothing), run alternately; the writer's own
cost is the median of the paired differences.

    .venv/bin/python benchmarks/writer_cost.py [--rate 2500] [--seconds 8] [--rounds 3] [--router-src PATH]

`--router-src` runs it on another checkout's router (for before/after comparisons).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


async def one_round(rate: int, seconds: float, write: bool = True) -> dict[str, float]:
    from router import usage
    from router.config import load_settings
    from router.db import close_db, init_db
    from router.usage import LogWriter, RequestRecord

    async def no_insert(records: list[RequestRecord]) -> None:
        return None

    insert = usage.insert_log_rows
    if not write:
        usage.insert_log_rows = no_insert

    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings({"DATA_DIR": data_dir, "ADMIN_PASSWORD": "x" * 16}, dotenv=False)
        await init_db(settings)
        writer = LogWriter(settings.log_batch_size, settings.log_flush_interval_s, settings.log_buffer_max)
        writer.start()
        cpu0, wall0 = time.process_time(), time.monotonic()
        submitted = 0
        while (elapsed := time.monotonic() - wall0) < seconds:
            for _ in range(int(rate * elapsed) - submitted):  # small bursts, as requests finish
                record = RequestRecord(request_id=f"r{submitted}", endpoint="/v1/chat/completions")
                record.user_id, record.user_name, record.backend_id, record.backend_name = 1, "bench", 1, "mock"
                record.model, record.prompt_tokens, record.completion_tokens, record.total_tokens = "m", 12, 20, 32
                record.finish(200)
                writer.submit(record)
                submitted += 1
            await asyncio.sleep(0.002)
        await writer.close(30)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        await close_db()
        usage.insert_log_rows = insert
    return {"rows": writer.written, "rows_per_s": writer.written / wall, "cpu_us_per_row": cpu / writer.written * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=2500, help="rows a second (the router's request rate)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--router-src", default=str(Path(__file__).resolve().parents[1]))
    args = p.parse_args()
    sys.path.insert(0, args.router_src)
    os.chdir(args.router_src)
    import uvloop

    costs, feeder, own = [], [], []
    for i in range(args.rounds):
        result = uvloop.run(one_round(args.rate, args.seconds))
        alone = uvloop.run(one_round(args.rate, args.seconds, write=False))
        costs.append(result["cpu_us_per_row"])
        feeder.append(alone["cpu_us_per_row"])
        own.append(costs[-1] - feeder[-1])
        rows, rate, cost = result["rows"], result["rows_per_s"], result["cpu_us_per_row"]
        print(f"round {i + 1}: {rows:.0f} rows, {rate:.0f}/s, {cost:.1f} µs CPU/row, feeder alone {feeder[-1]:.1f}")
    print(
        f"median {statistics.median(costs):.1f} µs CPU per row in all, feeder alone {statistics.median(feeder):.1f}, "
        f"the writer's own {statistics.median(own):.1f} (median of paired differences)"
    )


if __name__ == "__main__":
    main()
