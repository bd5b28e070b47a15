"""JavaScript source snippets: sandbox, runtime, and the user-code wrappers."""

from __future__ import annotations

import re

from .datatypes import HOOKS

# User code starts on line USER_LINE_OFFSET + 1 of every wrapper below.
USER_LINE_OFFSET = 1
SOURCE_URL = "user.js"
MAX_LOG_LINES = 100
MAX_LOG_CHARS = 2000

_EXPORT_RE = re.compile(
    r"^([ \t]*)export[ \t]+(?:default[ \t]+)?(?=(?:async[ \t]+)?function|const|let|var|class)", re.MULTILINE
)
_EXPORT_LIST_RE = re.compile(r"^([ \t]*)export[ \t]*\{[^}]*\}[ \t]*;?", re.MULTILINE)
_PARSE_LOC_RE = re.compile(r"^[^\n]*?:(\d+): (.*)$", re.MULTILINE)

# Removes timers (setTimeout polyfill and its Atomics.waitAsync base) and anything
# host-like; installs a capturing console and the frozen runtime object `__rt`.
_RUNTIME_TEMPLATE = r"""
(function () {
  'use strict';
  const g = globalThis;
  for (const k of ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'setImmediate',
                   'clearImmediate', 'queueMicrotask', '__timer_manager', 'fetch', 'XMLHttpRequest',
                   'WebSocket', 'require', 'process', 'Deno', 'Bun']) {
    try { delete g[k]; } catch (e) { /* var-declared: not configurable */ }
    try { if (k in g) g[k] = undefined; } catch (e) { /* ignore */ }
  }
  try { delete Atomics.waitAsync; delete Atomics.wait; } catch (e) { /* ignore */ }
  const parse = JSON.parse, stringify = JSON.stringify, Str = String, isArr = Array.isArray;
  const MAXL = __MAXL__, MAXC = __MAXC__;
  let logs = [], dropped = 0, hooks = {}, pending = null;
  const fmt = (a) => {
    if (typeof a === 'string') return a;
    if (a instanceof Error) return a.stack || Str(a);
    try { const s = stringify(a); return s === undefined ? Str(a) : s; } catch (e) { return Str(a); }
  };
  const mk = (lvl) => (...args) => {
    if (logs.length >= MAXL) { dropped++; return; }
    let s = '[' + lvl + '] ' + args.map(fmt).join(' ');
    if (s.length > MAXC) s = s.slice(0, MAXC) + '...';
    logs[logs.length] = s;
  };
  const con = Object.freeze({ log: mk('log'), info: mk('info'), warn: mk('warn'),
                              error: mk('error'), debug: mk('debug'), trace: mk('debug') });
  Object.defineProperty(g, 'console', { value: con, writable: false, configurable: false });
  const drain = () => {
    const l = logs;
    if (dropped) l[l.length] = '[warn] ' + dropped + ' more console lines dropped';
    logs = []; dropped = 0;
    return stringify(l);
  };
  const errStr = (e) => {
    let msg;
    try {
      if (e instanceof Error) {
        msg = (e.name || 'Error') + ': ' + e.message;
        const m = /__URL__:(\d+):\d+/.exec(Str(e.stack));
        if (m) msg += ' (line ' + (Number(m[1]) - __OFF__) + ')';
      } else if (typeof e === 'string') {
        msg = e;
      } else {
        msg = 'Uncaught ' + (fmt(e));
      }
    } catch (x) { msg = 'Uncaught exception'; }
    return '{"e":' + stringify(Str(msg)) + ',"l":' + drain() + '}';
  };
  const fin = (r) => {
    let s;
    try { s = stringify(r); } catch (e) { return errStr(e); }
    if (s === undefined || r === null || typeof r !== 'object' || isArr(r))
      return '{"e":"hook did not return a context object","l":' + drain() + '}';
    return '{"v":' + s + ',"l":' + drain() + '}';
  };
  const rt = Object.freeze({
    install(h) {
      hooks = h;
      return stringify(Object.keys(h).filter((k) => typeof h[k] === 'function'));
    },
    start(name, json) {
      pending = null;
      const f = hooks[name];
      if (typeof f !== 'function') return '{"e":"hook ' + name + ' is not defined","l":' + drain() + '}';
      let r;
      try {
        r = f(parse(json));
        if (r !== null && typeof r === 'object' && typeof r.then === 'function') {
          const box = { done: false, out: null };
          pending = box;
          r.then((v) => { box.done = true; box.out = fin(v); },
                 (e) => { box.done = true; box.out = errStr(e); });
          return '{"p":1,"l":' + drain() + '}';
        }
      } catch (e) { return errStr(e); }
      return fin(r);
    },
    take() {
      const box = pending;
      pending = null;
      if (box === null || !box.done)
        return '{"e":"hook did not settle (awaited a promise that never resolves)","l":' + drain() + '}';
      return box.out;
    },
  });
  Object.defineProperty(g, '__rt', { value: rt, writable: false, configurable: false });
})();
"""
RUNTIME = (
    _RUNTIME_TEMPLATE.replace("__MAXL__", str(MAX_LOG_LINES))
    .replace("__MAXC__", str(MAX_LOG_CHARS))
    .replace("__URL__", re.escape(SOURCE_URL))
    .replace("__OFF__", str(USER_LINE_OFFSET))
)


def strip_exports(code: str) -> str:
    """Remove ES-module ``export`` keywords, keeping line and column positions stable."""
    code = _EXPORT_LIST_RE.sub(lambda m: " " * len(m.group(0)), code)
    return _EXPORT_RE.sub(lambda m: m.group(1) + " " * (len(m.group(0)) - len(m.group(1))), code)


def _hook_table() -> str:
    return ", ".join(f"{h}: typeof {h} === 'function' ? {h} : undefined" for h in HOOKS)


def compile_source(code: str) -> str:
    """Wrapper that runs the user's top level in a strict function scope and installs its hooks."""
    return (
        "__rt.install((function () {'use strict';\n"
        f"{strip_exports(code)}\n"
        f";return {{{_hook_table()}}};\n"
        f"}})());\n//# sourceURL={SOURCE_URL}"
    )


def probe_source(code: str) -> str:
    """Wrapper that reports which hooks are declared WITHOUT running any user code.

    Function declarations are hoisted, so ``typeof`` sees them before the (dead) user code;
    ``let``/``const``/``class`` bindings are in their TDZ and reported as ``"tdz"``.
    """
    checks = ", ".join(f"(() => {{ try {{ return typeof {h}; }} catch (e) {{ return 'tdz'; }} }})()" for h in HOOKS)
    return f"JSON.stringify((function () {{'use strict';return [{checks}];\n{strip_exports(code)}\n}})())"


def parse_error_location(text: str) -> tuple[str, int | None]:
    """Split a V8 parse/eval error text into (message, 1-based user line)."""
    m = _PARSE_LOC_RE.search(text)
    if not m:
        first = text.strip().splitlines()
        return (first[0] if first else text), None
    line = int(m.group(1)) - USER_LINE_OFFSET
    return m.group(2).strip(), (line if line >= 1 else None)
