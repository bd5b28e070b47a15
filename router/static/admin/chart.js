// Hand-drawn SVG charts: a multi-series line chart over time buckets, with a hover read-out.
// It redraws itself at the width of its host (ResizeObserver), so text stays legible on phones.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569", "#ea580c"];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A "nice" upper bound and tick step for values up to `max`. */
export function niceScale(max, ticks = 4) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= raw);
  return { top: step * Math.ceil(max / step), step };
}

export function compactNumber(v) {
  const abs = Math.abs(v);
  if (abs >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (abs >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return String(+v.toFixed(2));
}

/**
 * lineChart(host, {times: [ms...], series: [{name, color, values: [...]}], formatTime(ms), formatValue(v), title})
 * Returns {update(data), destroy()}.
 */
export function lineChart(host, data) {
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
    const width = Math.max(260, Math.floor(wrap.clientWidth || host.clientWidth || 600));
    lastWidth = width;
    const height = width < 500 ? 180 : 220;
    const m = { top: 10, right: 12, bottom: 24, left: 44 };
    const w = width - m.left - m.right;
    const hgt = height - m.top - m.bottom;
    const { times, series } = current;
    const fmtV = current.formatValue || compactNumber;
    const max = Math.max(0, ...series.flatMap((x) => x.values));
    const { top, step } = niceScale(max);
    const total = series.reduce((acc, x) => acc + x.values.reduce((a, b) => a + b, 0), 0);
    const n = times.length;
    const x = (i) => m.left + (n <= 1 ? w / 2 : (i * w) / (n - 1));
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
    // x labels: about one per 90px
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(w / 90))));
    for (let i = 0; i < n; i += every) {
      next.append(s("text", { class: "tick", x: x(i), y: height - 6, "text-anchor": i === 0 ? "start" : "middle" }, current.formatTime(times[i])));
    }
    next.append(s("line", { class: "axis", x1: m.left, x2: m.left + w, y1: y(0), y2: y(0) }));
    // series
    series.forEach((ser) => {
      if (!ser.values.length) return;
      const d = ser.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
      const area = `${d}L${x(n - 1).toFixed(1)},${y(0)}L${x(0).toFixed(1)},${y(0)}Z`;
      next.append(s("path", { class: "area", d: area, fill: ser.color }));
      next.append(s("path", { class: "series", d, stroke: ser.color, "data-name": ser.name }));
      ser.values.forEach((v, i) => {
        if (v > 0 && (n <= 60 || ser.values[i - 1] === 0 || ser.values[i + 1] === 0)) {
          next.append(s("circle", { class: "dot", cx: x(i), cy: y(v), r: 2.5, fill: ser.color }));
        }
      });
    });
    const cursor = s("line", { class: "cursor", x1: 0, x2: 0, y1: m.top, y2: m.top + hgt, visibility: "hidden" });
    next.append(cursor);
    const overlay = s("rect", { x: m.left, y: m.top, width: w, height: hgt, fill: "transparent" });
    next.append(overlay);
    overlay.addEventListener("mousemove", (event) => {
      const rect = next.getBoundingClientRect();
      const px = event.clientX - rect.left;
      const i = Math.max(0, Math.min(n - 1, Math.round(((px - m.left) / w) * (n - 1))));
      cursor.setAttribute("x1", x(i));
      cursor.setAttribute("x2", x(i));
      cursor.setAttribute("visibility", "visible");
      const lines = series
        .map((ser) => ({ ser, v: ser.values[i] }))
        .filter(({ v }) => v > 0)
        .sort((a, b) => b.v - a.v)
        .map(({ ser, v }) => `<div><i style="background:${ser.color}"></i>${escapeHtml(ser.name)}: <b>${fmtV(v)}</b></div>`);
      tip.innerHTML = `<div class="tip-time">${escapeHtml(current.formatTime(times[i], true))}</div>${lines.join("") || "<div>nothing</div>"}`;
      tip.hidden = false;
      const left = Math.min(Math.max(0, x(i) + 10), width - tip.offsetWidth - 4);
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
