// Prices: USD per million tokens per model name or glob, on one backend or all (`modelPrices`).

import { gql } from "../graphql.js";
import { busy, clear, confirmDelete, emptyRow, field, formActions, h, labelCells, loader, modal, tableWrap, toast } from "../ui.js";

const PRICE_FIELDS = "id model inputPerMTok cachedInputPerMTok cacheWritePerMTok outputPerMTok backend { id name }";

function usd(value) {
  return value === null || value === undefined ? h("span.muted", "as input") : `$${Number(value).toLocaleString(undefined, { maximumFractionDigits: 6 })}`;
}

export async function mount(el) {
  let prices = [];
  let backends = [];
  const status = h("div.status-area");
  const tbody = h("tbody#prices");
  const table = h(
    "table.data.prices-table.stack-sm",
    h("thead", h("tr", ["Model or pattern", "Backend", "Input", "Cached input", "Cache write", "Output"].map((t, i) => h(i > 1 ? "th.num" : "th", t)), h("th.actions-col", "Actions"))),
    tbody,
  );
  clear(el).append(
    h("div.toolbar", h("p.muted", "USD per million tokens. A backend-specific price wins over one for all backends; the most specific pattern wins."), h("span.spacer"),
      h("button.primary#new-price", { type: "button", onclick: () => edit(null) }, "New price")),
    status,
    tableWrap(table),
  );

  const load = loader(status, () => gql(`query Prices { modelPrices { ${PRICE_FIELDS} } backends { id name } }`), (data) => {
    prices = data.modelPrices;
    backends = data.backends;
    draw();
  });

  function draw() {
    clear(tbody);
    if (!prices.length) tbody.append(emptyRow(7, "No prices yet: requests cost nothing until a price matches their model."));
    for (const p of prices) {
      tbody.append(
        h(
          "tr",
          { dataset: { priceId: p.id, model: p.model } },
          h("td", h("code", p.model)),
          h("td", p.backend ? p.backend.name : h("span.muted", "all backends")),
          h("td.num", usd(p.inputPerMTok)),
          h("td.num", usd(p.cachedInputPerMTok)),
          h("td.num", usd(p.cacheWritePerMTok)),
          h("td.num", usd(p.outputPerMTok)),
          h(
            "td.row-actions",
            h("button.small", { type: "button", onclick: () => edit(p) }, "Edit"),
            h("button.small.danger", { type: "button", onclick: () => remove(p) }, "Delete"),
          ),
        ),
      );
    }
    labelCells(table);
  }

  async function edit(price) {
    const p = price || { model: "", backend: null, inputPerMTok: "", cachedInputPerMTok: null, cacheWritePerMTok: null, outputPerMTok: "" };
    const num = (name, value, required) =>
      h("input", { name, type: "number", min: 0, step: "any", required, value: value ?? "", placeholder: required ? "" : "same as input" });
    const model = h("input", { name: "model", required: true, value: p.model, placeholder: "gpt-4o* or an exact name", autocomplete: "off" });
    const backend = h(
      "select",
      { name: "backendId" },
      h("option", { value: "" }, "All backends"),
      backends.map((b) => h("option", { value: b.id, selected: p.backend && p.backend.id === b.id }, b.name)),
    );
    const input = num("inputPerMTok", p.inputPerMTok, true);
    const cached = num("cachedInputPerMTok", p.cachedInputPerMTok, false);
    const write = num("cacheWritePerMTok", p.cacheWritePerMTok, false);
    const output = num("outputPerMTok", p.outputPerMTok, true);
    const saved = await modal(price ? `Edit price of ${p.model}` : "New price", (close) => {
      const form = h(
        "form.form",
        {
          onsubmit: async (event) => {
            event.preventDefault();
            const opt = (i) => (i.value === "" ? null : Number(i.value));
            const body = {
              model: model.value.trim(),
              backendId: backend.value || null,
              inputPerMTok: Number(input.value),
              cachedInputPerMTok: opt(cached),
              cacheWritePerMTok: opt(write),
              outputPerMTok: Number(output.value),
            };
            try {
              await busy(form, async () => {
                const data = price
                  ? await gql(`mutation U($id: ID!, $input: ModelPriceInput!) { updateModelPrice(id: $id, input: $input) { ${PRICE_FIELDS} } }`, { id: price.id, input: body })
                  : await gql(`mutation C($input: ModelPriceInput!) { createModelPrice(input: $input) { ${PRICE_FIELDS} } }`, { input: body });
                close(price ? data.updateModelPrice : data.createModelPrice);
              });
            } catch {
              /* shown in the form */
            }
          },
        },
        field("Model or pattern", model, "A model name, or a glob: * any text, ? one character, [...] a set."),
        field("Backend", backend, "All backends, or only this one (a backend's own price wins)."),
        h("div.form-row", field("Input $/M", input), field("Output $/M", output), field("Cached input $/M", cached), field("Cache write $/M", write)),
        formActions(close, price ? "Save" : "Create price"),
      );
      return form;
    });
    if (!saved) return;
    await load();
    toast(`Saved the price of ${saved.model}.`, "ok");
  }

  function remove(p) {
    return confirmDelete("price", `Delete the price of ${p.model}? Requests it matched then cost nothing (or match another price).`, async () => {
      await gql("mutation D($id: ID!) { deleteModelPrice(id: $id) }", { id: p.id });
      await load();
      toast(`Deleted the price of ${p.model}.`, "ok");
    });
  }

  await load();
  return null;
}
