// Live traffic: requests as they finish, from the `requestLogged` subscription (after the latest
// few from `requestLogs`), filterable by user, backend and model. Reconnects by itself.

import { gql, subscribe, subscriptions } from "../graphql.js";
import { PALETTE, barChart } from "../chart.js";
import { openRequestDetail } from "./request-detail.js";
import { badge, clear, emptyRow, errorBox, fmtInt, fmtMs, fmtTime, h, labelCells, tableWrap } from "../ui.js";

const LOG_FIELDS = `id requestId createdAt userId userName backendId backendName model endpoint statusCode stream
  promptTokens completionTokens totalTokens latencyMs timeToFirstTokenMs error`;
const MAX_ROWS = 500;
const HISTORY = 50;
const TICK_S = 2; // usageTicks interval
const TICKS_KEPT = 60; // two minutes of live chart
const ERROR_RED = "#dc2626"; // errors are the one thing in red

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
  const connection = h("span.conn#connection", { "aria-live": "polite" });
  const counter = h("span.muted.counter");
  const status = h("div.status-area");
  const tbody = h("tbody#feed");
  let table = null;

  // Live chart: requests (and errors) per interval, from the usageTicks subscription.
  const ticks = []; // {at: ms, requests, errors}
  const liveChartHost = h("figure.chart-panel.live-chart#live-chart", { dataset: { ticks: "0" } }, h("figcaption", `Requests per ${TICK_S} s, last ${(TICK_S * TICKS_KEPT) / 60} minutes (all processes)`));
  let liveChart = null;
  function chartData() {
    return {
      times: ticks.map((t) => t.at),
      series: [
        { name: "ok", color: PALETTE[0], values: ticks.map((t) => (t.requests === null ? null : t.requests - t.errors)) },
        { name: "errors", color: ERROR_RED, values: ticks.map((t) => t.errors) },
      ],
      formatTime: (ms) => fmtTime(new Date(ms).toISOString()),
      title: "Live requests",
    };
  }
  function addTick(tick) {
    const at = Date.parse(tick.at);
    const sum = (k) => tick.rows.reduce((a, r) => a + r[k], 0);
    // The window starts full-width: intervals before the subscription are empty (null), not zero.
    if (!ticks.length) for (let i = TICKS_KEPT - 1; i > 0; i -= 1) ticks.push({ at: at - i * tick.intervalS * 1000, requests: null, errors: null });
    // Intervals a slow reader skipped are shown as gaps (zero), not guessed.
    for (let i = tick.skipped; i > 0; i -= 1) ticks.push({ at: at - i * tick.intervalS * 1000, requests: 0, errors: 0 });
    ticks.push({ at, requests: sum("requests"), errors: sum("errors") });
    while (ticks.length > TICKS_KEPT) ticks.shift();
    liveChartHost.dataset.ticks = String(ticks.filter((t) => t.requests !== null).length);
    liveChartHost.dataset.requests = String(ticks.reduce((a, t) => a + (t.requests || 0), 0));
    if (!liveChart) liveChart = barChart(liveChartHost, chartData());
    else liveChart.update(chartData());
  }

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

  const stopStatus = subscriptions.onStatus((state, info) => {
    connection.className = `conn ${state}`;
    connection.dataset.state = state;
    if (state === "connected") connection.textContent = "● Live";
    else if (state === "connecting") connection.textContent = "● Connecting…";
    else if (state === "waiting") {
      const secs = Math.max(1, Math.round((info.retryAt - Date.now()) / 1000));
      connection.textContent = `● Reconnecting in ${secs}s`;
      connection.title = info.reason || "";
    } else if (state === "failed") connection.textContent = `● ${info.reason || "Disconnected"}`;
    else connection.textContent = "● Offline";
  });

  draw();
  // Subscribe first so nothing finishing meanwhile is missed; history is merged in by id.
  const unsubscribe = subscribe(`subscription Feed { requestLogged { ${LOG_FIELDS} } }`, {}, {
    next: (data) => add(data.requestLogged),
    error: (err) => clear(status).append(errorBox(err)),
    // Whatever finished while the connection was down is in the log: fetch it.
    reconnected: () => loadHistory(),
  });
  const unsubscribeTicks = subscribe(
    `subscription Ticks($s: Int) { usageTicks(intervalS: $s) { at intervalS skipped rows { requests errors } } }`,
    { s: TICK_S },
    { next: (data) => addTick(data.usageTicks), error: () => (liveChartHost.hidden = true) },
  );
  await Promise.all([loadOptions(), loadHistory()]);

  return () => {
    unsubscribeTicks();
    if (liveChart) liveChart.destroy();
    unsubscribe();
    stopStatus();
  };
}
