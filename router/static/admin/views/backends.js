// Backends: list with health, models and weight; create/edit (upstream key write-only); enable/disable; delete.

import { gql } from "../graphql.js";
import { limitFields, limitsInput, limitsSummary, limitsChanged } from "./limits.js";
import {
  badge, busy, fmtDate, fmtMs, checkbox, clear, confirmDelete, emptyRow, errorBox, field, formActions, h, modal, splitList,
  labelCells, tableWrap, toast, toastError,
} from "../ui.js";

const BACKEND_FIELDS = `id name baseUrl hasApiKey modelFilter modelOverride modelAppend models weight isActive healthy apis authHeader
  createdAt updatedAt health { healthy reason since retryAt lastCheck { at ok latencyMs error } }
  limits { rpm tpm maxConcurrent } quota { requestsThisMinute tokensThisMinute inFlight queued }`;
const APIS = [
  ["CHAT_COMPLETIONS", "Chat completions"],
  ["COMPLETIONS", "Completions"],
  ["EMBEDDINGS", "Embeddings"],
  ["RESPONSES", "Responses"],
  ["MESSAGES", "Anthropic Messages"],
];
const MODELS_SHOWN = 4;
const REFRESH_MS = 10000;

export function healthBadge(backend) {
  if (!backend.isActive) return badge("disabled", "off");
  return backend.healthy ? badge("healthy", "ok") : badge("unhealthy", "bad");
}

export async function mount(el) {
  let backends = [];
  const status = h("div.status-area");
  const tbody = h("tbody");
  clear(el).append(
    h("div.toolbar", h("p.muted", "Upstream OpenAI-compatible servers. Health and model lists refresh on their own."), h("span.spacer"), h("button.primary#new-backend", { type: "button", onclick: () => edit(null) }, "New backend")),
    status,
    tableWrap(
      h(
        "table.data.backends-table.stack-sm",
        h("thead", h("tr", h("th", "Name"), h("th.hide-sm", "Base URL"), h("th", "Health"), h("th", "Models"), h("th", "Weight"), h("th.hide-sm", "Limits"), h("th.hide-sm", "Key"), h("th.actions-col", "Actions"))),
        tbody,
      ),
    ),
  );

  // Bumped by every load and every local change: a load whose answer comes after either is stale (a
  // quiet refresh sent before a Disable would otherwise draw the backend enabled again).
  let version = 0;
  function replace(next) {
    version++;
    backends = next;
    draw();
  }

  async function load({ quiet = false } = {}) {
    const mine = ++version;
    try {
      const data = await gql(`query Backends { backends { ${BACKEND_FIELDS} } }`);
      if (mine !== version) return;
      // The periodic refresh redraws only what changed: a redraw replaces every row (and its buttons
      // under the pointer) and would do so every REFRESH_MS for nothing.
      if (quiet && JSON.stringify(data.backends) === JSON.stringify(backends)) return;
      backends = data.backends;
      clear(status);
      draw();
    } catch (err) {
      if (mine === version && (!quiet || !backends.length)) clear(status).append(errorBox(err, { retry: load }));
    }
  }

  function modelsCell(backend) {
    if (!backend.models.length) return h("span.muted", "none found");
    const shown = backend.models.slice(0, MODELS_SHOWN).map((m) => h("span.chip", m));
    const rest = backend.models.length - MODELS_SHOWN;
    return h("div.chips", { title: backend.models.join("\n") }, shown, rest > 0 ? h("span.chip.more", `+${rest}`) : null);
  }

  function healthDetail(b) {
    const hl = b.health;
    if (!b.isActive || !hl) return null;
    const check = hl.lastCheck ? `last check ${fmtDate(hl.lastCheck.at)}: ${hl.lastCheck.ok ? `ok in ${fmtMs(hl.lastCheck.latencyMs)}` : hl.lastCheck.error || "failed"}` : null;
    if (hl.healthy) return check ? h("div.muted.small.health-check", check) : null;
    return h(
      "div.health-why",
      hl.reason ? h("div.err-text.health-reason", hl.reason) : null,
      hl.since ? h("div.muted.small.health-since", `since ${fmtDate(hl.since)}`) : null,
      hl.retryAt ? h("div.muted.small", `next try after ${fmtDate(hl.retryAt)}`) : null,
    );
  }

  async function testConnection(b, button) {
    button.disabled = true;
    try {
      const data = await gql(
        `mutation Test($id: ID!) { testBackendConnection(id: $id) { ok reachable statusCode latencyMs models error backend { ${BACKEND_FIELDS} } } }`,
        { id: b.id },
      );
      const t = data.testBackendConnection;
      replace(backends.map((x) => (x.id === b.id ? t.backend : x)));
      await modal(`Connection test: ${b.name}`, (close) => [
        h(
          "dl.detail-list#connection-test",
          { dataset: { ok: String(t.ok), reachable: String(t.reachable) } },
          h("dt", "Result"), h("dd", t.ok ? badge("ok", "ok") : badge("failed", "bad")),
          h("dt", "Reachable"), h("dd.reachable", t.reachable ? "yes" : "no"),
          h("dt", "HTTP status"), h("dd", t.statusCode === null ? "–" : String(t.statusCode)),
          h("dt", "Latency"), h("dd.latency", fmtMs(t.latencyMs)),
          h("dt", `Models (${t.models.length})`), h("dd.models", t.models.length ? t.models.map((m) => h("span.chip", m)) : h("span.muted", "none")),
          t.error ? [h("dt", "Error"), h("dd.err-text", t.error)] : null,
        ),
        h("div.actions", h("button", { type: "button", onclick: () => close() }, "Close")),
      ]);
    } catch (err) {
      toastError(err);
    } finally {
      button.disabled = false;
    }
  }

  function draw() {
    clear(tbody);
    if (!backends.length) {
      tbody.append(emptyRow(8, "No backends yet: add the first upstream server."));
      return;
    }
    for (const b of backends) {
      tbody.append(
        h(
          "tr",
          { dataset: { backendId: b.id, backendName: b.name } },
          h("td.name", b.name),
          h("td.hide-sm", h("code.url", b.baseUrl)),
          h("td.health", healthBadge(b), healthDetail(b)),
          h("td", modelsCell(b)),
          h("td.num", String(b.weight)),
          h("td.limits.hide-sm", limitsSummary(b.limits, b.quota)),
          h("td.hide-sm", b.hasApiKey ? "set" : h("span.muted", "none")),
          h(
            "td.row-actions",
            h("button.small", { type: "button", onclick: () => edit(b) }, "Edit"),
            h("button.small.test-connection", { type: "button", onclick: (e) => testConnection(b, e.currentTarget) }, "Test"),
            h("button.small", { type: "button", onclick: () => setActive(b, !b.isActive) }, b.isActive ? "Disable" : "Enable"),
            h("button.small.danger", { type: "button", onclick: () => remove(b) }, "Delete"),
          ),
        ),
      );
    }
    labelCells(tbody.parentElement);
  }

  async function edit(backend) {
    const creating = !backend;
    const b = backend || { name: "", baseUrl: "", modelFilter: "", modelOverride: null, modelAppend: null, weight: 1, isActive: true, hasApiKey: false };
    const name = h("input", { name: "name", required: true, value: b.name, autocomplete: "off", placeholder: "e.g. local" });
    const baseUrl = h("input", { name: "baseUrl", type: "url", required: true, value: b.baseUrl, placeholder: "http://127.0.0.1:8000/v1", autocomplete: "off" });
    const apiKey = h("input", {
      name: "apiKey",
      type: "password",
      autocomplete: "new-password",
      placeholder: b.hasApiKey ? "A key is stored: leave empty to keep it" : "None: leave empty if the server needs none",
    });
    const authHeader = h("input", { name: "authHeader", value: b.authHeader || "", placeholder: "From the URL: x-api-key for anthropic.com, else authorization", autocomplete: "off" });
    const modelFilter = h("input", { name: "modelFilter", value: b.modelFilter || "", placeholder: "e.g. llama* instruct", autocomplete: "off" });
    const modelOverride = h("textarea", { name: "modelOverride", rows: 2, placeholder: "One per line or comma-separated" });
    modelOverride.value = (b.modelOverride || []).join("\n");
    const modelAppend = h("textarea", { name: "modelAppend", rows: 2, placeholder: "One per line or comma-separated" });
    modelAppend.value = (b.modelAppend || []).join("\n");
    const weight = h("input", { name: "weight", type: "number", min: 0, step: 1, value: String(b.weight), required: true });
    const active = checkbox("Enabled", b.isActive, { name: "isActive" });
    const clearKey = checkbox("Remove the stored key", false, { name: "clearKey" });
    const apiBoxes = APIS.map(([value, label]) => ({ value, box: checkbox(label, !b.apis || b.apis.includes(value), { name: "apis", value }) }));
    const limits = limitFields(b.limits, { budget: false });
    clearKey.el.hidden = creating || !b.hasApiKey;
    apiKey.addEventListener("input", () => (clearKey.input.disabled = Boolean(apiKey.value)));

    const saved = await modal(creating ? "New backend" : `Edit ${b.name}`, (close) => {
      const form = h(
        "form.form",
        {
          onsubmit: async (event) => {
            event.preventDefault();
            const overrides = splitList(modelOverride.value);
            const appended = splitList(modelAppend.value);
            const input = {
              name: name.value.trim(),
              baseUrl: baseUrl.value.trim(),
              authHeader: authHeader.value.trim() || null,
              modelFilter: modelFilter.value.trim() || null,
              modelOverride: overrides.length ? overrides : null,
              modelAppend: appended.length ? appended : null,
              weight: Number.parseInt(weight.value, 10),
              isActive: active.input.checked,
            };
            const picked = apiBoxes.filter((a) => a.box.input.checked).map((a) => a.value);
            if (!picked.length) {
              form.prepend(errorBox(new Error("Pick at least one API the backend speaks.")));
              return;
            }
            input.apis = picked.length === APIS.length ? null : picked;
            const newLimits = limitsInput(limits);
            if (!creating) {
              // Send only what changed, so that empty optional fields don't reset what was left alone.
              for (const key of Object.keys(input)) {
                if (JSON.stringify(input[key] ?? null) === JSON.stringify(b[key] ?? null)) delete input[key];
              }
              // An emptied field is sent as null, which clears it.
            }
            if (apiKey.value) input.apiKey = apiKey.value; // write-only: never read back
            else if (clearKey.input.checked) input.apiKey = ""; // "" removes the stored key
            try {
              await busy(form, async () => {
                const data = creating
                  ? await gql(`mutation CreateBackend($input: CreateBackendInput!) { createBackend(input: $input) { ${BACKEND_FIELDS} } }`, { input })
                  : await gql(`mutation UpdateBackend($id: ID!, $input: UpdateBackendInput!) { updateBackend(id: $id, input: $input) { ${BACKEND_FIELDS} } }`, { id: b.id, input });
                let result = creating ? data.createBackend : data.updateBackend;
                if (limitsChanged(b.limits, newLimits)) {
                  const set = await gql(
                    `mutation Limits($id: ID!, $limits: LimitsInput!) { setBackendLimits(backendId: $id, limits: $limits) { ${BACKEND_FIELDS} } }`,
                    { id: result.id, limits: newLimits },
                  );
                  result = set.setBackendLimits;
                }
                close(result);
              });
            } catch {
              /* shown in the form */
            }
          },
        },
        field("Name", name, "Unique alias; also usable as [name]model in model names."),
        field("Base URL", baseUrl, "The OpenAI-compatible root, usually ending in /v1."),
        field("Upstream API key", apiKey, "Write-only: it is stored but never shown again."),
        clearKey.el,
        field("Key header", authHeader, "authorization sends \"Authorization: Bearer <key>\"; any other name (x-api-key, api-key for Azure) the bare key."),
        field("Model filter", modelFilter, "Space-separated terms every listed model must contain; * is a wildcard."),
        field("Model override", modelOverride, "When set, exactly these models are served and /models is not asked."),
        field("Extra models", modelAppend, "Appended after the (filtered) model list."),
        field("Weight", weight, "Share of traffic relative to other backends serving the same model."),
        h("fieldset.field#backend-apis", h("legend", "APIs it speaks natively"), h("div.check-list", apiBoxes.map((a) => a.box.el)),
          h("small.hint", "All checked: every format. Others are translated where a translation exists.")),
        limits.el,
        active.el,
        formActions(close, creating ? "Create backend" : "Save"),
      );
      return form;
    }, { wide: true });
    if (!saved) return;
    replace(creating ? [...backends, saved] : backends.map((x) => (x.id === saved.id ? saved : x)));
    toast(`${creating ? "Created" : "Saved"} backend ${saved.name}.`, "ok");
  }

  async function setActive(b, isActive) {
    try {
      const op = isActive ? "activateBackend" : "deactivateBackend";
      const data = await gql(`mutation SetBackendActive($id: ID!) { ${op}(id: $id) { ${BACKEND_FIELDS} } }`, { id: b.id });
      replace(backends.map((x) => (x.id === b.id ? data[op] : x)));
      toast(`${b.name} is now ${isActive ? "enabled" : "disabled"}.`, "ok");
    } catch (err) {
      toastError(err);
    }
  }

  function remove(b) {
    return confirmDelete("backend", `Delete ${b.name}? Its permissions and per-backend scripts go with it. This cannot be undone.`, async () => {
      await gql("mutation DeleteBackend($id: ID!) { deleteBackend(id: $id) }", { id: b.id });
      replace(backends.filter((x) => x.id !== b.id));
      toast(`Deleted ${b.name}.`, "ok");
    });
  }

  await load();
  const timer = setInterval(() => {
    if (!document.querySelector(".backdrop")) load({ quiet: true });
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
