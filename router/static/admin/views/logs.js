// Logs: the request log through `requestLogs`, filtered by the server (user, backend, model, status,
// endpoint, date range) and paged by cursor; a row opens its detail; the filter exports as CSV/JSONL.

import { gql } from "../graphql.js";
import { DETAIL_FIELDS, fmtUsd, openRequestDetail } from "./request-detail.js";
import { badge, clear, emptyRow, errorBox, fmtDate, fmtInt, fmtMs, h, labelCells, tableWrap, toast } from "../ui.js";

const PAGE_SIZES = [25, 50, 100, 200];
const EXPORT_PAGE = 500; // the server's maximum page (GRAPHQL_MAX_PAGE, fixed at 500)
export const EXPORT_MAX_ROWS = 20000; // an export stops here (and says so)
const CSV_COLUMNS = DETAIL_FIELDS.split(/\s+/).filter(Boolean);

function localToIso(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = Array.isArray(value) ? value.join(" | ") : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export async function mount(el) {
  let cursors = [null]; // cursor of each page shown so far; the last is the current page's
  let nextCursor = null;
  let totalCount = 0;

  const user = h("select#logs-user", { "aria-label": "User" }, h("option", { value: "" }, "All users"));
  const backend = h("select#logs-backend", { "aria-label": "Backend" }, h("option", { value: "" }, "All backends"));
  const model = h("input#logs-model", { type: "search", placeholder: "Model (exact)", "aria-label": "Model" });
  const endpoint = h("input#logs-endpoint", { type: "search", placeholder: "Endpoint, e.g. /v1/embeddings", "aria-label": "Endpoint" });
  const statusSel = h(
    "select#logs-status",
    { "aria-label": "Status" },
    h("option", { value: "" }, "Any status"),
    h("option", { value: "errors" }, "Errors (≥ 400)"),
    ["200", "400", "401", "403", "404", "429", "500", "502", "503", "504"].map((c) => h("option", { value: c }, c)),
  );
  const since = h("input#logs-since", { type: "datetime-local", "aria-label": "From" });
  const until = h("input#logs-until", { type: "datetime-local", "aria-label": "Until" });
  const pageSize = h("select#logs-page-size", { "aria-label": "Rows per page" }, PAGE_SIZES.map((n) => h("option", { value: n, selected: n === 50 }, `${n} / page`)));
  const status = h("div.status-area");
  const tbody = h("tbody#logs");
  const info = h("span.muted#logs-info");
  const prev = h("button#logs-prev", { type: "button", onclick: () => go(-1) }, "‹ Newer");
  const next = h("button#logs-next", { type: "button", onclick: () => go(1) }, "Older ›");
  const table = h(
    "table.data.logs-table.stack-sm",
    h(
      "thead",
      h("tr", ["Time", "User", "Backend", "Model", "Status", "Tokens", "Cost", "Latency"].map((t) => h(t === "Tokens" || t === "Cost" || t === "Latency" ? "th.num" : "th", t)), h("th.hide-sm", "Endpoint")),
    ),
    tbody,
  );
  clear(el).append(
    h(
      "form.toolbar.filters#logs-filters",
      { onsubmit: (e) => (e.preventDefault(), reset()) },
      user, backend, model, endpoint, statusSel,
      h("label.inline", h("span.muted", "From "), since),
      h("label.inline", h("span.muted", "until "), until),
      h("button.primary#logs-apply", { type: "submit" }, "Apply"),
      h("span.spacer"),
      h("button#export-csv", { type: "button", onclick: () => exportAs("csv") }, "Export CSV"),
      h("button#export-jsonl", { type: "button", onclick: () => exportAs("jsonl") }, "Export JSONL"),
    ),
    status,
    tableWrap(table),
    h("div.pager", prev, next, pageSize, info),
  );
  for (const input of [user, backend, statusSel, since, until]) input.addEventListener("change", reset);
  pageSize.addEventListener("change", reset);

  function filter() {
    const f = {};
    if (user.value) f.userId = user.value;
    if (backend.value) f.backendId = backend.value;
    if (model.value.trim()) f.model = model.value.trim();
    if (endpoint.value.trim()) f.endpoint = endpoint.value.trim();
    if (statusSel.value === "errors") f.errorsOnly = true;
    else if (statusSel.value) f.statusCode = Number(statusSel.value);
    const s = localToIso(since.value);
    const u = localToIso(until.value);
    if (s) f.since = s;
    if (u) f.until = u;
    return f;
  }

  async function fetchPage(first, after, fields) {
    const data = await gql(
      `query Logs($filter: RequestLogFilter, $first: Int, $after: String) {
        requestLogs(filter: $filter, first: $first, after: $after) { totalCount nextCursor items { ${fields} } } }`,
      { filter: filter(), first, after },
    );
    return data.requestLogs;
  }

  function row(log) {
    const kind = log.statusCode >= 500 ? "bad" : log.statusCode >= 400 ? "warn" : "ok";
    return h(
      "tr.clickable",
      { dataset: { logId: log.id, requestId: log.requestId, user: log.userName || "" }, tabIndex: 0, title: "Open the request detail",
        onclick: () => openRequestDetail(log.id), onkeydown: (e) => e.key === "Enter" && openRequestDetail(log.id) },
      h("td", fmtDate(log.createdAt)),
      h("td", log.userName || h("span.muted", log.userId ? `#${log.userId}` : "(no user)")),
      h("td", log.backendName || h("span.muted", "–")),
      h("td.model", log.model || h("span.muted", "–")),
      h("td", badge(String(log.statusCode), kind), log.error ? h("div.err-text", log.error) : null),
      h("td.num", fmtInt(log.totalTokens)),
      h("td.num", fmtUsd(log.costUsd)),
      h("td.num", fmtMs(log.latencyMs)),
      h("td.hide-sm", h("code", log.endpoint)),
    );
  }

  let loading = 0; // the latest load: an earlier one's answer arriving after it is stale
  async function load() {
    const mine = ++loading;
    const after = cursors[cursors.length - 1];
    try {
      const page = await fetchPage(Number(pageSize.value), after, DETAIL_FIELDS);
      if (mine !== loading) return;
      nextCursor = page.nextCursor;
      totalCount = page.totalCount;
      clear(status);
      clear(tbody);
      if (!page.items.length) tbody.append(emptyRow(9, "No request matches the filters."));
      page.items.forEach((log) => tbody.append(row(log)));
      labelCells(table);
      const start = (cursors.length - 1) * Number(pageSize.value);
      info.textContent = page.items.length
        ? `${start + 1} to ${start + page.items.length} of ${fmtInt(totalCount)}`
        : `0 of ${fmtInt(totalCount)}`;
      info.dataset.total = String(totalCount);
      prev.disabled = cursors.length <= 1;
      next.disabled = !nextCursor;
    } catch (err) {
      if (mine === loading) clear(status).append(errorBox(err, { retry: load }));
    }
  }

  function reset() {
    cursors = [null];
    return load();
  }

  function go(step) {
    if (step > 0 && nextCursor) cursors.push(nextCursor);
    else if (step < 0 && cursors.length > 1) cursors.pop();
    else return;
    load();
  }

  async function exportAs(kind) {
    const rows = [];
    let after = null;
    try {
      do {
        const page = await fetchPage(EXPORT_PAGE, after, DETAIL_FIELDS);
        rows.push(...page.items);
        after = page.nextCursor;
      } while (after && rows.length < EXPORT_MAX_ROWS);
    } catch (err) {
      clear(status).append(errorBox(err));
      return;
    }
    const capped = rows.length > EXPORT_MAX_ROWS || after;
    rows.length = Math.min(rows.length, EXPORT_MAX_ROWS);
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    if (kind === "csv") {
      const lines = [CSV_COLUMNS.join(","), ...rows.map((r) => CSV_COLUMNS.map((c) => csvCell(r[c])).join(","))];
      download(`request-logs-${stamp}.csv`, "text/csv", `${lines.join("\r\n")}\r\n`);
    } else {
      download(`request-logs-${stamp}.jsonl`, "application/x-ndjson", rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
    }
    toast(`Exported ${fmtInt(rows.length)} requests${capped ? ` (stopped at ${fmtInt(EXPORT_MAX_ROWS)}: narrow the filter)` : ""}.`, "ok");
  }

  try {
    const data = await gql("query Names { users { id name } backends { id name } }");
    data.users.forEach((u) => user.append(h("option", { value: u.id }, u.name)));
    data.backends.forEach((b) => backend.append(h("option", { value: b.id }, b.name)));
  } catch {
    /* the other filters still work */
  }
  await load();
  return null;
}
