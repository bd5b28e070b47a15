// The admin dashboard's shell: sign-in, navigation (hash routes such as #/users) and the views.

import { gql, onUnauthenticated, subscriptions } from "./graphql.js";
import { clearSession, loadSession, msUntilExpiry, saveSession } from "./session.js";
import { clear, errorBox, errorText, h, toast } from "./ui.js";
import * as users from "./views/users.js";
import * as backends from "./views/backends.js";
import * as permissions from "./views/permissions.js";
import * as scripts from "./views/scripts.js";
import * as live from "./views/live.js";
import * as usage from "./views/usage.js";
import * as logs from "./views/logs.js";
import * as prices from "./views/prices.js";

const VIEWS = [
  { path: "users", title: "Users", view: users },
  { path: "backends", title: "Backends", view: backends },
  { path: "permissions", title: "Permissions", view: permissions },
  { path: "prices", title: "Prices", view: prices },
  { path: "scripts", title: "Scripts", view: scripts },
  { path: "live", title: "Live traffic", view: live },
  { path: "logs", title: "Logs", view: logs },
  { path: "usage", title: "Usage", view: usage },
];
const DEFAULT_VIEW = "live";

const root = document.getElementById("app");
let teardown = null; // what the current view returned, called when leaving it
let expiryTimer = null;
let renderSeq = 0;

function currentPath() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  return hash.split(/[/?]/)[0];
}

// --- sign-in ----------------------------------------------------------------------------------

function renderLogin(notice) {
  leaveView();
  document.title = "Sign in · LLM Router admin";
  const password = h("input#password", {
    type: "password",
    name: "password",
    autocomplete: "current-password",
    required: true,
    autofocus: true,
    "aria-label": "Admin password",
  });
  const message = h("div.login-message", { "aria-live": "polite" }, notice ? h("div.alert.info", notice) : null);
  const submit = h("button.primary", { type: "submit" }, "Sign in");
  const form = h(
    "form.login-card",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        submit.disabled = true;
        clear(message);
        try {
          const data = await gql(
            "mutation Login($password: String!) { login(password: $password) { token expiresAt } }",
            { password: password.value },
            { anonymous: true, quietAuth: true },
          );
          saveSession(data.login.token, data.login.expiresAt);
          subscriptions.restart();
          if (!currentPath()) window.location.hash = `#/${DEFAULT_VIEW}`;
          render();
        } catch (err) {
          const wrong = err.code === "UNAUTHENTICATED";
          message.append(h("div.alert.error", { role: "alert" }, wrong ? "Wrong password. Try again." : errorText(err)));
          password.select();
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("div.brand.big", h("img", { src: "/admin/favicon.svg", alt: "", width: 36, height: 36 }), h("span", "LLM Router")),
    h("h1", "Admin sign-in"),
    message,
    h("input", { type: "text", name: "username", value: "admin", autocomplete: "username", hidden: true, "aria-hidden": "true" }),
    h("label.field", h("span", "Admin password"), password),
    submit,
  );
  clear(root).append(h("main.login", form));
  password.focus();
}

function signOut(notice) {
  clearSession();
  clearTimeout(expiryTimer);
  subscriptions.close();
  renderLogin(notice);
}

function scheduleExpiry() {
  clearTimeout(expiryTimer);
  const ms = msUntilExpiry();
  if (ms === Infinity) return;
  // setTimeout overflows past ~24.8 days; re-check then.
  expiryTimer = setTimeout(() => {
    if (msUntilExpiry() <= 0) signOut("Your session has expired. Sign in again.");
    else scheduleExpiry();
  }, Math.min(ms + 50, 2 ** 31 - 1));
}

onUnauthenticated(() => {
  if (loadSession()) signOut("Your session is no longer valid (it expired or the router restarted). Sign in again.");
});

// --- shell ------------------------------------------------------------------------------------

function leaveView() {
  if (typeof teardown === "function") {
    try {
      teardown();
    } catch (err) {
      console.error(err);
    }
  }
  teardown = null;
}

function renderShell(active) {
  const links = VIEWS.map(({ path, title }) =>
    h(`a.nav-link${path === active ? ".active" : ""}`, { href: `#/${path}`, "aria-current": path === active ? "page" : undefined, dataset: { view: path } }, title),
  );
  const nav = h("nav.nav#nav", { "aria-label": "Sections" }, links);
  const menu = h(
    "button.menu-toggle",
    {
      type: "button",
      "aria-label": "Menu",
      "aria-controls": "nav",
      "aria-expanded": "false",
      onclick: () => {
        const open = document.body.classList.toggle("nav-open");
        menu.setAttribute("aria-expanded", String(open));
      },
    },
    "☰",
  );
  const signOutButton = h("button.signout", { type: "button", onclick: () => signOut("You have signed out.") }, "Sign out");
  const main = h("main.content#content", { tabindex: "-1" });
  clear(root).append(
    h(
      "div.shell",
      h(
        "header.topbar",
        menu,
        h("a.brand", { href: `#/${DEFAULT_VIEW}` }, h("img", { src: "/admin/favicon.svg", alt: "", width: 24, height: 24 }), h("span", "LLM Router")),
        h("span.spacer"),
        signOutButton,
      ),
      nav,
      main,
    ),
  );
  return main;
}

async function render() {
  const seq = ++renderSeq;
  document.body.classList.remove("nav-open");
  if (!loadSession()) {
    renderLogin();
    return;
  }
  scheduleExpiry();
  let path = currentPath();
  let entry = VIEWS.find((v) => v.path === path);
  if (!entry) {
    path = DEFAULT_VIEW;
    entry = VIEWS.find((v) => v.path === path);
    window.history.replaceState(null, "", `#/${path}`);
  }
  leaveView();
  document.title = `${entry.title} · LLM Router admin`;
  const main = renderShell(path);
  main.append(h("h1.page-title", entry.title));
  const body = h("div.page", { dataset: { page: path } });
  main.append(body);
  try {
    const result = await entry.view.mount(body);
    if (seq !== renderSeq) {
      if (typeof result === "function") result();
      return;
    }
    teardown = result;
  } catch (err) {
    console.error(err);
    if (seq === renderSeq) body.append(errorBox(err, { retry: render }));
  }
}

window.addEventListener("hashchange", render);
window.addEventListener("storage", (event) => {
  // Signed in or out in another tab.
  if (event.key && event.key.startsWith("llm-router.")) render();
});
window.addEventListener("unhandledrejection", (event) => {
  const err = event.reason;
  if (err && err.name === "AbortError") return;
  toast(errorText(err), "error", 9000);
});
window.addEventListener("error", (event) => {
  if (event.error) toast(`Unexpected error: ${event.error.message || event.message}`, "error", 9000);
});

render();
