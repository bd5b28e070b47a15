// Users: list, search, create (key shown once), edit, activate/deactivate, regenerate key, delete.

import { gql } from "../graphql.js";
import { limitFields, limitsChanged, limitsInput, limitsSummary, spendCell } from "./limits.js";
import {
  badge, busy, checkbox, clear, confirmDelete, confirmDialog, emptyRow, field, formActions, fmtDate, h, loader,
  modal, labelCells, showSecretOnce, tableWrap, toast, toastError,
} from "../ui.js";

const USER_FIELDS = `id name email isActive allBackends apiKeyPrefix createdAt updatedAt permissions { id backend { id name } }
  limits { rpm tpm maxConcurrent budgetUsd budgetPeriod } quota { requestsThisMinute tokensThisMinute inFlight spentUsd }`;

export async function mount(el) {
  let users = [];
  let query = "";

  const search = h("input.search", {
    type: "search",
    placeholder: "Search by name, e-mail or key prefix",
    "aria-label": "Search users",
    oninput: () => {
      query = search.value.trim().toLowerCase();
      draw();
    },
  });
  const status = h("div.status-area");
  const tbody = h("tbody");
  const table = h(
    "table.data.users-table.stack-sm",
    h("thead", h("tr", h("th", "Name"), h("th", "E-mail"), h("th", "Key"), h("th", "Status"), h("th", "Backends"), h("th", "Spend"), h("th.hide-sm", "Limits"), h("th.hide-sm.hide-md", "Created"), h("th.actions-col", "Actions"))),
    tbody,
  );
  clear(el).append(
    h("div.toolbar", search, h("span.spacer"), h("button.primary#new-user", { type: "button", onclick: () => editUser(null) }, "New user")),
    status,
    tableWrap(table),
  );

  const load = loader(status, () => gql(`query Users { users { ${USER_FIELDS} } }`), (data) => {
    users = data.users;
    draw();
  });

  function matches(user) {
    if (!query) return true;
    return [user.name, user.email, user.apiKeyPrefix].some((v) => v && v.toLowerCase().includes(query));
  }

  function draw() {
    clear(tbody);
    const shown = users.filter(matches);
    if (!shown.length) {
      tbody.append(emptyRow(9, users.length ? "No user matches the search." : "No users yet: create the first one."));
      return;
    }
    for (const user of shown) {
      const backends = user.allBackends
        ? badge("all backends", "info")
        : user.permissions.length
          ? user.permissions.map((p) => p.backend.name).join(", ")
          : h("span.muted", "none");
      tbody.append(
        h(
          "tr",
          { dataset: { userId: user.id, userName: user.name } },
          h("td.name", user.name),
          h("td", user.email || h("span.muted", "–")),
          h("td", h("code", `${user.apiKeyPrefix}…`)),
          h("td", user.isActive ? badge("active", "ok") : badge("inactive", "off")),
          h("td.backends", backends),
          h("td.spend-cell", spendCell(user.limits, user.quota)),
          h("td.limits.hide-sm", limitsSummary(user.limits, user.quota)),
          h("td.hide-sm.hide-md", fmtDate(user.createdAt)),
          h(
            "td.row-actions",
            h("button.small", { type: "button", onclick: () => editUser(user) }, "Edit"),
            h("button.small", { type: "button", onclick: () => setActive(user, !user.isActive) }, user.isActive ? "Deactivate" : "Activate"),
            h("button.small", { type: "button", onclick: () => regenerate(user) }, "New key"),
            h("button.small.danger", { type: "button", onclick: () => remove(user) }, "Delete"),
          ),
        ),
      );
    }
    labelCells(tbody.parentElement);
  }

  async function editUser(user) {
    const creating = !user;
    const name = h("input", { name: "name", required: true, value: user ? user.name : "", autocomplete: "off" });
    const email = h("input", { name: "email", type: "email", value: (user && user.email) || "", autocomplete: "off" });
    const all = checkbox("All backends (present and future)", user ? user.allBackends : false, { name: "allBackends" });
    const active = checkbox("Active", user ? user.isActive : true, { name: "isActive" });
    const limits = limitFields(user ? user.limits : null, { budget: true });
    // New users get their backends here; existing ones keep theirs (edited on Permissions).
    let picks = [];
    let picker = null;
    if (creating) {
      let backends = [];
      try {
        backends = (await gql("query BackendNames { backends { id name isActive } }")).backends;
      } catch (err) {
        toastError(err);
      }
      picks = backends.map((b) => ({ backend: b, box: checkbox(b.isActive ? b.name : `${b.name} (disabled)`, false, { name: "backend", value: b.id }) }));
      const list = h(
        "div.check-list#backend-picker",
        picks.length ? picks.map((p) => p.box.el) : h("span.muted", "No backends yet: add one on Backends, then give it on Permissions."),
      );
      const sync = () => picks.forEach((p) => (p.box.input.disabled = all.input.checked));
      all.input.addEventListener("change", sync);
      picker = h("fieldset.field.backend-picker", h("legend", "Backends this user may call"), all.el, list);
    }
    const result = await modal(creating ? "New user" : `Edit ${user.name}`, (close) => {
      const form = h(
        "form.form",
        {
          onsubmit: async (event) => {
            event.preventDefault();
            const input = {
              name: name.value.trim(),
              email: email.value.trim() || null,
              allBackends: all.input.checked,
              isActive: active.input.checked,
            };
            const newLimits = limitsInput(limits);
            const saveLimits = async (id) => {
              if (!limitsChanged(user ? user.limits : null, newLimits)) return;
              await gql("mutation Limits($id: ID!, $limits: LimitsInput!) { setUserLimits(userId: $id, limits: $limits) { id } }", { id, limits: newLimits });
            };
            try {
              await busy(form, async () => {
                if (creating) {
                  const data = await gql(
                    `mutation CreateUser($input: CreateUserInput!) { createUser(input: $input) { apiKey user { ${USER_FIELDS} } } }`,
                    { input },
                  );
                  const created = data.createUser;
                  // The user exists now: a refused limit is reported, not a reason to lose the key.
                  await saveLimits(created.user.id).catch(toastError);
                  const chosen = input.allBackends ? [] : picks.filter((p) => p.box.input.checked).map((p) => p.backend);
                  const failed = [];
                  for (const b of chosen) {
                    try {
                      await gql("mutation Grant($input: CreatePermissionInput!) { createPermission(input: $input) { id } }", {
                        input: { userId: created.user.id, backendId: b.id },
                      });
                    } catch {
                      failed.push(b.name);
                    }
                  }
                  const fresh = (await gql(`query User($id: ID!) { user(id: $id) { ${USER_FIELDS} } }`, { id: created.user.id })).user;
                  close({ apiKey: created.apiKey, user: fresh || created.user, failed });
                } else {
                  const data = await gql(
                    `mutation UpdateUser($id: ID!, $input: UpdateUserInput!) { updateUser(id: $id, input: $input) { ${USER_FIELDS} } }`,
                    { id: user.id, input },
                  );
                  await saveLimits(user.id);
                  const fresh = (await gql(`query User($id: ID!) { user(id: $id) { ${USER_FIELDS} } }`, { id: user.id })).user;
                  close({ user: fresh || data.updateUser });
                }
              });
            } catch {
              /* shown in the form */
            }
          },
        },
        field("Name", name),
        field("E-mail (optional)", email),
        creating ? picker : all.el,
        active.el,
        limits.el,
        formActions(close, creating ? "Create user" : "Save"),
      );
      return form;
    }, { wide: true });
    if (!result) return;
    if (creating) {
      users.push(result.user);
      draw();
      await showSecretOnce("User created", `API key for ${result.user.name}`, result.apiKey, accessNote(result.user, result.failed));
    } else {
      users = users.map((u) => (u.id === result.user.id ? result.user : u));
      draw();
      toast(`Saved ${result.user.name}.`, "ok");
    }
  }

  /** What the new key can do, said truthfully: which backends, or why nothing yet. */
  function accessNote(user, failed) {
    const warn = failed && failed.length ? ` Could not grant: ${failed.join(", ")} (retry on Permissions).` : "";
    if (!user.isActive) return `${user.name} is inactive: the key is refused until you activate the user.${warn}`;
    if (user.allBackends) return `${user.name} can now call /v1 with this key, on every backend.${warn}`;
    if (user.permissions.length) {
      const names = user.permissions.map((p) => p.backend.name).join(", ");
      return `${user.name} can now call /v1 with this key, on: ${names}.${warn}`;
    }
    return `${user.name} has no backend yet: /v1 requests with this key are refused until you give it backends on Permissions.${warn}`;
  }

  async function setActive(user, isActive) {
    try {
      const data = await gql(
        `mutation SetActive($id: ID!, $input: UpdateUserInput!) { updateUser(id: $id, input: $input) { ${USER_FIELDS} } }`,
        { id: user.id, input: { isActive } },
      );
      users = users.map((u) => (u.id === user.id ? data.updateUser : u));
      draw();
      toast(`${user.name} is now ${isActive ? "active" : "inactive"}.`, "ok");
    } catch (err) {
      toastError(err);
    }
  }

  async function regenerate(user) {
    const ok = await confirmDialog(
      "Regenerate API key",
      `Issue a new API key for ${user.name}? The current key stops working at once.`,
      { confirmLabel: "Regenerate key", danger: true },
    );
    if (!ok) return;
    try {
      const data = await gql(
        `mutation Regenerate($id: ID!) { regenerateApiKey(id: $id) { apiKey user { ${USER_FIELDS} } } }`,
        { id: user.id },
      );
      users = users.map((u) => (u.id === user.id ? data.regenerateApiKey.user : u));
      draw();
      await showSecretOnce("New API key", `New API key for ${user.name}`, data.regenerateApiKey.apiKey, "The old key no longer works.");
    } catch (err) {
      toastError(err);
    }
  }

  function remove(user) {
    const message = `Delete ${user.name}? Their API key stops working and their permissions and scripts are removed. This cannot be undone.`;
    return confirmDelete("user", message, async () => {
      await gql("mutation DeleteUser($id: ID!) { deleteUser(id: $id) }", { id: user.id });
      users = users.filter((u) => u.id !== user.id);
      draw();
      toast(`Deleted ${user.name}.`, "ok");
    });
  }

  await load();
  return null;
}
