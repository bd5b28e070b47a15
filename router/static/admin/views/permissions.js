// Permissions: a users × backends grid of checkboxes, plus the "all backends" switch per user.

import { gql } from "../graphql.js";
import { clear, emptyRow, h, loader, tableWrap, toast, toastError, toggle } from "../ui.js";

export async function mount(el) {
  let users = [];
  let backends = [];
  const status = h("div.status-area");
  const grid = h("div.grid-host");
  clear(el).append(
    h("p.muted", "Tick a box to let a user call a backend. \"All backends\" also covers backends added later."),
    status,
    grid,
  );

  const load = loader(
    status,
    () => gql(`query Grid {
        users { id name isActive allBackends permissions { id backend { id } } }
        backends { id name isActive healthy }
      }`),
    (data) => {
      users = data.users;
      backends = data.backends;
      draw();
    },
  );

  function has(user, backendId) {
    return user.permissions.some((p) => p.backend.id === backendId);
  }

  function draw() {
    const head = h(
      "tr",
      h("th.sticky", "User"),
      h("th", "All backends"),
      backends.map((b) => h("th", { dataset: { backendId: b.id }, class: b.isActive ? undefined : "muted" }, b.name)),
    );
    const tbody = h("tbody");
    if (!users.length) tbody.append(emptyRow(backends.length + 2, "No users yet."));
    for (const user of users) {
      const allSwitch = toggle(user.allBackends, {
        "aria-label": `${user.name}: all backends`,
        title: "May use every backend, present and future",
        onchange: (event) => setAll(user, event.target.checked, event.target),
        dataset: { userId: user.id },
        class: "all-backends",
      });
      const cells = backends.map((b) => {
        const granted = has(user, b.id);
        const box = h("input.perm", {
          type: "checkbox",
          checked: user.allBackends || granted,
          disabled: user.allBackends,
          "aria-label": `${user.name} may use ${b.name}`,
          title: user.allBackends ? "Covered by \"all backends\"" : `${user.name} may use ${b.name}`,
          dataset: { userId: user.id, backendId: b.id },
          onchange: (event) => setPermission(user, b, event.target.checked, event.target),
        });
        return h("td.cell", box);
      });
      tbody.append(h("tr", { dataset: { userId: user.id, userName: user.name } }, h("th.sticky.row-head", { scope: "row" }, user.name, user.isActive ? null : h("span.muted", " (inactive)")), h("td.cell", allSwitch), cells));
    }
    const table = h("table.data.grid", h("thead", head), tbody);
    clear(grid).append(backends.length ? tableWrap(table) : h("p.empty-note", "No backends yet: add one on the Backends page first."));
  }

  async function setPermission(user, backend, grant, box) {
    box.disabled = true;
    try {
      if (grant) {
        const data = await gql(
          "mutation Grant($input: CreatePermissionInput!) { createPermission(input: $input) { id backend { id } } }",
          { input: { userId: user.id, backendId: backend.id } },
        );
        user.permissions.push(data.createPermission);
      } else {
        await gql("mutation Revoke($userId: ID!, $backendId: ID!) { deletePermission(userId: $userId, backendId: $backendId) }", {
          userId: user.id,
          backendId: backend.id,
        });
        user.permissions = user.permissions.filter((p) => p.backend.id !== backend.id);
      }
      toast(`${user.name} ${grant ? "may now use" : "may no longer use"} ${backend.name}.`, "ok", 2500);
    } catch (err) {
      box.checked = !grant;
      toastError(err);
    } finally {
      box.disabled = user.allBackends;
    }
  }

  async function setAll(user, allBackends, input) {
    input.disabled = true;
    try {
      await gql("mutation SetAll($id: ID!, $input: UpdateUserInput!) { updateUser(id: $id, input: $input) { id allBackends } }", {
        id: user.id,
        input: { allBackends },
      });
      user.allBackends = allBackends;
      toast(`${user.name} ${allBackends ? "may now use every backend" : "now needs per-backend permissions"}.`, "ok", 2500);
      draw();
    } catch (err) {
      input.checked = !allBackends;
      input.disabled = false;
      toastError(err);
    }
  }

  await load();
  return null;
}
