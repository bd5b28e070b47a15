// Small DOM helpers shared by the views: element builder, toasts, dialogs, formatting.

/**
 * h("button.primary#save", {onclick, disabled: true, dataset: {x: 1}}, "Save")
 * Children may be strings, numbers, nodes, arrays, or null/false (skipped).
 */
export function h(spec, attrs, ...children) {
  if (attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    if (attrs !== undefined) children.unshift(attrs);
    attrs = {};
  }
  const match = /^([a-z0-9-]+)?((?:[.#][\w-]+)*)$/i.exec(spec);
  const tag = (match && match[1]) || "div";
  const el = document.createElement(tag);
  if (match && match[2]) {
    for (const part of match[2].match(/[.#][\w-]+/g)) {
      if (part[0] === ".") el.classList.add(part.slice(1));
      else el.id = part.slice(1);
    }
  }
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className += (el.className ? " " : "") + value;
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// --- errors -----------------------------------------------------------------------------------

const CODE_WORDS = {
  UNAUTHENTICATED: "Not signed in",
  FORBIDDEN: "Not allowed",
  NOT_FOUND: "Not found",
  BAD_USER_INPUT: "Invalid input",
  CONFLICT: "Conflict",
  NETWORK: "Network problem",
};

/** A sentence for any error: API errors keep their message, prefixed by what kind of error it is. */
export function errorText(err) {
  if (!err) return "Something went wrong.";
  const message = err.message || String(err);
  const words = err.code && CODE_WORDS[err.code];
  return words && !message.toLowerCase().startsWith(words.toLowerCase()) ? `${words}: ${message}` : message;
}

/** A red box with the error in words. */
export function errorBox(err, { retry } = {}) {
  return h(
    "div.alert.error",
    { role: "alert" },
    h("span", errorText(err)),
    retry ? h("button.link", { type: "button", onclick: retry }, "Try again") : null,
  );
}

// --- toasts -----------------------------------------------------------------------------------

export function toast(message, kind = "info", ms = 5000) {
  const host = document.getElementById("toasts");
  if (!host) return;
  const el = h(`div.toast.${kind}`, { role: kind === "error" ? "alert" : "status" }, message);
  const close = () => el.remove();
  el.append(h("button.close", { type: "button", "aria-label": "Dismiss", onclick: close }, "×"));
  host.append(el);
  if (ms) setTimeout(close, ms);
}

export const toastError = (err) => toast(errorText(err), "error", 9000);

// --- dialogs ----------------------------------------------------------------------------------

/**
 * Opens a modal dialog. `render(close)` returns its body; resolves with what close(value) is given
 * (undefined when dismissed with Escape, the × or a click outside).
 */
export function modal(title, render, { wide = false, className = "" } = {}) {
  return new Promise((resolve) => {
    const previous = document.activeElement;
    let done = false;
    const close = (value) => {
      if (done) return;
      done = true;
      backdrop.remove();
      document.removeEventListener("keydown", onKey, true);
      if (previous && previous.focus) previous.focus();
      resolve(value);
    };
    const onKey = (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        close(undefined);
      }
    };
    const dialog = h(
      `div.dialog${wide ? ".wide" : ""}`,
      { role: "dialog", "aria-modal": "true", "aria-label": title, class: className || undefined },
      h("header", h("h2", title), h("button.close", { type: "button", "aria-label": "Close", onclick: () => close() }, "×")),
      h("div.dialog-body", render(close)),
    );
    const backdrop = h("div.backdrop", { onmousedown: (e) => e.target === backdrop && close() }, dialog);
    document.body.append(backdrop);
    document.addEventListener("keydown", onKey, true);
    const focusable = dialog.querySelector("[autofocus], input, select, textarea, .dialog-body button");
    if (focusable) focusable.focus();
  });
}

/** Asks a yes/no question; resolves true when confirmed. */
export function confirmDialog(title, message, { confirmLabel = "Confirm", danger = false } = {}) {
  return modal(title, (close) => [
    h("p", message),
    h(
      "div.actions",
      h("button", { type: "button", onclick: () => close(false) }, "Cancel"),
      h(`button.${danger ? "danger" : "primary"}`, { type: "button", onclick: () => close(true), autofocus: true }, confirmLabel),
    ),
  ]).then(Boolean);
}

/**
 * A view's `load`: awaits `fetch()`, clears `status` and hands the data to `show`; on failure it
 * shows the error in `status`, with a button that tries again.
 */
export function loader(status, fetch, show) {
  async function load() {
    try {
      const data = await fetch();
      clear(status);
      show(data);
    } catch (err) {
      clear(status).append(errorBox(err, { retry: load }));
    }
  }
  return load;
}

/** The Cancel and submit buttons that end a form dialog. */
export function formActions(close, submitLabel) {
  return h("div.actions", h("button", { type: "button", onclick: () => close() }, "Cancel"), h("button.primary", { type: "submit" }, submitLabel));
}

/** Asks before deleting (title and button "Delete <what>"), then runs `remove`; a failure is shown as a toast. */
export async function confirmDelete(what, message, remove) {
  if (!(await confirmDialog(`Delete ${what}`, message, { confirmLabel: `Delete ${what}`, danger: true }))) return;
  try {
    await remove();
  } catch (err) {
    toastError(err);
  }
}

/** Shows a secret once with a copy button (new or regenerated API keys). */
export function showSecretOnce(title, label, secret, note) {
  return modal(title, (close) => {
    const input = h("input.secret", { type: "text", readOnly: true, value: secret, "aria-label": label, spellcheck: false });
    const status = h("span.copy-status", { "aria-live": "polite" });
    const copy = async () => {
      const ok = await copyText(secret, input);
      status.textContent = ok ? "Copied." : "Copy failed: select the key and copy it by hand.";
    };
    return [
      note ? h("p", note) : null,
      h("label.field", h("span", label), h("div.copy-row", input, h("button.primary.copy", { type: "button", onclick: copy }, "Copy"))),
      status,
      h("p.warning", { role: "note" }, "This is the only time the key is shown: you will not see it again. Store it somewhere safe now."),
      h("div.actions", h("button", { type: "button", onclick: () => close() }, "I have stored the key")),
    ];
  });
}

export async function copyText(text, input) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall back below */
  }
  try {
    if (input) {
      input.focus();
      input.select();
    }
    return document.execCommand("copy");
  } catch {
    return false;
  }
}

// --- forms ------------------------------------------------------------------------------------

/** A labelled form field around `control`. */
export function field(label, control, hint) {
  return h("label.field", h("span", label), control, hint ? h("small.hint", hint) : null);
}

export function checkbox(label, checked, attrs = {}) {
  const input = h("input", { type: "checkbox", checked: Boolean(checked), ...attrs });
  return { input, el: h("label.check", input, h("span", label)) };
}

/** A toggle switch (a styled checkbox). */
export function toggle(checked, attrs = {}) {
  return h("label.switch", { title: attrs.title }, h("input", { type: "checkbox", role: "switch", checked: Boolean(checked), ...attrs }), h("span.slider"));
}

/** Disables a form's buttons while `work` runs; shows an error inside the form if it throws. */
export async function busy(form, work) {
  const buttons = [...form.querySelectorAll("button")];
  buttons.forEach((b) => (b.disabled = true));
  const old = form.querySelector(":scope > .alert.error");
  if (old) old.remove();
  try {
    return await work();
  } catch (err) {
    form.prepend(errorBox(err));
    throw err;
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// --- formatting -------------------------------------------------------------------------------

export function fmtDate(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}

export function fmtTime(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleTimeString();
}

export function fmtMs(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
  return `${Math.round(value)} ms`;
}

export function fmtInt(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString();
}

export function fmtPct(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value === 0) return "0%";
  return `${(value * 100).toFixed(value < 0.1 ? 1 : 0)}%`;
}

export function badge(text, kind) {
  return h(`span.badge.${kind}`, text);
}

/**
 * Gives every body cell of `table` a data-label from its column's header, so that on a phone the
 * rows can be shown as cards ("stack-sm" tables, see style.css). Call after (re)drawing rows.
 */
export function labelCells(table) {
  const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  for (const row of table.tBodies[0] ? table.tBodies[0].rows : []) {
    if (row.classList.contains("empty")) continue;
    [...row.cells].forEach((cell, i) => {
      if (heads[i] && !cell.dataset.label) cell.dataset.label = heads[i];
    });
  }
}

/** Wraps a table so it scrolls sideways on narrow screens. */
export function tableWrap(table) {
  return h("div.table-wrap", table);
}

export function emptyRow(colspan, text) {
  return h("tr.empty", h("td", { colSpan: colspan }, text));
}

export function splitList(text) {
  return text
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter(Boolean);
}
