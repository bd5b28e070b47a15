"""Render results/latest.json as markdown between the markers of benchmarks/README.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN GENERATED (benchmarks/run.py rewrites this part) -->"
END = "<!-- END GENERATED -->"

# The anchor: LiteLLM 1.x proxy, one worker on one core, nginx mock, wrk.
ANCHOR = {
    "ns_c64_rps": 95.0,
    "st_c64_rps": 36.0,
    "added_p50_ms": 14.0,  # "+12-16 ms"
    "ttft_added_ms": 21.0,
    "cpu_ns_ms": 13.0,  # "10-16 ms"
    "cpu_st_ms": 28.0,
    "peak_rss_mib": 420.0,
}


def cell(cells: list[dict], target: str, mode: str, c: int) -> dict[str, Any] | None:
    return next((x for x in cells if x["target"] == target and x["mode"] == mode and x["concurrency"] == c), None)


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


class Metrics:
    """The headline numbers, derived from the matrix (None when a cell was not measured)."""

    def __init__(self, matrix: dict[str, Any], target: str = "router") -> None:
        self.cells = matrix.get("cells", [])
        self.target = target
        self.ttft = {t["target"]: t for t in matrix.get("ttft", [])} if isinstance(matrix.get("ttft"), list) else {}

    def get(self, mode: str, c: int, key: str, target: str | None = None) -> float | None:
        row = cell(self.cells, target or self.target, mode, c)
        return row.get(key) if row else None

    def added(self, key: str) -> float | None:
        mine, direct = self.get("non-stream", 1, key), self.get("non-stream", 1, key, "direct")
        return mine - direct if mine is not None and direct is not None else None

    def ttft_added(self, target: str | None = None) -> float | None:
        mine, direct = self.ttft.get(target or self.target), self.ttft.get("direct")
        return mine["p50_ms"] - direct["p50_ms"] if mine and direct else None

    def cpu_delta(self, other: str) -> float | None:
        base, extra = self.get("non-stream", 64, "cpu_ms_per_req"), self.get("non-stream", 64, "cpu_ms_per_req", other)
        return extra - base if base is not None and extra is not None else None


# The router's own pairing first, then the fallback client's and pyreqwest's (the floor the issue was measured on).
FLOORS_COMPARED = ("floor granian+h1", "floor granian+aiohttp", "floor granian+pyreqwest")
# Not the yardstick: the router's pairing with only a router's essentials (benchmarks/lean_floor.py).
LEAN_FLOOR = "floor granian+h1-lean"


def floor_rows(m: Metrics) -> list[tuple[str, str, str, str, str, str]]:
    """Router throughput as a share of the floor measured in the same run (issue 19: ≥ 60 %)."""
    rows = []
    for mode in ("non-stream", "stream"):
        mine = m.get(mode, 64, "rps")
        for floor in (*FLOORS_COMPARED, LEAN_FLOOR):
            base = m.get(mode, 64, "rps", floor)
            share = 100 * mine / base if mine and base else None
            cpu_mine, cpu_floor = m.get(mode, 64, "cpu_ms_per_req"), m.get(mode, 64, "cpu_ms_per_req", floor)
            by_cpu = 100 * cpu_floor / cpu_mine if cpu_mine and cpu_floor else None
            lean = floor == LEAN_FLOOR
            rows.append(
                (
                    f"{mode} c64, share of the {floor} (same run{', essentials only: for comparison' if lean else ''})",
                    "—" if lean else "≥ 60 %",
                    f"{fmt(share, 0, ' %')} of its req/s; {fmt(by_cpu, 0, ' %')} by CPU per request",
                    "" if lean else verdict(share, lambda v: v >= 60),
                    "—",
                    "",
                )
            )
    return rows


def verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "not measured"
    return "✅ met" if ok(value) else "❌ missed"


def ratio(value: float | None, anchor: float, higher_is_better: bool) -> str:
    if not value:
        return "—"
    return f"{value / anchor:,.0f}x" if higher_is_better else f"{anchor / value:,.0f}x less"


def targets_table(results: dict[str, Any]) -> list[str]:
    m = Metrics(results.get("matrix", {}))
    soak, workers, analytics = results.get("soak", {}), results.get("workers", {}), results.get("analytics", {})
    ns64, st64 = m.get("non-stream", 64, "rps"), m.get("stream", 64, "rps")
    ns64_cap, st64_cap = m.get("non-stream", 64, "capacity_rps"), m.get("stream", 64, "capacity_rps")
    p50, p99, ttft = m.added("p50_ms"), m.added("p99_ms"), m.ttft_added()
    cpu_ns, cpu_st = m.get("non-stream", 64, "cpu_ms_per_req"), m.get("stream", 64, "cpu_ms_per_req")
    rss = results.get("matrix", {}).get("peak_rss_mib")
    script, langfuse = m.cpu_delta("router+script"), m.cpu_delta("router+langfuse")
    skipped = results.get("matrix", {}).get("skipped", {})
    gql = analytics.get("graphql", {})
    rows = [
        *floor_rows(m),
        (
            "non-stream, c64",
            "≥ 3,000 req/s",
            f"{fmt(ns64, 0, ' req/s')} (CPU capacity {fmt(ns64_cap, 0)})",
            verdict(ns64, lambda v: v >= 3000),
            "~95 req/s",
            ratio(ns64, ANCHOR["ns_c64_rps"], True),
        ),
        (
            "stream of 20 chunks, c64",
            "≥ 1,000 req/s",
            f"{fmt(st64, 0, ' req/s')} (CPU capacity {fmt(st64_cap, 0)})",
            verdict(st64, lambda v: v >= 1000),
            "~36 req/s",
            ratio(st64, ANCHOR["st_c64_rps"], True),
        ),
        (
            "added latency p50, c1",
            "≤ 1 ms",
            fmt(p50, 3, " ms"),
            verdict(p50, lambda v: v <= 1),
            "+12-16 ms",
            ratio(p50, ANCHOR["added_p50_ms"], False),
        ),
        (
            "added latency p99, c1",
            "≤ 3 ms",
            fmt(p99, 3, " ms"),
            # A negative difference means the direct cell's tail was worse: noise, nothing measured.
            "not resolved (noise)" if p99 is not None and p99 < 0 else verdict(p99, lambda v: v <= 3),
            "—",
            "",
        ),
        (
            "time to first token added (10 ms/chunk)",
            "≤ 0.5 ms",
            fmt(ttft, 3, " ms"),
            verdict(ttft, lambda v: v <= 0.5),
            "+21 ms",
            ratio(ttft, ANCHOR["ttft_added_ms"], False) if ttft and ttft > 0 else "",
        ),
        (
            "— of which the bare floor granian+h1 adds (same run)",
            "—",
            fmt(m.ttft_added("floor granian+h1"), 3, " ms"),
            "",
            "—",
            "",
        ),
        (
            "router CPU per non-stream request (c64)",
            "≤ 0.25 ms",
            fmt(cpu_ns, 3, " ms"),
            verdict(cpu_ns, lambda v: v <= 0.25),
            "10-16 ms",
            ratio(cpu_ns, ANCHOR["cpu_ns_ms"], False),
        ),
        (
            "router CPU per stream request (c64)",
            "—",
            fmt(cpu_st, 3, " ms"),
            "",
            "~28 ms",
            ratio(cpu_st, ANCHOR["cpu_st_ms"], False),
        ),
        (
            "one no-op script adds (CPU/req)",
            "≤ 0.2 ms",
            fmt(script, 3, " ms") if script is not None else "skipped",
            verdict(script, lambda v: v <= 0.2) if script is not None else skipped.get("script", "—"),
            "—",
            "",
        ),
        (
            "Langfuse to a local sink adds (CPU/req of the event-loop process)",
            "≤ 0.1 ms",
            fmt(langfuse, 3, " ms") if langfuse is not None else "skipped",
            verdict(langfuse, lambda v: v <= 0.1) if langfuse is not None else skipped.get("langfuse", "—"),
            f"exporter process: {fmt(m.get('non-stream', 64, 'helper_cpu_ms_per_req', 'router+langfuse'), 3, ' ms')}",
            "",
        ),
        (
            "peak RSS (matrix)",
            "≤ 150 MiB",
            fmt(rss, 1, " MiB"),
            verdict(rss, lambda v: v <= 150),
            "~420 MiB",
            ratio(rss, ANCHOR["peak_rss_mib"], False),
        ),
    ]
    if soak:
        rows.append(
            (
                f"soak {soak['seconds']} s: RSS flat, fds, errors",
                "±10 %, no fd growth, 0 errors",
                f"±{soak['rss_max_deviation_pct']} %, fds {soak['fds_steady_first']}→{soak['fds_steady_last']},"
                f" {soak['errors']} errors",
                verdict(
                    1.0 if soak["rss_flat"] and soak["fd_growth"] <= 0 and soak["errors"] == 0 else 0.0, lambda v: v > 0
                ),
                "—",
                "",
            )
        )
    if workers.get("sqlite"):
        r = workers["sqlite"]["ratio"]
        rows.append(
            (
                "--workers 2 vs 1 (SQLite, non-stream c64)",
                "≥ 1.7x",
                f"{r:.2f}x",
                verdict(r, lambda v: v >= 1.7),
                "—",
                "",
            )
        )
    if analytics:
        if gql:
            worst = max(gql["request_logs_page"]["median_ms"], gql["usage_by_user_24h"]["median_ms"])
            rows.append(
                (
                    f"analytics, {analytics['rows']:,} rows (GraphQL, slower of the two)",
                    "≤ 200 ms",
                    fmt(worst, 1, " ms"),
                    verdict(worst, lambda v: v <= 200),
                    "20 s at 300k rows",
                    "",
                )
            )
        else:
            rows.append(
                (
                    f"analytics, {analytics['rows']:,} rows",
                    "≤ 200 ms",
                    "skipped",
                    analytics.get("skipped", "—"),
                    "20 s at 300k rows",
                    "",
                )
            )
    out = ["| metric | target | measured | verdict | LiteLLM anchor (issue) | vs anchor |", "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def matrix_table(cells: list[dict]) -> list[str]:
    out = [
        "| target | mode | conc. | req/s | p50 ms | p99 ms | errors | server CPU ms/req | server CPU busy "
        "| others on its CPU | load avg | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        noisy = " (noisy)" if c.get("noisy") else ""
        out.append(
            f"| {c['target']}{noisy} | {c['mode']} | {c['concurrency']} | {c['rps']:,.0f} | {c['p50_ms']:.3f} | "
            f"{c['p99_ms']:.3f} | {c['errors']} | {fmt(c.get('cpu_ms_per_req'), 3)} | "
            f"{fmt(c.get('cpu_busy_pct'), 0, ' %')} | {fmt(c.get('others_on_cpu_pct'), 0, ' %')} | "
            f"{fmt(c.get('loadavg'), 1)} | {fmt(c.get('rss_mib'), 1)} |"
        )
    return out


def transport_table(cells: list[dict]) -> list[str]:
    out = ["| target | mode | conc. | req/s | p99 ms | CPU ms/req |", "|---|---|---|---|---|---|"]
    for mode in ("non-stream", "stream"):
        for c in (16, 64):
            for target, name in (
                ("router", "router: granian + h1 (default)"),
                ("router-aiohttp", "router: granian + aiohttp"),
                ("router-pyreqwest", "router: granian + pyreqwest"),
                ("router-uvicorn", "router: uvicorn + h1"),
                ("floor granian+h1", "floor: granian + h1"),
                ("floor granian+aiohttp", "floor: granian + aiohttp"),
                ("floor uvicorn+h1", "floor: uvicorn + h1"),
                ("floor granian+pyreqwest", "floor: granian + pyreqwest"),
            ):
                row = cell(cells, target, mode, c)
                if row:
                    out.append(
                        f"| {name} | {mode} | {c} | {row['rps']:,.0f} | {row['p99_ms']:.2f} | "
                        f"{fmt(row.get('cpu_ms_per_req'), 3)} |"
                    )
    return out


def soak_lines(soak: dict[str, Any]) -> list[str]:
    return [
        f"{soak['seconds']} s of non-stream c32 + stream c16 at once: {soak['requests']:,} requests "
        f"({soak['rps_non_stream']:,.0f} + {soak['rps_stream']:,.0f} req/s), {soak['errors']} errors.",
        f"RSS: first sample {soak['rss_first_mib']} MiB; after warm-up {soak['rss_steady_min_mib']}-"
        f"{soak['rss_steady_max_mib']} MiB (median {soak['rss_steady_median_mib']}, max deviation "
        f"±{soak['rss_max_deviation_pct']} %, {'flat' if soak['rss_flat'] else 'NOT flat'}).",
        f"Open fds: {soak['fds_steady_first']} → {soak['fds_steady_last']} (max {soak['fds_max']}).",
        "",
        "RSS samples (MiB): " + ", ".join(f"{s['t_s']:.0f}s {s['rss_mib']}" for s in soak["samples"][::3]),
    ]


def analytics_lines(a: dict[str, Any]) -> list[str]:
    out = [
        f"{a['rows']:,} generated rows over 30 days (100 users, 5 backends), inserted in {a['insert_s']} s.",
        "",
        "| query | via | first ms | median of 5 ms |",
        "|---|---|---|---|",
    ]
    for via in ("graphql", "sql"):
        for name, label in (
            ("request_logs_page", "requestLogs(first: 50)"),
            ("usage_by_user_24h", "usage(groupBy:[USER], since 24 h)"),
        ):
            t = a.get(via, {}).get(name)
            if t:
                out.append(
                    f"| {label} | {'GraphQL' if via == 'graphql' else 'raw SQLite (floor)'} | "
                    f"{t['first_ms']} | {t['median_ms']} |"
                )
    answers = a.get("graphql", {}).get("answers")
    if answers:
        out += [
            "",
            f"The GraphQL answers held: totalCount {answers['total_count']:,}, {answers['items']} items; "
            f"{answers['usage_rows']} usage rows covering {answers['usage_requests']:,} requests.",
        ]
    if a.get("skipped"):
        out += ["", f"Skipped: {a['skipped']}"]
    return out


def workers_lines(w: dict[str, Any]) -> list[str]:
    out = []
    for db in ("sqlite", "postgres"):
        section = w.get(db, {})
        if section.get("skipped"):
            out.append(f"- {db}: {section['skipped']}")
        elif section:
            out.append(
                f"- {db}: workers=1 (pinned to one CPU) {section['workers_1']['rps']:,.0f} req/s, workers=2 (both "
                f"CPUs, shared with wrk and the mock) {section['workers_2']['rps']:,.0f} req/s: "
                f"**{section['ratio']:.2f}x**; CPU per process with 2 workers (supervisor, workers, % of a core): "
                f"{section['workers_2'].get('cpu_pct_per_process', '-')}"
            )
    return out


# The chain every sample starts with (process start-up, uvicorn's loop): not informative.
_ENTRY_FRAMES = (
    "run (uvicorn",
    "serve (router",
    "main (router",
    "<module>",
    "Runner.run",
    "Server.run",
    "asyncio_run",
    "_run_code",
    "_run_module_as_main",
    "Server.serve",
    "Server._serve",
    "run_until_complete",
    "BaseEventLoop.run",
    "Handle._run",
    "Thread.",
    "_bootstrap",
    "run (threading.py)",
)


def profile_lines(p: dict[str, Any]) -> list[str]:
    if p.get("skipped"):
        return [f"Not measured: {p['skipped']}."]
    out = []
    for name in ("nonstream", "stream", "nonstream_script"):
        s = p.get(name)
        if not s:
            continue
        out += [
            f"**{name}, c64** ({s['samples']:,} samples, py-spy --nonblocking, 250 Hz, {p['seconds']} s)",
            "",
            "| self time by library | % |",
            "|---|---|",
        ]
        out += [f"| {lib} | {share} |" for lib, share in s["self_by_library"]]
        out += ["", "| top frames, self time | % |", "|---|---|"]
        out += [f"| `{f}` | {share} |" for f, share in s["self"][:15]]
        out += ["", "| top frames, inclusive (below the server's entry frames) | % |", "|---|---|"]
        out += [f"| `{f}` | {share} |" for f, share in s["inclusive"] if not f.startswith(_ENTRY_FRAMES)][:20]
        out.append("")
    if p.get("script_skipped"):
        out.append(p["script_skipped"])
    return out


def litellm_lines(lite: dict[str, Any], matrix: dict[str, Any]) -> list[str]:
    if lite.get("skipped"):
        return [f"Skipped: {lite['skipped']}"]
    ours = Metrics(matrix)
    combined = {"cells": lite["cells"] + matrix.get("cells", []), "ttft": [lite["ttft"], *matrix.get("ttft", [])]}
    theirs = Metrics(combined, "litellm")
    out = [
        f"LiteLLM {lite['version']} proxy, one worker pinned like the router, master key, no database; same "
        "harness, mock and cells (ratios against the router matrix above).",
        "",
        "| cell | llm-router | LiteLLM | ratio |",
        "|---|---|---|---|",
    ]
    for label, mode, c, key, better in (
        ("non-stream c64 req/s", "non-stream", 64, "rps", True),
        ("non-stream c16 req/s", "non-stream", 16, "rps", True),
        ("stream c64 req/s", "stream", 64, "rps", True),
        ("CPU ms per non-stream request", "non-stream", 64, "cpu_ms_per_req", False),
        ("CPU ms per stream request", "stream", 64, "cpu_ms_per_req", False),
    ):
        a, b = ours.get(mode, c, key), theirs.get(mode, c, key)
        r = (a / b if better else b / a) if a and b else None
        out.append(f"| {label} | {fmt(a)} | {fmt(b)} | {fmt(r, 1, 'x')} |")
    for label, a, b in (
        ("added p50 at c1 (ms)", ours.added("p50_ms"), theirs.added("p50_ms")),
        ("TTFT added (ms)", ours.ttft_added(), theirs.ttft_added()),
        ("peak RSS (MiB)", matrix.get("peak_rss_mib"), lite.get("peak_rss_mib")),
    ):
        out.append(f"| {label} | {fmt(a, 3)} | {fmt(b, 3)} | {fmt(b / a if a and b and a > 0 else None, 1, 'x')} |")
    out += ["", *matrix_table(lite["cells"])]
    return out


def render(results: dict[str, Any]) -> str:
    mach = results.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in mach.get("versions", {}).items())
    matrix = results.get("matrix", {})
    lines = [
        BEGIN,
        "",
        f"Measured {mach.get('date')} at commit {mach.get('git')}: {mach.get('cpu')}, {mach.get('cores')} cores, "
        f"Python {mach.get('python')}; {versions}. Load generator: {mach.get('load_generator')}. "
        f"Pinning: {mach.get('pinning')}.",
        "",
        "### Targets (issues 6 and 19)",
        "",
        *targets_table(results),
        "",
    ]
    if matrix:
        ttft = ", ".join(
            f"{t['target']} p50 {t['p50_ms']} ms (n={t['n']}"
            + (f", median of {t['rounds']} rounds)" if "rounds" in t else ")")
            for t in matrix.get("ttft", [])
        )
        lines += [
            f"### The matrix ({matrix.get('duration_s')} s per cell, measured {matrix.get('measured_at')})",
            "",
            *matrix_table(matrix["cells"]),
            "",
            "Time to first token, stream with 10 ms between chunks (Python client, sequential, the targets in "
            f"turns): {ttft}.",
            "",
        ]
        for reason in matrix.get("skipped", {}).values():
            lines.append(f"- {reason}")
        lines += [
            "",
            "### Server and upstream transport (same router, `SERVER`, `UPSTREAM_TRANSPORT`) and the floors",
            "",
            *transport_table(matrix["cells"]),
            "",
        ]
    sections: list[tuple[str, str, Callable[[dict[str, Any]], list[str]]]] = [
        ("litellm", "LiteLLM, measured with the same harness", lambda s: litellm_lines(s, matrix)),
        ("soak", "Soak", soak_lines),
        ("analytics", "Analytics at scale", analytics_lines),
        ("workers", "--workers 2 vs --workers 1", workers_lines),
        ("profile", "Profile (py-spy)", profile_lines),
        ("ab", "Variants and the floor, measured in alternation", ab_lines),
    ]
    for key, title, render_section in sections:
        if results.get(key):
            lines += [
                f"### {title} (measured {results[key].get('measured_at')})",
                "",
                *render_section(results[key]),
                "",
            ]
    lines.append(END)
    return "\n".join(lines)


def update_readme(path: Path, results: dict[str, Any]) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + render(results) + tail)


def ab_lines(ab: dict[str, Any]) -> list[str]:
    """Medians over the rounds of an A/B run (`--variant ... --floor`), and each variant as a share of each floor."""
    summary = ab.get("summary", {})
    cells = sorted({c for by_cell in summary.values() for c in by_cell})
    out = [
        f"{ab.get('rounds')} rounds, every target measured once per cell per round (medians; CPU ms per request "
        "is the server process tree's own, the Langfuse exporter apart).",
        "",
        "| target | " + " | ".join(f"{c} req/s | {c} CPU ms/req" for c in cells) + " | others on its CPU |",
        "|---|" + "---|---|" * len(cells) + "---|",
    ]
    for name, by_cell in summary.items():
        values = " | ".join(
            f"{fmt(by_cell.get(c, {}).get('rps'), 0)} | {fmt(by_cell.get(c, {}).get('cpu_ms_per_req'), 3)}"
            for c in cells
        )
        noise = max((v.get("others_on_cpu_pct", 0) for v in by_cell.values()), default=0)
        out.append(f"| {name} | {values} | up to {noise:.0f} % |")
    ratios = ab.get("vs_floor", {})
    if ratios:
        floors = sorted({f for cells_ in ratios.values() for by_floor in cells_.values() for f in by_floor})
        out += [
            "",
            "Throughput as a share of each floor, median of the per-round ratios:",
            "",
            "| variant | cell | " + " | ".join(floors) + " |",
            "|---|---|" + "---|" * len(floors),
        ]
        for variant, by_cell in ratios.items():
            for cell_name, by_floor in sorted(by_cell.items()):
                shares = " | ".join(fmt(100 * by_floor[f], 0, " %") if f in by_floor else "—" for f in floors)
                out.append(f"| {variant} | {cell_name} | {shares} |")
    return out
