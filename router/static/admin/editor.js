// A code editor with line numbers: CodeMirror 5 (vendored, loaded by index.html) when present,
// otherwise a plain textarea with a line-number gutter. Both can mark one line as erroneous.

import { h } from "./ui.js";

/**
 * createEditor(host, {value, mode: "javascript" | "json", label, minLines, onChange})
 * -> {getValue, setValue, markError(line, message), clearError, focus, refresh, kind}
 */
export function createEditor(host, { value = "", mode = "javascript", label = "Code", onChange, minLines = 12 } = {}) {
  const CM = window.CodeMirror;
  return CM ? codeMirrorEditor(CM, host, { value, mode, label, onChange, minLines }) : textareaEditor(host, { value, label, onChange, minLines });
}

function codeMirrorEditor(CM, host, { value, mode, label, onChange, minLines }) {
  const cm = CM(host, {
    value,
    mode: mode === "json" ? { name: "javascript", json: true } : "javascript",
    lineNumbers: true,
    matchBrackets: true,
    autoCloseBrackets: true,
    indentUnit: 2,
    tabSize: 2,
    lineWrapping: false,
    viewportMargin: Infinity, // render every line: scripts are short, and it keeps line marks in the DOM
    gutters: ["CodeMirror-linenumbers", "error-gutter"],
    extraKeys: {
      Tab: (editor) => editor.execCommand(editor.somethingSelected() ? "indentMore" : "insertSoftTab"),
      "Shift-Tab": "indentLess",
    },
    screenReaderLabel: label,
  });
  cm.getWrapperElement().style.minHeight = `${minLines * 1.5}em`;
  cm.getWrapperElement().dataset.editor = label;
  let marked = null;
  if (onChange) cm.on("change", () => onChange(cm.getValue()));
  const api = {
    kind: "codemirror",
    cm,
    getValue: () => cm.getValue(),
    setValue: (text) => {
      api.clearError();
      cm.setValue(text);
      cm.clearHistory();
    },
    markError(line, message) {
      api.clearError();
      const index = Math.min(Math.max(1, line), cm.lineCount()) - 1;
      const handle = cm.getLineHandle(index);
      cm.addLineClass(handle, "wrap", "cm-error-line");
      const marker = h("span.error-marker", { title: message, "aria-label": `Error on line ${line}` }, "●");
      cm.setGutterMarker(handle, "error-gutter", marker);
      marked = handle;
      cm.setCursor({ line: index, ch: 0 });
      cm.scrollIntoView({ line: index, ch: 0 }, 60);
    },
    clearError() {
      if (marked) {
        cm.removeLineClass(marked, "wrap", "cm-error-line");
        cm.setGutterMarker(marked, "error-gutter", null);
        marked = null;
      }
    },
    focus: () => cm.focus(),
    refresh: () => cm.refresh(),
  };
  return api;
}

function textareaEditor(host, { value, label, onChange, minLines }) {
  const gutter = h("div.gutter", { "aria-hidden": "true" });
  const area = h("textarea.code", { spellcheck: false, "aria-label": label, rows: minLines, wrap: "off" });
  area.value = value;
  let errorLine = null;
  const drawGutter = () => {
    const count = area.value.split("\n").length;
    gutter.textContent = "";
    for (let i = 1; i <= count; i += 1) gutter.append(h(`div${i === errorLine ? ".error" : ""}`, String(i)));
    gutter.scrollTop = area.scrollTop;
  };
  area.addEventListener("input", () => {
    drawGutter();
    if (onChange) onChange(area.value);
  });
  area.addEventListener("scroll", () => (gutter.scrollTop = area.scrollTop));
  area.addEventListener("keydown", (event) => {
    if (event.key === "Tab" && !event.shiftKey) {
      event.preventDefault();
      area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
      area.dispatchEvent(new Event("input"));
    }
  });
  host.append(h("div.plain-editor", gutter, area));
  drawGutter();
  return {
    kind: "textarea",
    getValue: () => area.value,
    setValue: (text) => {
      errorLine = null;
      area.value = text;
      drawGutter();
    },
    markError(line) {
      errorLine = line;
      drawGutter();
      const lines = area.value.split("\n");
      const start = lines.slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
      area.focus();
      area.setSelectionRange(start, start + (lines[line - 1] || "").length);
    },
    clearError() {
      errorLine = null;
      drawGutter();
    },
    focus: () => area.focus(),
    refresh: () => drawGutter(),
  };
}
