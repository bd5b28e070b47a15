// Live traffic: live charts from `usageTicks` (requests/s, tokens/s, errors/s, p50/p95 latency,
// spend/min; one message per interval whatever the traffic) above the requests as they finish,
// from the `requestLogged` subscription (after the latest few from `requestLogs`), filterable by
// user, backend and model. Reconnects by itself and says so; charts show a gap for the time it
// was disconnected and resume.

import { gql, subscribe } from "../graphql.js";
import { PALETTE, barChart, compactNumber, lineChart } from "../chart.js";
import { connectionStatus } from "../livestatus.js";
import { fmtUsd, openRequestDetail } from "./request-detail.js";
import { badge, clear, emptyRow, errorBox, fmtInt, fmtMs, fmtTime, h, labelCells, tableWrap } from "../ui.js";

const LOG_FIELDS = `id requestId createdAt userId userName backendId backendName model endpoint statusCode stream
  promptTokens completionTokens totalTokens latencyMs timeToFirstTokenMs error`;
const MAX_ROWS = 500;
const HISTORY = 50;
const TICK_S = 2; // usageTicks interval
const TICKS_KEPT = 60; // two minutes of live charts
const ERROR_RED = "#dc2626"; // errors are the one thing in red
const TICK_QUERY = `subscription Ticks($s: Int) {
  usageTicks(intervalS: $s) { at intervalS skipped rows { requests errors totalTokens costUsd p50LatencyMs p95LatencyMs } }
}`;

/** 0, 0.5, 12.3, 1.2k: rates stay short. */
function fmtRate(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  return v < 10 ? String(+v.toFixed(v < 1 ? 2 : 1)) : compactNumber(v);
}

/** A tick in per-second (per-minute for spend) numbers; null fields: the interval is unknown. */
function tickNumbers(tick) {
  const rows = tick.rows;
  const sum = (k) => rows.reduce((a, r) => a + (r[k] || 0), 0);
  const pick = (k) => (rows.length === 1 ? rows[0][k] : rows.length ? Math.max(...rows.map((r) => r[k] || 0)) : null);
  const per = tick.intervalS;
  return {
    requests: sum("requests") / per,
    ok: (sum("requests") - sum("errors")) / per,
    errors: sum("errors") / per,
    errorShare: sum("requests") ? sum("errors") / sum("requests") : null,
    tokens: sum("totalTokens") / per,
    spend: (sum("costUsd") * 60) / per,
    p50: pick("p50LatencyMs"),
    p95: pick("p95LatencyMs"),
  };
}

const UNKNOWN = { requests: null, ok: null, errors: null, errorShare: null, tokens: null, spend: null, p50: null, p95: null };

const PANELS = [
  {
    key: "requests",
    title: "Requests/s",
    series: [
      { name: "ok", color: PALETTE[0], get: (t) => t.ok },
      { name: "errors", color: ERROR_RED, get: (t) => t.errors },
    ],
    value: (t) => t.requests,
    readout: (t) => `${fmtRate(t.requests)} req/s`,
  },
  {
    key: "tokens",
    title: "Tokens/s",
    series: [{ name: "tokens/s", color: PALETTE[1], get: (t) => t.tokens }],
    value: (t) => t.tokens,
    readout: (t) => `${fmtRate(t.tokens)} tok/s`,
  },
  {
    key: "errors",
    title: "Errors/s",
    series: [{ name: "errors/s", color: ERROR_RED, get: (t) => t.errors }],
    value: (t) => t.errors,
    readout: (t) => `${fmtRate(t.errors)}/s${t.errorShare ? ` · ${Math.round(100 * t.errorShare)} %` : ""}`,
    bad: (t) => t.errors > 0,
  },
  {
    key: "latency",
    title: "Latency",
    hint: "p50 / p95 latency of the interval's requests, in ms",
    line: true,
    series: [
      { name: "p50", color: PALETTE[0], get: (t) => t.p50 },
      { name: "p95", color: PALETTE[3], get: (t) => t.p95 },
    ],
    value: (t) => t.p95,
    readout: (t) => (t.p50 === null ? "–" : `${fmtMs(t.p50).replace(" ms", "")} / ${fmtMs(t.p95)}`),
    formatValue: (v) => compactNumber(Math.round(v)), // ms (the y axis stays narrow)
  },
  {
    key: "spend",
    title: "Spend/min",
    series: [{ name: "USD/min", color: PALETTE[2], get: (t) => t.spend }],
    value: (t) => t.spend,
    readout: (t) => `${fmtUsd(t.spend)}/min`,
    formatValue: fmtUsd,
  },
];

function clockTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/**
 * The live charts: `host` gets one panel per metric; `add(tick)` folds a usageTicks message in.
 * Intervals before the subscription, skipped by a slow reader or lost while disconnected are gaps
 * (unknown), never zeros.
 */
function liveCharts(host) {
  const ticks = []; // {at: ms, n: numbers}
  const panels = PANELS.map((p) => {
    const readout = h("span.readout", "–");
    const el = h(`figure.chart-panel.quiet#live-${p.key}`, { dataset: { metric: p.key, ticks: "0" }, title: p.hint || "" }, h("figcaption", h("span", p.title), readout));
    host.append(el);
    return { p, el, readout, chart: null };
  });
  function data(p) {
    return {
      times: ticks.map((t) => t.at),
      series: p.series.map((ser) => ({ name: ser.name, color: ser.color, values: ticks.map((t) => ser.get(t.n)) })),
      formatTime: (ms, long) => (long ? fmtTime(new Date(ms).toISOString()) : clockTime(ms)),
      formatValue: p.formatValue,
      integer: false,
      height: 130,
      minWidth: 150,
      title: p.title,
    };
  }
  function add(tick) {
    const at = Date.parse(tick.at);
    const step = tick.intervalS * 1000;
    if (!ticks.length) for (let i = TICKS_KEPT - 1; i > 0; i -= 1) ticks.push({ at: at - i * step, n: UNKNOWN });
    const last = ticks[ticks.length - 1].at;
    if (at <= last) return; // a tick we already have (e.g. re-sent after a reconnect)
    // skipped by a slow reader, or lost while disconnected: unknown, shown as a gap
    for (let t = Math.max(last + step, at - TICKS_KEPT * step); t < at; t += step) ticks.push({ at: t, n: UNKNOWN });
    const n = tickNumbers(tick);
    ticks.push({ at, n });
    while (ticks.length > TICKS_KEPT) ticks.shift();
    const known = ticks.filter((t) => t.n.requests !== null);
    host.dataset.ticks = String(known.length);
    host.dataset.lastAt = String(at);
    host.dataset.requests = String(Math.round(known.reduce((a, t) => a + t.n.requests * tick.intervalS, 0)));
    for (const panel of panels) {
      const value = panel.p.value(n);
      panel.readout.textContent = panel.p.readout(n);
      panel.readout.classList.toggle("bad", Boolean(panel.p.bad && panel.p.bad(n)));
      panel.el.classList.toggle("quiet", !value);
      panel.el.dataset.value = value === null ? "" : String(value);
      panel.el.dataset.ticks = String(known.length);
      if (!panel.chart) panel.chart = (panel.p.line ? lineChart : barChart)(panel.el, data(panel.p));
      else panel.chart.update(data(panel.p));
    }
  }
  return {
    add,
    destroy: () => panels.forEach((panel) => panel.chart && panel.chart.destroy()),
  };
}

export async function mount(el) {
  const rows = []; // newest first
  const seen = new Set();
  let paused = false;
  let pending = 0;

  const userFilter = h("select#filter-user", { "aria-label": "Filter by user" }, h("option", { value: "" }, "All users"));
  const backendFilter = h("select#filter-backend", { "aria-label": "Filter by backend" }, h("option", { value: "" }, "All backends"));
  const modelFilter = h("input#filter-model", { type: "search", placeholder: "Model contains…", "aria-label": "Filter by model" });
  const errorsOnly = h("input#filter-errors", { type: "checkbox" });
  const pauseBtn = h("button#pause-feed", { type: "button", onclick: () => togglePause() }, "Pause");
  const connection = connectionStatus();
  const counter = h("span.muted.counter");
  const status = h("div.status-area");
  const tbody = h("tbody#feed");
  let table = null;

  const liveChartHost = h("section.live-charts#live-chart", { dataset: { ticks: "0", requests: "0" }, "aria-label": `Live charts, last ${(TICK_S * TICKS_KEPT) / 60} minutes, all router processes` });
  const charts = liveCharts(liveChartHost);

  clear(el).append(
    liveChartHost,
    h(
      "div.toolbar.filters",
      userFilter,
      backendFilter,
      modelFilter,
      h("label.check", errorsOnly, h("span", "Errors only")),
      h("span.spacer"),
      connection,
      pauseBtn,
    ),
    status,
    tableWrap(
      (table = h(
        "table.data.feed-table.stack-sm",
        h(
          "thead",
          h(
            "tr",
            h("th", "Time"),
            h("th", "User"),
            h("th", "Backend"),
            h("th", "Model"),
            h("th", "Status"),
            h("th.num", { title: "prompt + completion = total" }, "Tokens"),
            h("th.num", "Latency"),
            h("th.num", { title: "Time to first token" }, "TTFT"),
            h("th.hide-sm", "Endpoint"),
          ),
        ),
        tbody,
      )),
    ),
    counter,
  );

  for (const input of [userFilter, backendFilter, errorsOnly]) input.addEventListener("change", draw);
  modelFilter.addEventListener("input", draw);

  function matches(log) {
    if (userFilter.value && String(log.userId) !== userFilter.value) return false;
    if (backendFilter.value && String(log.backendId) !== backendFilter.value) return false;
    const m = modelFilter.value.trim().toLowerCase();
    if (m && !(log.model || "").toLowerCase().includes(m)) return false;
    if (errorsOnly.checked && log.statusCode < 400 && !log.error) return false;
    return true;
  }

  function statusBadge(log) {
    const kind = log.statusCode >= 500 ? "bad" : log.statusCode >= 400 ? "warn" : "ok";
    const b = badge(String(log.statusCode), kind);
    if (log.error) b.title = log.error;
    return b;
  }

  function rowFor(log, fresh) {
    return h(
      `tr.clickable${fresh ? ".fresh" : ""}`,
      {
        dataset: { requestId: log.requestId, logId: log.id, user: log.userName || "", backend: log.backendName || "", model: log.model || "" },
        title: "Open the request detail",
        tabIndex: 0,
        onclick: () => openRequestDetail(log.id),
        onkeydown: (e) => e.key === "Enter" && openRequestDetail(log.id),
      },
      h("td", { title: log.createdAt }, fmtTime(log.createdAt)),
      h("td", log.userName || h("span.muted", log.userId ? `#${log.userId}` : "–")),
      h("td", log.backendName || h("span.muted", "–")),
      h("td.model", log.model || h("span.muted", "–"), log.stream ? h("span.chip.small", { title: "streamed" }, "stream") : null),
      h("td", statusBadge(log), log.error ? h("div.err-text", log.error) : null),
      h("td.num", { title: `${log.promptTokens} prompt + ${log.completionTokens} completion` }, fmtInt(log.totalTokens)),
      h("td.num", fmtMs(log.latencyMs)),
      h("td.num", fmtMs(log.timeToFirstTokenMs)),
      h("td.hide-sm", h("code", log.endpoint)),
    );
  }

  function draw() {
    clear(tbody);
    const shown = rows.filter(matches);
    if (!shown.length) tbody.append(emptyRow(9, rows.length ? "No request matches the filters." : "Waiting for requests… they appear here as soon as they finish."));
    for (const log of shown.slice(0, MAX_ROWS)) tbody.append(rowFor(log, false));
    labelCells(table);
    counter.textContent = `${shown.length} of ${rows.length} requests shown${paused ? ` · paused (${pending} new)` : ""}`;
  }

  function addOption(select, id, label) {
    if (id === null || id === undefined) return;
    const value = String(id);
    if ([...select.options].some((o) => o.value === value)) return;
    select.append(h("option", { value }, label || `#${value}`));
  }

  function add(log, { live = true } = {}) {
    if (seen.has(log.id)) return;
    seen.add(log.id);
    addOption(userFilter, log.userId, log.userName);
    addOption(backendFilter, log.backendId, log.backendName);
    if (!live) {
      rows.push(log);
      return;
    }
    rows.unshift(log);
    if (rows.length > MAX_ROWS) seen.delete(rows.pop().id);
    if (paused) {
      pending += 1;
      counter.textContent = `${rows.length} requests · paused (${pending} new)`;
      return;
    }
    if (matches(log)) {
      const empty = tbody.querySelector("tr.empty");
      if (empty) empty.remove();
      tbody.prepend(rowFor(log, true));
      labelCells(table);
      while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
    }
    counter.textContent = `${tbody.rows.length} of ${rows.length} requests shown`;
  }

  function togglePause() {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    pending = 0;
    draw();
  }

  async function loadOptions() {
    try {
      const data = await gql("query Names { users { id name } backends { id name } }");
      data.users.forEach((u) => addOption(userFilter, u.id, u.name));
      data.backends.forEach((b) => addOption(backendFilter, b.id, b.name));
    } catch {
      /* the filters still fill from the feed */
    }
  }

  async function loadHistory() {
    try {
      const data = await gql(`query Recent($first: Int) { requestLogs(first: $first) { items { ${LOG_FIELDS} } } }`, { first: HISTORY });
      for (const log of data.requestLogs.items) add(log, { live: false });
      rows.sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
      clear(status);
    } catch (err) {
      clear(status).append(errorBox(err, { retry: loadHistory }));
    }
    draw();
  }

  draw();
  // Subscribe first so nothing finishing meanwhile is missed; history is merged in by id.
  const unsubscribe = subscribe(`subscription Feed { requestLogged { ${LOG_FIELDS} } }`, {}, {
    next: (data) => add(data.requestLogged),
    error: (err) => clear(status).append(errorBox(err)),
    // Whatever finished while the connection was down is in the log: fetch it.
    reconnected: () => loadHistory(),
  });
  const unsubscribeTicks = subscribe(TICK_QUERY, { s: TICK_S }, {
    next: (data) => charts.add(data.usageTicks),
    error: () => (liveChartHost.hidden = true),
  });
  await Promise.all([loadOptions(), loadHistory()]);

  return () => {
    unsubscribeTicks();
    charts.destroy();
    unsubscribe();
    connection.stop();
  };
}
