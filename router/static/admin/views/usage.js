// Usage: requests, tokens, errors and spend over the last hour / day / month, grouped by user,
// model or backend (from `usage`), and the backends' current metrics (from `backendMetrics`).
//
// The "last hour" view is live: it subscribes to `usageTicks` (every TICK_S seconds, grouped like
// the view) and folds each tick into its minute, instead of re-running the hour query: a tick costs
// the router the same whatever the traffic, while the minute-bucket query reads up to an hour of
// the request log (millions of rows at high traffic). The seam is anchored on the server's clock:
// the first tick after a (re)load gives a boundary B (its `at`); the rows are queried with
// `until: B` and only ticks that start at or after B are folded in, so nothing is counted twice or
// lost to clock skew. (The log files a request under the minute it started, ticks under the second
// it finished: a request in flight at B is in both, until the next reconcile moves B.) The anchor
// is renewed every RECONCILE_MS, after a reconnect and when ticks were skipped; other ranges
// refresh every REFRESH_MS.

import { gql, subscribe } from "../graphql.js";
import { barChart, stableColors } from "../chart.js";
import { connectionStatus } from "../livestatus.js";
import { healthBadge } from "./backends.js";
import { fmtUsd } from "./request-detail.js";
import { clear, errorBox, fmtInt, fmtMs, fmtPct, fmtTime, h, tableWrap } from "../ui.js";

const RANGES = {
  hour: { label: "Last hour", ms: 3600e3, bucket: "MINUTE", step: 60e3 },
  day: { label: "Last day", ms: 86400e3, bucket: "HOUR", step: 3600e3 },
  month: { label: "Last month", ms: 30 * 86400e3, bucket: "DAY", step: 86400e3 },
  custom: { label: "Dates…" },
};
const MAX_CUSTOM_DAYS = 366;
const GROUPS = {
  USER: { label: "User", key: (r) => r.userId ?? null, name: (r) => r.userName || (r.userId ? `#${r.userId}` : "(no user)") },
  MODEL: { label: "Model", key: (r) => r.model ?? null, name: (r) => r.model || "(no model)" },
  BACKEND: { label: "Backend", key: (r) => r.backendId ?? null, name: (r) => r.backendName || (r.backendId ? `#${r.backendId}` : "(no backend)") },
};
const METRICS = [
  { key: "requests", title: "Requests", get: (r) => r.requests },
  { key: "tokens", title: "Tokens", get: (r) => r.totalTokens },
  { key: "errors", title: "Errors", get: (r) => r.errors },
  { key: "spend", title: "Spend (USD)", get: (r) => r.costUsd || 0, formatValue: fmtUsd, integer: false },
];
const MAX_SERIES = 8;
const REFRESH_MS = 15000;
const TICK_S = 5; // the live hour view's usageTicks interval (divides a minute)
const RECONCILE_MS = 10 * 60e3;
const METRIC_FIELDS = "backend { id name isActive healthy } inFlight requests errors p50LatencyMs p95LatencyMs";
const METRICS_REFRESH_MS = 60e3; // the backends table in the live hour view (it reads the log too)
const METRICS_QUERY = `query BackendMetrics($since: DateTime) { backendMetrics(since: $since) { ${METRIC_FIELDS} } }`;
const ANCHOR_DELAY_MS = 700; // after the anchor tick: the log writer's batches (0.2 s) are in the database
const ROW_FIELDS = "userId userName backendId backendName model requests errors promptTokens completionTokens totalTokens avgLatencyMs costUsd";
const TICKS_QUERY = `subscription UsageLive($s: Int, $groupBy: [UsageGroupBy!]) {
  usageTicks(intervalS: $s, groupBy: $groupBy) { at intervalS skipped rows { ${ROW_FIELDS} } }
}`;

const USAGE_QUERY = `query Usage($filter: UsageFilter, $groupBy: [UsageGroupBy!], $bucket: TimeBucket, $since: DateTime) {
  usage(filter: $filter, groupBy: $groupBy, bucket: $bucket) {
    bucketStart ${ROW_FIELDS}
  }
  backendMetrics(since: $since) { ${METRIC_FIELDS} }
}`;

function segmented(name, options, value, onChange) {
  const el = h("div.segmented", { role: "radiogroup", "aria-label": name });
  for (const [v, label] of options) {
    el.append(
      h(`button${v === value ? ".on" : ""}`, {
        type: "button",
        role: "radio",
        "aria-checked": String(v === value),
        dataset: { value: v },
        onclick: (event) => {
          el.querySelectorAll("button").forEach((b) => {
            b.classList.toggle("on", b === event.currentTarget);
            b.setAttribute("aria-checked", String(b === event.currentTarget));
          });
          onChange(v);
        },
      }, label),
    );
  }
  return el;
}

function floorTo(ms, step) {
  return Math.floor(ms / step) * step;
}

export async function mount(el) {
  let range = "hour";
  let groupBy = "USER";
  let charts = [];
  let timer = null;
  let metricsTimer = null;
  let rows = []; // the shown rows: the query's, plus folded ticks in the live hour view
  let metrics = [];
  let live = null; // {unsubscribe, groupBy, anchor: ms or null, anchoring: bool, pending: ticks meanwhile}

  const status = h("div.status-area");
  let connection = null;
  const updated = h("span.muted.updated");
  const summary = h("div.cards");
  const legend = h("div.legend");
  const chartsHost = h("div.charts");
  const totalsHost = h("div.totals");
  const metricsBody = h("tbody#backend-metrics");
  const today = new Date().toISOString().slice(0, 10);
  const fromDate = h("input#usage-from", { type: "date", value: today, "aria-label": "From (day)" });
  const untilDate = h("input#usage-until", { type: "date", value: today, "aria-label": "Until (day, included)" });
  const customBox = h("span.custom-range#custom-range", { hidden: true }, fromDate, h("span.muted", " to "), untilDate);
  for (const input of [fromDate, untilDate]) input.addEventListener("change", () => refresh());

  /** The time window shown: {start, end (ms), bucket, step, kind}; custom days are local days. */
  function windowOf() {
    const now = Date.now();
    if (range !== "custom") {
      const r = RANGES[range];
      return { start: floorTo(now - r.ms, r.step) + r.step, end: null, last: now, bucket: r.bucket, step: r.step, kind: range };
    }
    const start = new Date(`${fromDate.value}T00:00`).getTime();
    const end = new Date(`${untilDate.value}T00:00`).getTime() + 86400e3;
    if (!Number.isFinite(start) || !Number.isFinite(end) || end <= start) throw new Error("Pick a start day on or before the end day.");
    if (end - start > MAX_CUSTOM_DAYS * 86400e3) throw new Error(`Pick at most ${MAX_CUSTOM_DAYS} days.`);
    const hourly = end - start <= 3 * 86400e3;
    const step = hourly ? 3600e3 : 86400e3;
    return { start: floorTo(start, step), end, last: Math.min(end - 1, now), bucket: hourly ? "HOUR" : "DAY", step, kind: hourly ? "day" : "month" };
  }

  clear(el).append(
    h(
      "div.toolbar",
      segmented("Time range", Object.entries(RANGES).map(([k, r]) => [k, r.label]), range, (v) => { range = v; customBox.hidden = v !== "custom"; refresh(); }),
      customBox,
      segmented("Group by", Object.entries(GROUPS).map(([k, g]) => [k, `By ${g.label.toLowerCase()}`]), groupBy, (v) => { groupBy = v; refresh(); }),
      h("span.spacer"),
      updated,
      (connection = connectionStatus("usage-connection")),
      h("button#refresh-usage", { type: "button", onclick: () => refresh() }, "Refresh"),
    ),
    status,
    summary,
    legend,
    chartsHost,
    h("section", h("h2", "Totals"), totalsHost),
    h(
      "section",
      h("h2", "Backends"),
      tableWrap(
        h(
          "table.data.metrics-table",
          h("thead", h("tr", h("th", "Backend"), h("th", "Health"), h("th.num", "In flight"), h("th.num", "Requests"), h("th.num", "Errors"), h("th.num", "Error rate"), h("th.num", "p50"), h("th.num", "p95"))),
          metricsBody,
        ),
      ),
    ),
  );

  function formatTime(ms, long) {
    const d = new Date(ms);
    const kind = range === "custom" ? (current ? current.kind : "month") : range;
    if (kind === "hour") return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (kind === "day") return long ? d.toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" }) : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return d.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  let current = null; // the window of the latest refresh
  function build(rows) {
    const r = current;
    const g = GROUPS[groupBy];
    const times = [];
    for (let t = r.start; t <= r.last; t += r.step) times.push(t);
    const index = new Map(times.map((t, i) => [t, i]));
    const groups = new Map(); // key -> {name, values per metric, totals}
    for (const row of rows) {
      const key = String(g.key(row));
      if (!groups.has(key)) {
        groups.set(key, { id: `${groupBy}:${key}`, neutral: g.key(row) === null, name: g.name(row), values: METRICS.map(() => new Array(times.length).fill(0)), totals: { requests: 0, errors: 0, totalTokens: 0, promptTokens: 0, completionTokens: 0, costUsd: 0, latencySum: 0, latencyN: 0 } });
      }
      const grp = groups.get(key);
      const t = row.bucketStart ? floorTo(Date.parse(row.bucketStart), r.step) : null;
      const i = index.has(t) ? index.get(t) : t !== null && t < r.start ? -1 : times.length - 1;
      if (i >= 0) METRICS.forEach((metric, k) => (grp.values[k][i] += metric.get(row)));
      grp.totals.requests += row.requests;
      grp.totals.errors += row.errors;
      grp.totals.totalTokens += row.totalTokens;
      grp.totals.promptTokens += row.promptTokens;
      grp.totals.completionTokens += row.completionTokens;
      grp.totals.costUsd += row.costUsd || 0;
      if (row.avgLatencyMs !== null && row.avgLatencyMs !== undefined) {
        grp.totals.latencySum += row.avgLatencyMs * row.requests;
        grp.totals.latencyN += row.requests;
      }
    }
    let list = [...groups.values()].sort((a, b) => b.totals.requests - a.totals.requests || b.totals.totalTokens - a.totals.totalTokens);
    if (list.length > MAX_SERIES) {
      const rest = list.slice(MAX_SERIES - 1);
      const other = { id: "others", neutral: true, name: `${rest.length} others`, values: METRICS.map((_, k) => times.map((_, i) => rest.reduce((a, x) => a + x.values[k][i], 0))), totals: {} };
      for (const key of Object.keys(rest[0].totals)) other.totals[key] = rest.reduce((a, x) => a + x.totals[key], 0);
      list = [...list.slice(0, MAX_SERIES - 1), other];
    }
    const colors = stableColors(list);
    list.forEach((grp, i) => (grp.color = colors[i]));
    return { times, list };
  }

  function drawSummary(list) {
    const t = list.reduce(
      (a, g) => ({
        requests: a.requests + g.totals.requests,
        errors: a.errors + g.totals.errors,
        tokens: a.tokens + g.totals.totalTokens,
        cost: a.cost + g.totals.costUsd,
        latencySum: a.latencySum + g.totals.latencySum,
        latencyN: a.latencyN + g.totals.latencyN,
      }),
      { requests: 0, errors: 0, tokens: 0, cost: 0, latencySum: 0, latencyN: 0 },
    );
    const card = (label, value, cls) => h(`div.card${cls ? `.${cls}` : ""}`, h("div.card-value", value), h("div.card-label", label));
    clear(summary).append(
      card("Requests", fmtInt(t.requests)),
      card("Tokens", fmtInt(t.tokens)),
      card("Errors", fmtInt(t.errors), t.errors ? "bad" : null),
      card("Error rate", t.requests ? fmtPct(t.errors / t.requests) : "–"),
      card("Avg latency", t.latencyN ? fmtMs(t.latencySum / t.latencyN) : "–"),
      card("Spend", fmtUsd(t.cost)),
    );
  }

  function drawCharts({ times, list }) {
    clear(legend).append(
      ...(list.length
        ? list.map((g) => h("span.legend-item", h("i", { style: { background: g.color } }), g.name))
        : [h("span.muted", range === "custom" ? "No requests between those days." : `No requests in the ${RANGES[range].label.toLowerCase()}.`)]),
    );
    const datasets = METRICS.map((metric, k) => ({
      key: metric.key,
      title: metric.title,
      times,
      formatTime,
      formatValue: metric.formatValue,
      integer: metric.integer,
      series: list.map((g) => ({ name: g.name, color: g.color, values: g.values[k] })),
    }));
    if (charts.length !== datasets.length) {
      charts.forEach((c) => c.destroy());
      clear(chartsHost);
      charts = datasets.map((d) => {
        const panel = h("figure.chart-panel", { dataset: { metric: d.key } }, h("figcaption", d.title));
        chartsHost.append(panel);
        return barChart(panel, d);
      });
    } else {
      charts.forEach((c, i) => c.update(datasets[i]));
    }
  }

  function drawTotals(list) {
    const max = Math.max(1, ...list.map((g) => g.totals.requests));
    clear(totalsHost).append(
      list.length
        ? tableWrap(
          h(
            "table.data.totals-table",
            h("thead", h("tr", h("th", GROUPS[groupBy].label), h("th", "Requests"), h("th.num", "Prompt tokens"), h("th.num", "Completion tokens"), h("th.num", "Errors"), h("th.num", "Avg latency"), h("th.num", "Spend"))),
            h(
              "tbody",
              list.map((g) =>
                h(
                  "tr",
                  h("td", h("span.legend-item", h("i", { style: { background: g.color } }), g.name)),
                  h("td.bar-cell", h("div.bar", h("div.bar-fill", { style: { width: `${(100 * g.totals.requests) / max}%`, background: g.color } }), h("span", fmtInt(g.totals.requests)))),
                  h("td.num", fmtInt(g.totals.promptTokens)),
                  h("td.num", fmtInt(g.totals.completionTokens)),
                  h("td.num", fmtInt(g.totals.errors)),
                  h("td.num", g.totals.latencyN ? fmtMs(g.totals.latencySum / g.totals.latencyN) : "–"),
                  h("td.num", { dataset: { costUsd: String(g.totals.costUsd) } }, fmtUsd(g.totals.costUsd)),
                ),
              ),
            ),
          ),
        )
        : h("p.muted", "Nothing yet."),
    );
  }

  function drawMetrics(metrics) {
    clear(metricsBody);
    if (!metrics.length) metricsBody.append(h("tr.empty", h("td", { colSpan: 8 }, "No backends.")));
    for (const m of metrics) {
      metricsBody.append(
        h(
          "tr",
          { dataset: { backendId: m.backend.id } },
          h("td", m.backend.name),
          h("td", healthBadge(m.backend)),
          h("td.num", fmtInt(m.inFlight)),
          h("td.num", fmtInt(m.requests)),
          h("td.num", fmtInt(m.errors)),
          h("td.num", m.requests ? fmtPct(m.errors / m.requests) : "–"),
          h("td.num", fmtMs(m.p50LatencyMs)),
          h("td.num", fmtMs(m.p95LatencyMs)),
        ),
      );
    }
  }

  function redraw() {
    const built = build(rows);
    drawSummary(built.list);
    drawCharts(built);
    drawTotals(built.list);
    drawMetrics(metrics);
    chartsHost.dataset.live = live ? "true" : "false";
  }

  // --- the live hour view: usageTicks folded into minutes ---

  function stopLive() {
    if (live) live.unsubscribe();
    live = null;
    connection.hidden = true;
  }

  function startLive() {
    if (live && live.groupBy === groupBy) return;
    stopLive();
    const mine = { groupBy, anchor: null, anchoring: false, pending: [] };
    mine.unsubscribe = subscribe(TICKS_QUERY, { s: TICK_S, groupBy: [groupBy] }, {
      next: (data) => {
        if (live !== mine) return;
        const tick = data.usageTicks;
        if (tick.skipped) mine.anchor = null; // what the skipped ticks said is in the log: re-anchor
        if (mine.anchor !== null) fold(tick);
        else if (mine.anchoring) mine.pending.push(tick);
        else {
          mine.anchoring = true; // this tick's end is the seam: rows before it from the log, ticks after
          mine.pending = [];
          setTimeout(() => live === mine && refresh(Date.parse(tick.at)), ANCHOR_DELAY_MS);
        }
      },
      reconnected: () => {
        if (live === mine && !mine.anchoring) mine.anchor = null; // fill the time it was down from the log
      },
    });
    live = mine;
    connection.hidden = false;
  }

  /** Adds a tick's rows to its minute; ticks that started before the anchor are in the queried rows. */
  function fold(tick) {
    const start = Date.parse(tick.at) - tick.intervalS * 1000;
    if (start < live.anchor) return;
    const bucketStart = new Date(floorTo(start, 60e3)).toISOString();
    for (const row of tick.rows) rows.push({ ...row, bucketStart });
    current = windowOf(); // the hour slides
    const first = current.start;
    rows = rows.filter((r) => !r.bucketStart || Date.parse(r.bucketStart) >= first);
    redraw();
    chartsHost.dataset.ticks = String(Number(chartsHost.dataset.ticks || 0) + 1);
    updated.textContent = `Updated ${fmtTime(new Date())}`;
  }

  let seq = 0;
  /** Queries the rows; `anchor` (ms, a tick's end, live hour view only): up to there, and ticks fold in after. */
  async function refresh(anchor = null) {
    const mine = ++seq;
    if (range === "hour") startLive();
    else stopLive();
    if (anchor === null && live) {
      live.anchor = null; // the next tick anchors a fresh query
      live.anchoring = false;
    }
    try {
      const r = windowOf();
      current = r;
      const since = new Date(r.start).toISOString();
      const until = anchor !== null ? anchor : r.end;
      const filter = until === null ? { since } : { since, until: new Date(until).toISOString() };
      const data = await gql(USAGE_QUERY, { filter, groupBy: [groupBy], bucket: r.bucket, since });
      if (mine !== seq) return;
      rows = data.usage;
      metrics = data.backendMetrics;
      redraw();
      clear(status);
      updated.textContent = `Updated ${fmtTime(new Date())}`;
      if (live && anchor !== null) {
        live.anchor = anchor;
        live.anchoring = false;
        const pending = live.pending;
        live.pending = [];
        pending.forEach(fold);
      }
    } catch (err) {
      if (mine === seq) clear(status).append(errorBox(err, { retry: () => refresh() }));
      if (live && mine === seq) live.anchoring = false; // the next tick tries again
    }
    if (mine !== seq) return;
    clearTimeout(timer);
    timer = live
      ? setTimeout(() => live && !live.anchoring && (live.anchor = null), RECONCILE_MS) // the next tick re-anchors
      : setTimeout(() => refresh(), REFRESH_MS);
    clearInterval(metricsTimer);
    metricsTimer = live ? setInterval(refreshMetrics, METRICS_REFRESH_MS) : null;
  }

  async function refreshMetrics() {
    try {
      const data = await gql(METRICS_QUERY, { since: new Date(windowOf().start).toISOString() });
      metrics = data.backendMetrics;
      drawMetrics(metrics);
    } catch {
      /* shown by the next full refresh */
    }
  }

  await refresh();
  return () => {
    seq += 1;
    clearTimeout(timer);
    clearInterval(metricsTimer);
    stopLive();
    connection.stop();
    charts.forEach((c) => c.destroy());
  };
}
