// Hand-drawn SVG charts over time buckets, with a hover read-out: a stacked bar chart (one colour
// per series) and a line chart (e.g. latency percentiles; null values are gaps).
// It redraws itself at the width of its host (ResizeObserver), so text stays legible on phones.

const SVG = "http://www.w3.org/2000/svg";
// No red: red means errors on every page.
export const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#0d9488", "#ca8a04", "#4f46e5"];
/** Groups without a name ("(no user)") and the "others" bucket: grey, never an alarm colour. */
export const NEUTRAL = "#94a3b8";
const COLOR_KEY = "llm-router.legend-colors";

/**
 * Gives each series a colour that stays its own between views and reloads (kept in
 * sessionStorage): `items` are {id, neutral?}; returns the colours in order, never two alike.
 */
export function stableColors(items) {
  let saved = {};
  try {
    saved = JSON.parse(sessionStorage.getItem(COLOR_KEY) || "{}") || {};
  } catch {
    saved = {};
  }
  const used = new Set();
  const out = items.map((it) => {
    if (it.neutral) return NEUTRAL;
    const c = saved[it.id];
    if (c && PALETTE.includes(c) && !used.has(c)) {
      used.add(c);
      return c;
    }
    return null;
  });
  items.forEach((it, i) => {
    if (out[i]) return;
    const free = PALETTE.find((c) => !used.has(c)) || PALETTE[i % PALETTE.length];
    used.add(free);
    out[i] = free;
    saved[it.id] = free;
  });
  try {
    const entries = Object.entries(saved);
    sessionStorage.setItem(COLOR_KEY, JSON.stringify(Object.fromEntries(entries.slice(-200))));
  } catch {
    /* private mode: colours are still unique within the view */
  }
  return out;
}

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A "nice" upper bound and tick step for values up to `max`. */
export function niceScale(max, ticks = 4, integer = true) {
  if (!(max > 0)) return { top: ticks, step: 1 };
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= raw);
  if (integer) step = Math.max(1, Math.ceil(step));
  return { top: step * Math.ceil(max / step), step };
}

export function compactNumber(v) {
  const abs = Math.abs(v);
  if (abs >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (abs >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return String(+v.toFixed(2));
}

/** Approximate width in px of a tick label (11 px system font; digits are tabular). */
const labelWidth = (text) => 6.4 * String(text).length;

/**
 * The x-axis labels: as many as fit without touching (about one per label width + 14 px), none
 * past the chart's edges; `x(i)` is the centre of bucket i. Returns [{i, x, anchor}].
 */
export function xLabelSlots(n, slot, x, width, text) {
  const widest = Math.max(1, ...Array.from({ length: Math.min(n, 50) }, (_, k) => labelWidth(text(Math.floor((k * n) / Math.min(n, 50))))));
  const every = Math.max(1, Math.ceil((widest + 14) / Math.max(slot, 0.001)));
  const out = [];
  let right = -Infinity;
  for (let i = 0; i < n; i += every) {
    const w = labelWidth(text(i));
    let cx = x(i);
    let anchor = "middle";
    let left = cx - w / 2;
    if (left < 2) {
      anchor = "start";
      left = Math.max(2, cx - slot / 2);
      cx = left;
    } else if (cx + w / 2 > width - 2) {
      anchor = "end";
      cx = width - 2;
      left = cx - w;
    }
    if (left < right + 10) continue; // would touch the previous label
    out.push({ i, x: cx, anchor });
    right = left + w;
  }
  return out;
}

/**
 * barChart(host, {times: [ms...], series: [{name, color, values: [...]}], formatTime(ms, long), formatValue(v), title,
 *   height, minWidth (default 260), integer (default true: whole-number y ticks)})
 * Returns {update(data), destroy()}.
 */
export function barChart(host, data) {
  return timeChart(host, data, "bar");
}

/** lineChart(host, data): like barChart, one line per series (not stacked); null values leave a gap. */
export function lineChart(host, data) {
  return timeChart(host, data, "line");
}

function timeChart(host, data, kind) {
  let current = data;
  const wrap = document.createElement("div");
  wrap.className = "chart";
  const tip = document.createElement("div");
  tip.className = "chart-tip";
  tip.hidden = true;
  host.append(wrap);
  wrap.append(tip);
  let svg = null;
  let lastWidth = 0;

  function draw() {
    const width = Math.max(current.minWidth || 260, Math.floor(wrap.clientWidth || host.clientWidth || 600));
    lastWidth = width;
    const height = current.height || (width < 500 ? 180 : 220);
    const m = { top: 10, right: 12, bottom: 24, left: 44 };
    const w = width - m.left - m.right;
    const hgt = height - m.top - m.bottom;
    const { times, series } = current;
    const fmtV = current.formatValue || compactNumber;
    const n = times.length;
    const stacks = times.map((_, i) =>
      kind === "bar" ? series.reduce((acc, ser) => acc + (ser.values[i] || 0), 0) : Math.max(0, ...series.map((ser) => ser.values[i] || 0)),
    );
    const max = Math.max(0, ...stacks);
    const { top, step } = niceScale(max, 4, current.integer !== false);
    const total = series.reduce((acc, x) => acc + x.values.reduce((a, b) => a + (b || 0), 0), 0);
    const slot = w / Math.max(1, n);
    const barW = Math.max(1, slot * (slot > 6 ? 0.72 : 0.9));
    const x = (i) => m.left + slot * i + slot / 2; // centre of bucket i
    const y = (v) => m.top + hgt - (v / top) * hgt;

    const next = s("svg", {
      class: "usage-chart",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `${current.title || "Chart"}: ${fmtV(total)} in total`,
      "data-total": total,
      "data-series": series.length,
    });
    // grid and y labels
    for (let v = 0; v <= top + step / 2; v += step) {
      next.append(s("line", { class: "grid", x1: m.left, x2: m.left + w, y1: y(v), y2: y(v) }));
      next.append(s("text", { class: "tick", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" }, fmtV(v)));
    }
    // x labels: as many as fit without overlapping
    for (const label of xLabelSlots(n, slot, x, width, (i) => current.formatTime(times[i]))) {
      next.append(s("text", { class: "tick xlabel", x: label.x, y: height - 6, "text-anchor": label.anchor }, current.formatTime(times[label.i])));
      next.append(s("line", { class: "xtick", x1: x(label.i), x2: x(label.i), y1: y(0), y2: y(0) + 4 }));
    }
    next.append(s("line", { class: "axis", x1: m.left, x2: m.left + w, y1: y(0), y2: y(0) }));
    // lines: one path per series, broken where a value is null
    if (kind === "line") {
      series.forEach((ser) => {
        let d = "";
        let pen = false;
        ser.values.forEach((v, i) => {
          if (v === null || v === undefined) {
            pen = false;
            return;
          }
          d += `${pen ? "L" : "M"}${x(i).toFixed(1)} ${y(Math.min(v, top)).toFixed(1)} `;
          pen = true;
        });
        if (d) next.append(s("path", { class: "line", d: d.trim(), stroke: ser.color, fill: "none", "data-name": ser.name }));
        ser.values.forEach((v, i) => {
          if (v === null || v === undefined) return;
          const alone = (ser.values[i - 1] ?? null) === null && (ser.values[i + 1] ?? null) === null;
          if (alone) next.append(s("circle", { class: "dot", cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: ser.color }));
        });
      });
    }
    // stacked bars, biggest series at the bottom
    if (kind === "bar") times.forEach((_, i) => {
      let base = 0;
      series.forEach((ser) => {
        const v = ser.values[i] || 0;
        if (v <= 0) return;
        const y0 = y(base);
        const y1 = y(base + v);
        next.append(s("rect", { class: "bar", x: (x(i) - barW / 2).toFixed(1), y: y1.toFixed(1), width: barW.toFixed(1), height: Math.max(1, y0 - y1).toFixed(1), fill: ser.color, "data-name": ser.name }));
        base += v;
      });
    });
    const cursor = s("rect", { class: "cursor", x: 0, y: m.top, width: slot, height: hgt, visibility: "hidden" });
    next.append(cursor);
    const overlay = s("rect", { x: m.left, y: m.top, width: w, height: hgt, fill: "transparent" });
    next.append(overlay);
    overlay.addEventListener("mousemove", (event) => {
      const rect = next.getBoundingClientRect();
      const px = event.clientX - rect.left;
      const i = Math.max(0, Math.min(n - 1, Math.floor((px - m.left) / slot)));
      cursor.setAttribute("x", x(i) - slot / 2);
      cursor.setAttribute("visibility", "visible");
      const lines = series
        .map((ser) => ({ ser, v: ser.values[i] }))
        .filter(({ v }) => v > 0)
        .sort((a, b) => b.v - a.v)
        .map(({ ser, v }) => `<div><i style="background:${ser.color}"></i>${escapeHtml(ser.name)}: <b>${escapeHtml(fmtV(v))}</b></div>`);
      tip.innerHTML = `<div class="tip-time">${escapeHtml(current.formatTime(times[i], true))}</div>${lines.join("") || "<div>nothing</div>"}`;
      tip.hidden = false;
      const left = x(i) + slot / 2 + 8 + tip.offsetWidth < width ? x(i) + slot / 2 + 8 : Math.max(0, x(i) - slot / 2 - 8 - tip.offsetWidth);
      tip.style.left = `${left}px`;
      tip.style.top = `${m.top}px`;
    });
    overlay.addEventListener("mouseleave", () => {
      tip.hidden = true;
      cursor.setAttribute("visibility", "hidden");
    });
    if (svg) svg.replaceWith(next);
    else wrap.prepend(next);
    svg = next;
  }

  const observer = typeof ResizeObserver === "function"
    ? new ResizeObserver(() => {
      const width = Math.floor(wrap.clientWidth);
      if (width && Math.abs(width - lastWidth) > 2) draw();
    })
    : null;
  if (observer) observer.observe(wrap);
  draw();
  return {
    update(next) {
      current = next;
      draw();
    },
    destroy() {
      if (observer) observer.disconnect();
      wrap.remove();
    },
  };
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
