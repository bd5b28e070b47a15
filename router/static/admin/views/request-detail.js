// The request detail dialog, opened from a row of Live traffic or Logs: one `requestLog` by id.

import { gql } from "../graphql.js";
import { badge, errorBox, fmtDate, fmtInt, fmtMs, h, modal } from "../ui.js";

export const DETAIL_FIELDS = `id requestId createdAt userId userName backendId backendName model endpoint statusCode
  stream promptTokens completionTokens totalTokens cachedTokens cacheWriteTokens reasoningTokens latencyMs
  timeToFirstTokenMs error attempts attemptErrors translatedTo costUsd`;

export function fmtUsd(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "$0";
  return value < 0.01 ? `$${value.toPrecision(2)}` : `$${value.toFixed(value < 1 ? 4 : 2)}`;
}

function statusBadge(code) {
  return badge(String(code), code >= 500 ? "bad" : code >= 400 ? "warn" : "ok");
}

function rows(pairs) {
  return h(
    "dl.detail-list",
    pairs.filter(Boolean).map(([label, value, key]) => [h("dt", label), h("dd", { dataset: { field: key || "" } }, value)]),
  );
}

function body(log) {
  const none = h("span.muted", "–");
  return [
    rows([
      ["Request id", h("code", log.requestId), "requestId"],
      ["Time", fmtDate(log.createdAt), "createdAt"],
      ["User", log.userName || (log.userId ? `#${log.userId}` : h("span.muted", "(no user)")), "user"],
      ["Backend", log.backendName || none, "backend"],
      ["Model", log.model || none, "model"],
      ["Endpoint", h("code", log.endpoint), "endpoint"],
      ["Translated to", log.translatedTo ? h("code", log.translatedTo) : h("span.muted", "not translated"), "translatedTo"],
      ["Status", [statusBadge(log.statusCode), log.stream ? h("span.chip.small", "stream") : null], "status"],
      log.error ? ["Error", h("span.err-text", log.error), "error"] : null,
    ]),
    h("h3", "Attempts"),
    rows([["Attempts", fmtInt(log.attempts), "attempts"]]),
    log.attemptErrors.length
      ? h("ol.attempt-errors", log.attemptErrors.map((e) => h("li", e)))
      : h("p.muted", "The first attempt answered."),
    h("h3", "Tokens and cost"),
    rows([
      ["Prompt", fmtInt(log.promptTokens), "promptTokens"],
      ["Cached (read)", fmtInt(log.cachedTokens), "cachedTokens"],
      ["Cache write", fmtInt(log.cacheWriteTokens), "cacheWriteTokens"],
      ["Completion", fmtInt(log.completionTokens), "completionTokens"],
      ["Reasoning", fmtInt(log.reasoningTokens), "reasoningTokens"],
      ["Total", fmtInt(log.totalTokens), "totalTokens"],
      ["Cost", log.costUsd === null ? h("span.muted", "no matching price") : fmtUsd(log.costUsd), "costUsd"],
    ]),
    h("h3", "Timings"),
    rows([
      ["Latency", fmtMs(log.latencyMs), "latencyMs"],
      ["Time to first token", log.timeToFirstTokenMs === null ? h("span.muted", "– (not streamed)") : fmtMs(log.timeToFirstTokenMs), "ttft"],
    ]),
  ];
}

/** Opens the detail of request-log row `id` (fetched fresh, so attempts and cost are complete). */
export function openRequestDetail(id) {
  return modal(
    "Request detail",
    () => {
      const host = h("div.request-detail#request-detail", h("p.muted", "Loading…"));
      gql(`query Detail($id: ID) { requestLog(id: $id) { ${DETAIL_FIELDS} } }`, { id })
        .then((data) => {
          host.replaceChildren(...(data.requestLog ? body(data.requestLog) : [h("p", "This request is no longer in the log.")]));
          host.dataset.loaded = "true";
        })
        .catch((err) => host.replaceChildren(errorBox(err)));
      return host;
    },
    { wide: true },
  );
}
