// Scripts: list, code editor with line numbers (syntax errors marked at their line on save),
// type and target pickers, activate/deactivate, delete, and a test panel running `testScript`.

import { gql } from "../graphql.js";
import { createEditor } from "../editor.js";
import {
  badge, clear, confirmDelete, confirmDialog, errorBox, errorText, field, fmtMs, h, loader, toast, toastError,
} from "../ui.js";

const SCRIPT_FIELDS = "id name type code isActive priority createdAt updatedAt user { id name } backend { id name }";

const TYPES = [
  { value: "PER_USER", label: "Per user", needsUser: true, needsBackend: false },
  { value: "PER_BACKEND", label: "Per backend", needsUser: false, needsBackend: true },
  { value: "PER_USER_BACKEND", label: "Per user and backend", needsUser: true, needsBackend: true },
];

// The hooks get the live context: {user: {id, name, email}, backend: {id, name, base_url} | null,
// request: {method, path, headers, body, isStream}, response (onResponse), chunk (onStreamChunk)}.
const TEMPLATE = `// Runs before the request goes upstream. Change context.request.body and return the context.
export function onRequest(context) {
  console.log(context.user.name, context.request.method, context.request.path, "model:", context.request.body.model);
  return context;
}

// Runs when the upstream answer is back (context.response).
export function onResponse(context) {
  return context;
}
`;

// Only until the script is saved: then the panel loads scriptTestContext (a real-shaped context).
const SAMPLE_CONTEXT = {
  user: { id: "1", name: "alice", email: null },
  backend: { id: "1", name: "local", base_url: "http://127.0.0.1:8000/v1" },
  request: {
    method: "POST",
    path: "/v1/chat/completions",
    headers: { "content-type": "application/json" },
    body: { model: "llama-3", messages: [{ role: "user", content: "Hello!" }] },
    isStream: false,
  },
  response: null,
  chunk: null,
};

function typeInfo(type) {
  return TYPES.find((t) => t.value === type) || TYPES[0];
}

function targetText(script) {
  const parts = [];
  if (script.user) parts.push(`user ${script.user.name}`);
  if (script.backend) parts.push(`backend ${script.backend.name}`);
  return parts.join(" · ") || "no target";
}

export async function mount(el) {
  let scripts = [];
  let users = [];
  let backends = [];
  let current = null; // the saved script being edited, or null for a new one
  let dirty = false;

  const status = h("div.status-area");
  const list = h("ul.script-list", { "aria-label": "Scripts" });
  const side = h("aside.script-side", h("button.primary.block#new-script", { type: "button", onclick: () => select(null) }, "New script"), list);

  // --- editor pane ---
  const name = h("input#script-name", { name: "name", required: true, autocomplete: "off", placeholder: "e.g. add-system-prompt" });
  const type = h("select#script-type", { name: "type" }, TYPES.map((t) => h("option", { value: t.value }, t.label)));
  const userSel = h("select#script-user", { name: "userId" });
  const backendSel = h("select#script-backend", { name: "backendId" });
  const priority = h("input#script-priority", { name: "priority", type: "number", step: 1, value: "0" });
  const activeOnCreate = h("input#script-active", { type: "checkbox" });
  const userField = field("User", userSel);
  const backendField = field("Backend", backendSel);
  const activeField = h("label.check.create-only", activeOnCreate, h("span", "Active once created"));
  const stateBadge = h("span.state");
  const codeError = h("div.script-error", { role: "alert", hidden: true });
  const editorHost = h("div.editor-host");
  const saveBtn = h("button.primary#save-script", { type: "submit" }, "Save");
  const toggleBtn = h("button#toggle-script", { type: "button", onclick: () => toggleActive() }, "Activate");
  const deleteBtn = h("button.danger#delete-script", { type: "button", onclick: () => remove() }, "Delete");
  const formError = h("div.form-error");

  const form = h(
    "form.script-form",
    { onsubmit: (event) => { event.preventDefault(); save().catch(() => {}); } },
    h("div.script-head", h("h2.script-title", "New script"), stateBadge),
    formError,
    h("div.form-row", field("Name", name), field("Type", type, "Fixed once the script is created."), userField, backendField, field("Priority", priority, "Lower runs first.")),
    activeField,
    h("div.code-label", "Code"),
    editorHost,
    codeError,
    h("div.actions.left", saveBtn, toggleBtn, deleteBtn, h("span.muted.dirty-note", "")),
  );

  // --- test panel ---
  const hook = h("select#test-hook", { "aria-label": "Hook" }, h("option", { value: "ON_REQUEST" }, "onRequest"), h("option", { value: "ON_RESPONSE" }, "onResponse"), h("option", { value: "ON_STREAM_CHUNK" }, "onStreamChunk"));
  const reloadCtx = h("button#reload-context", { type: "button", onclick: () => loadContext() }, "Context from latest request");
  const ctxNote = h("small.muted.context-note#context-note", "");
  let contextSource = "sample"; // sample | live | edited
  let settingContext = false;
  const contextHost = h("div.editor-host.small");
  const runBtn = h("button.primary#run-test", { type: "button", onclick: () => runTest() }, "Run test");
  const result = h("div.test-result#test-result", { "aria-live": "polite" }, h("p.muted", "Runs the saved script on this context without touching live traffic."));
  const testPanel = h(
    "section.test-panel",
    h("h2", "Test"),
    h("div.toolbar", field("Hook", hook), h("span.spacer"), reloadCtx, runBtn),
    h("div.code-label", "Context (JSON) ", ctxNote),
    contextHost,
    result,
  );

  clear(el).append(status, h("div.scripts-layout", side, h("div.script-main", form, testPanel)));

  const editor = createEditor(editorHost, {
    value: TEMPLATE,
    label: "Script code",
    onChange: () => {
      markDirty();
      if (!codeError.hidden) {
        codeError.hidden = true;
        editor.clearError();
      }
    },
  });
  const contextEditor = createEditor(contextHost, {
    value: JSON.stringify(SAMPLE_CONTEXT, null, 2),
    mode: "json",
    label: "Test context",
    minLines: 8,
    onChange: () => {
      if (settingContext) return;
      contextSource = "edited";
      ctxNote.textContent = "(edited)";
    },
  });
  ctxNote.textContent = "(example: saved scripts start from their latest request)";

  function setContext(value, source, note) {
    settingContext = true;
    try {
      contextEditor.setValue(JSON.stringify(value, null, 2));
    } finally {
      settingContext = false;
    }
    contextSource = source;
    ctxNote.textContent = note;
    contextHost.dataset.source = source;
  }

  /** The context live traffic would give this hook, from the script's latest request (bodies redacted). */
  async function loadContext() {
    if (!current) return;
    try {
      const data = await gql("query Ctx($id: ID!, $hook: ScriptHook!) { scriptTestContext(scriptId: $id, hook: $hook) }", { id: current.id, hook: hook.value });
      setContext(data.scriptTestContext, "live", "(from the latest request of this script's user/backend; prompt and answer redacted)");
    } catch (err) {
      toastError(err);
    }
  }
  hook.addEventListener("change", () => {
    if (contextSource !== "edited") loadContext();
  });

  for (const input of [name, priority]) input.addEventListener("input", markDirty);
  for (const input of [type, userSel, backendSel]) input.addEventListener("change", () => { markDirty(); syncTargets(); });

  function markDirty() {
    dirty = true;
    form.querySelector(".dirty-note").textContent = "Unsaved changes";
  }

  function syncTargets() {
    const info = typeInfo(type.value);
    userField.hidden = !info.needsUser;
    backendField.hidden = !info.needsBackend;
  }

  function fillOptions() {
    const keepUser = userSel.value;
    const keepBackend = backendSel.value;
    clear(userSel).append(...(users.length ? users.map((u) => h("option", { value: u.id }, u.name)) : [h("option", { value: "" }, "No users yet")]));
    clear(backendSel).append(...(backends.length ? backends.map((b) => h("option", { value: b.id }, b.name)) : [h("option", { value: "" }, "No backends yet")]));
    if (keepUser) userSel.value = keepUser;
    if (keepBackend) backendSel.value = keepBackend;
  }

  const load = loader(status, () => gql(`query Scripts { scripts { ${SCRIPT_FIELDS} } users { id name } backends { id name } }`), (data) => {
    scripts = data.scripts;
    users = data.users;
    backends = data.backends;
    fillOptions();
    drawList();
  });

  function drawList() {
    clear(list);
    if (!scripts.length) list.append(h("li.muted.empty-note", "No scripts yet."));
    for (const s of scripts) {
      list.append(
        h(
          `li${current && current.id === s.id ? ".selected" : ""}`,
          h(
            "button.script-item",
            { type: "button", onclick: () => select(s), dataset: { scriptId: s.id } },
            h("span.script-name", s.name),
            s.isActive ? badge("active", "ok") : badge("inactive", "off"),
            h("small.muted", `${typeInfo(s.type).label} · ${targetText(s)}`),
          ),
        ),
      );
    }
  }

  async function select(script) {
    if (dirty && !(await confirmDialog("Discard changes?", "The script has unsaved changes. Discard them?", { confirmLabel: "Discard", danger: true }))) return;
    current = script;
    name.value = script ? script.name : "";
    type.value = script ? script.type : "PER_USER";
    type.disabled = Boolean(script);
    if (script && script.user) userSel.value = script.user.id;
    if (script && script.backend) backendSel.value = script.backend.id;
    priority.value = String(script ? script.priority : 0);
    activeOnCreate.checked = false;
    editor.setValue(script ? script.code : TEMPLATE);
    codeError.hidden = true;
    clear(formError);
    dirty = false;
    drawHead();
    syncTargets();
    drawList();
    editor.refresh();
    if (script) await loadContext();
    else setContext(SAMPLE_CONTEXT, "sample", "(example: saved scripts start from their latest request)");
    contextEditor.refresh();
    if (!script) name.focus();
  }

  function drawHead() {
    form.querySelector(".script-title").textContent = current ? current.name : "New script";
    clear(stateBadge).append(current ? (current.isActive ? badge("active", "ok") : badge("inactive", "off")) : badge("not saved", "off"));
    toggleBtn.hidden = !current;
    deleteBtn.hidden = !current;
    activeField.hidden = Boolean(current);
    toggleBtn.textContent = current && current.isActive ? "Deactivate" : "Activate";
    form.querySelector(".dirty-note").textContent = dirty ? "Unsaved changes" : "";
  }

  function showCodeError(err) {
    const line = Number(err.extensions && err.extensions.line);
    clear(codeError);
    if (line >= 1) {
      codeError.dataset.line = String(line);
      codeError.append(h("strong", `Line ${line}: `), err.message);
      editor.markError(line, err.message);
    } else {
      delete codeError.dataset.line;
      codeError.append(errorText(err));
    }
    codeError.hidden = false;
  }

  /** Saves (creates or updates); resolves to the saved script, rejects after showing the error. */
  async function save() {
    clear(formError);
    codeError.hidden = true;
    editor.clearError();
    const info = typeInfo(type.value);
    const input = {
      name: name.value.trim(),
      code: editor.getValue(),
      priority: Number.parseInt(priority.value, 10) || 0,
      userId: info.needsUser ? userSel.value || null : null,
      backendId: info.needsBackend ? backendSel.value || null : null,
    };
    if (!input.name) {
      formError.append(errorBox(new Error("Give the script a name.")));
      name.focus();
      throw new Error("no name");
    }
    saveBtn.disabled = true;
    try {
      let saved;
      if (current) {
        const data = await gql(`mutation UpdateScript($id: ID!, $input: UpdateScriptInput!) { updateScript(id: $id, input: $input) { ${SCRIPT_FIELDS} } }`, { id: current.id, input });
        saved = data.updateScript;
        scripts = scripts.map((s) => (s.id === saved.id ? saved : s));
      } else {
        const data = await gql(`mutation CreateScript($input: CreateScriptInput!) { createScript(input: $input) { ${SCRIPT_FIELDS} } }`, {
          input: { ...input, type: type.value, isActive: activeOnCreate.checked },
        });
        saved = data.createScript;
        scripts.push(saved);
      }
      current = saved;
      type.disabled = true;
      dirty = false;
      drawHead();
      drawList();
      toast(`Saved script ${saved.name}.`, "ok");
      return saved;
    } catch (err) {
      if (err.code === "BAD_USER_INPUT" && err.extensions && err.extensions.line) showCodeError(err);
      else formError.append(errorBox(err));
      throw err;
    } finally {
      saveBtn.disabled = false;
    }
  }

  async function toggleActive() {
    if (!current) return;
    const activate = !current.isActive;
    toggleBtn.disabled = true;
    try {
      const data = await gql(`mutation Toggle($id: ID!) { ${activate ? "activateScript" : "deactivateScript"}(id: $id) { ${SCRIPT_FIELDS} } }`, { id: current.id });
      const saved = activate ? data.activateScript : data.deactivateScript;
      scripts = scripts.map((s) => (s.id === saved.id ? saved : s));
      current = { ...current, isActive: saved.isActive };
      drawHead();
      drawList();
      toast(`${saved.name} is now ${saved.isActive ? "active" : "inactive"}.`, "ok");
    } catch (err) {
      toastError(err);
    } finally {
      toggleBtn.disabled = false;
    }
  }

  async function remove() {
    if (!current) return;
    await confirmDelete("script", `Delete the script ${current.name}? This cannot be undone.`, async () => {
      await gql("mutation DeleteScript($id: ID!) { deleteScript(id: $id) }", { id: current.id });
      toast(`Deleted ${current.name}.`, "ok");
      scripts = scripts.filter((s) => s.id !== current.id);
      dirty = false;
      await select(null);
    });
  }

  async function runTest() {
    runBtn.disabled = true;
    try {
      if (!current || dirty) {
        try {
          await save();
        } catch {
          clear(result).append(h("p.alert.error", "Save the script first: see the error above."));
          return;
        }
      }
      if (contextSource === "sample") await loadContext();
      // An emptied editor runs on the server's own scriptTestContext.
      const text = contextEditor.getValue().trim();
      let context = null;
      try {
        context = text ? JSON.parse(text) : null;
      } catch (err) {
        clear(result).append(errorBox(new Error(`The context is not valid JSON: ${err.message}`)));
        return;
      }
      clear(result).append(h("p.muted", "Running…"));
      const data = await gql(
        "mutation Test($id: ID!, $input: ScriptTestInput!) { testScript(id: $id, input: $input) { ok context logs error durationMs } }",
        { id: current.id, input: { hook: hook.value, context } },
      );
      drawResult(data.testScript);
    } catch (err) {
      clear(result).append(errorBox(err));
    } finally {
      runBtn.disabled = false;
    }
  }

  function drawResult(r) {
    clear(result).append(
      h(
        "div.result-body",
        h(
        "div.result-head",
        r.ok ? badge("ok", "ok") : badge("failed", "bad"),
        h("span.muted", `took ${fmtMs(r.durationMs)}`),
      ),
      r.error ? h("div.alert.error.test-error", { role: "alert" }, r.error) : null,
      h("h3", "Console"),
      r.logs.length ? h("pre.logs", r.logs.join("\n")) : h("p.muted", "Nothing was logged."),
      h("h3", "Returned context"),
        h("pre.json", r.context === null || r.context === undefined ? "null" : JSON.stringify(r.context, null, 2)),
      ),
    );
  }

  await load();
  // Someone quick may have started typing while the list loaded: never clobber (or question) that.
  if (!dirty) await select(scripts[0] || null);
  return null;
}
