// Limits fields shared by the user and backend forms (`Limits`, `LimitsInput`), and their summary.

import { fmtInt, h } from "../ui.js";
import { fmtUsd } from "./request-detail.js";

const KEYS = ["rpm", "tpm", "maxConcurrent", "budgetUsd", "budgetPeriod"];

function numberInput(name, value, attrs = {}) {
  return h("input", { name, type: "number", min: 0, step: 1, value: value ?? "", placeholder: "unlimited", ...attrs });
}

/** The form fields; `budget` adds the spend budget (users only). */
export function limitFields(limits, { budget }) {
  const l = limits || {};
  const inputs = {
    rpm: numberInput("rpm", l.rpm),
    tpm: numberInput("tpm", l.tpm),
    maxConcurrent: numberInput("maxConcurrent", l.maxConcurrent),
  };
  const cells = [
    h("label.field", h("span", "Requests / minute"), inputs.rpm),
    h("label.field", h("span", "Tokens / minute"), inputs.tpm),
    h("label.field", h("span", "At once"), inputs.maxConcurrent),
  ];
  if (budget) {
    inputs.budgetUsd = numberInput("budgetUsd", l.budgetUsd, { step: "0.01" });
    inputs.budgetPeriod = h(
      "select",
      { name: "budgetPeriod" },
      ["DAY", "WEEK", "MONTH"].map((p) => h("option", { value: p, selected: (l.budgetPeriod || "MONTH") === p }, p.toLowerCase())),
    );
    cells.push(h("label.field", h("span", "Budget (USD)"), inputs.budgetUsd), h("label.field", h("span", "per"), inputs.budgetPeriod));
  }
  const el = h("fieldset.field.limits-fields", h("legend", "Limits (empty = unlimited)"), h("div.form-row", cells));
  return { el, inputs };
}

/** The LimitsInput the fields describe. */
export function limitsInput({ inputs }) {
  const int = (input) => (input && input.value !== "" ? Number.parseInt(input.value, 10) : null);
  const out = { rpm: int(inputs.rpm), tpm: int(inputs.tpm), maxConcurrent: int(inputs.maxConcurrent) };
  if (inputs.budgetUsd) {
    out.budgetUsd = inputs.budgetUsd.value !== "" ? Number(inputs.budgetUsd.value) : null;
    out.budgetPeriod = out.budgetUsd === null ? null : inputs.budgetPeriod.value;
  }
  return out;
}

export function limitsChanged(before, after) {
  return KEYS.some((k) => k in after && (after[k] ?? null) !== ((before || {})[k] ?? null));
}

/** "rpm 3/60 · tpm … · 1/4 at once" or "unlimited". */
export function limitsSummary(limits, quota) {
  const l = limits || {};
  const q = quota || {};
  const parts = [];
  if (l.rpm !== null && l.rpm !== undefined) parts.push(`${fmtInt(q.requestsThisMinute ?? 0)}/${fmtInt(l.rpm)} rpm`);
  if (l.tpm !== null && l.tpm !== undefined) parts.push(`${fmtInt(q.tokensThisMinute ?? 0)}/${fmtInt(l.tpm)} tpm`);
  if (l.maxConcurrent !== null && l.maxConcurrent !== undefined) parts.push(`${fmtInt(q.inFlight ?? 0)}/${fmtInt(l.maxConcurrent)} at once`);
  if (q.queued) parts.push(`${fmtInt(q.queued)} queued`);
  return parts.length ? h("span.small", parts.join(" · ")) : h("span.muted", "unlimited");
}

/** Spend against budget, with a bar. */
export function spendCell(limits, quota) {
  const l = limits || {};
  const spent = (quota && quota.spentUsd) || 0;
  if (l.budgetUsd === null || l.budgetUsd === undefined) return h("span.muted.spend", { dataset: { spent: String(spent) } }, `${fmtUsd(spent)} · no budget`);
  const share = l.budgetUsd > 0 ? Math.min(1, spent / l.budgetUsd) : 1;
  const kind = share >= 1 ? "bad" : share >= 0.8 ? "warn" : "ok";
  return h(
    "div.spend",
    { dataset: { spent: String(spent), budget: String(l.budgetUsd) }, title: `${fmtUsd(spent)} of ${fmtUsd(l.budgetUsd)} this ${String(l.budgetPeriod || "").toLowerCase()}` },
    h("span", `${fmtUsd(spent)} / ${fmtUsd(l.budgetUsd)} per ${String(l.budgetPeriod || "").toLowerCase()}`),
    h(`div.meter.${kind}`, h("div", { style: { width: `${(share * 100).toFixed(1)}%` } })),
  );
}
