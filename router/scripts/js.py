"""JavaScript source snippets: sandbox, runtime, and the user-code wrappers."""

from __future__ import annotations

import re

from .datatypes import HOOKS

# User code starts on line USER_LINE_OFFSET + 1 of every wrapper below.
USER_LINE_OFFSET = 1
SOURCE_URL = "user.js"
MAX_LOG_LINES = 100
MAX_LOG_CHARS = 2000
# Array methods and Array.from refuse longer receivers / array-likes (see the runtime below).
MAX_ARRAY_LENGTH = 1 << 24

_EXPORT_RE = re.compile(
    r"^([ \t]*)export[ \t]+(?:default[ \t]+)?(?=(?:async[ \t]+)?function|const|let|var|class)", re.MULTILINE
)
_EXPORT_LIST_RE = re.compile(r"^([ \t]*)export[ \t]*\{[^}]*\}[ \t]*;?", re.MULTILINE)
_PARSE_LOC_RE = re.compile(r"^[^\n]*?:(\d+): (.*)$", re.MULTILINE)

# Removes timers (setTimeout polyfill and its Atomics.waitAsync base), anything host-like, and
# what allocates memory V8's heap limit does not see (WebAssembly, SharedArrayBuffer, Intl's ICU
# objects); puts ArrayBuffer and typed-array allocations on a budget; installs a capturing
# console and the frozen runtime object `__rt`.
_RUNTIME_TEMPLATE = r"""
(function () {
  'use strict';
  const g = globalThis;
  for (const k of ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'setImmediate',
                   'clearImmediate', 'queueMicrotask', '__timer_manager', 'fetch', 'XMLHttpRequest',
                   'WebSocket', 'require', 'process', 'Deno', 'Bun', 'WebAssembly', 'SharedArrayBuffer',
                   'Atomics', 'Intl']) {
    try { delete g[k]; } catch (e) { /* var-declared: not configurable */ }
    try { if (k in g) g[k] = undefined; } catch (e) { /* ignore */ }
  }
  const parse = JSON.parse, stringify = JSON.stringify, Str = String, isArr = Array.isArray;
  const R = Reflect, construct = R.construct, apply = R.apply, defProp = Object.defineProperty;
  const getDesc = Object.getOwnPropertyDescriptor, trunc = Math.trunc, Num = Number, aFrom = Array.from;

  // --- buffer budget: every byte a script can get in an ArrayBuffer is counted, never uncounted
  const MAXB = __MAXB__;
  let used = 0;
  const charge = (n) => {
    n = trunc(Num(n));
    if (!(n > 0)) return;
    if (used + n > MAXB) {
      throw new RangeError('out of memory: ArrayBuffer allocations exceed the script limit of '
                           + (MAXB / 1048576) + ' MB');
    }
    used += n;
  };
  const prim = (x) => (x !== null && (typeof x === 'object' || typeof x === 'function')) ? Num(x) : x;
  const AB = ArrayBuffer, U8 = Uint8Array, TA = Object.getPrototypeOf(Uint8Array);
  const abLen = getDesc(AB.prototype, 'byteLength').get;
  const taLen = getDesc(TA.prototype, 'length').get, taBytes = getDesc(TA.prototype, 'byteLength').get;
  const isBuf = (x) => { try { apply(abLen, x, []); return true; } catch (e) { return false; } };
  const isTA = (x) => { try { apply(taLen, x, []); return true; } catch (e) { return false; } };
  const guard = (Orig, pre) => {
    const P = new Proxy(Orig, {
      construct(t, args, nt) { return construct(t, pre(args), nt === P ? t : nt); },
    });
    defProp(Orig.prototype, 'constructor', { value: P, writable: true, configurable: true });
    defProp(g, Orig.name, { value: P, writable: true, configurable: true });
  };
  guard(AB, (args) => {
    const n = prim(args[0]);
    const o = args[1];
    let max;
    if (o !== null && typeof o === 'object') { max = o.maxByteLength; if (max !== undefined) max = prim(max); }
    if (max === undefined) { charge(n); return [n]; }
    charge(trunc(Num(max)) > trunc(Num(n)) ? max : n);
    return [n, { maxByteLength: max }];
  });
  for (const name of ['Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array', 'Uint16Array',
                      'Int32Array', 'Uint32Array', 'Float16Array', 'Float32Array', 'Float64Array',
                      'BigInt64Array', 'BigUint64Array']) {
    const T = g[name];
    if (typeof T !== 'function') continue;
    const bpe = T.BYTES_PER_ELEMENT;
    guard(T, (args) => {
      const a = args[0];
      if (a === null || (typeof a !== 'object' && typeof a !== 'function')) { charge(Num(a) * bpe); return [a]; }
      if (isBuf(a)) return args;  // a view on an existing buffer: nothing allocated
      if (isTA(a)) { charge(apply(taLen, a, []) * bpe); return [a]; }
      const list = aFrom(a);  // iterable or array-like, materialised once (on the heap, which is limited)
      charge(list.length * bpe);
      return [list];
    });
  }
  const wrapMethod = (obj, name, size) => {
    const f = obj[name];
    if (typeof f !== 'function') return;
    defProp(obj, name, { value: { [name](...args) { charge(size(this, args)); return apply(f, this, args); } }[name],
                         writable: true, configurable: true });
  };
  const ownBytes = (t) => apply(taBytes, t, []);
  for (const m of ['toReversed', 'toSorted', 'with']) wrapMethod(TA.prototype, m, ownBytes);
  for (const m of ['transfer', 'transferToFixedLength']) {
    const f = AB.prototype[m];
    if (typeof f !== 'function') continue;
    defProp(AB.prototype, m, { value: { [m](len) {
      const n = len === undefined ? apply(abLen, this, []) : prim(len);
      charge(n);
      return len === undefined ? apply(f, this, []) : apply(f, this, [n]);
    } }[m], writable: true, configurable: true });
  }
  wrapMethod(U8, 'fromBase64', (t, args) => typeof args[0] === 'string' ? args[0].length * 3 / 4 + 3 : 0);
  wrapMethod(U8, 'fromHex', (t, args) => typeof args[0] === 'string' ? args[0].length / 2 + 1 : 0);

  // --- built-ins that loop over a length without ever looking at V8's termination request: a time
  // or memory limit answers the call, but the abandoned isolate keeps looping (for hours with a
  // length of 2**53, or until a dictionary outgrows V8's largest table and V8 aborts the process).
  // Array methods refuse receivers longer than MAXLEN; Array.from is plain JS (loops V8 can stop).
  const MAXLEN = __MAXLEN__;
  const lenOf = (o) => { const n = trunc(Num(o.length)); return n > 0 ? n : 0; };
  const tooLong = (what, n) => new RangeError(what + ': length ' + n + ' is over the script limit of ' + MAXLEN);
  const AP = Array.prototype, iter = Symbol.iterator;
  for (const m of R.ownKeys(AP)) {
    const f = AP[m];
    if (typeof m !== 'string' || m === 'constructor' || typeof f !== 'function') continue;
    defProp(AP, m, { value: { [m](...args) {
      if (this !== null && this !== undefined) { const n = lenOf(Object(this)); if (n > MAXLEN) throw tooLong(m, n); }
      return apply(f, this, args);
    } }[m], writable: true, configurable: true });
  }
  const put = (a, i, v) => { defProp(a, i, { value: v, writable: true, enumerable: true, configurable: true }); };
  defProp(Array, 'from', { value: { from(items, mapFn, thisArg) {
    if (mapFn !== undefined && typeof mapFn !== 'function') throw new TypeError(Str(mapFn) + ' is not a function');
    const C = typeof this === 'function' ? this : Array;
    const map = (v, i) => (mapFn === undefined ? v : apply(mapFn, thisArg, [v, i]));
    if (items === null || items === undefined) throw new TypeError('Array.from: ' + items + ' is not iterable');
    const it = items[iter];
    if (it !== undefined && it !== null) {
      const out = C === Array ? [] : construct(C, []);
      let i = 0;
      for (const v of { [iter]: () => apply(it, items, []) }) { put(out, i, map(v, i)); i++; }
      out.length = i;
      return out;
    }
    const o = Object(items), n = lenOf(o);
    if (n > MAXLEN) throw tooLong('Array.from', n);
    const out = C === Array ? new Array(n) : construct(C, [n]);
    for (let i = 0; i < n; i++) put(out, i, map(o[i], i));
    out.length = n;
    return out;
  } }.from, writable: true, configurable: true });

  // --- console
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
  const tail = () => ',"l":' + drain() + ',"m":' + used + '}';  // "m" last: read without parsing
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
    return '{"e":' + stringify(Str(msg)) + tail();
  };

  // --- big parts (bodies, the stream chunk) come back only when the hook changed them
  const PARTS = [['request', 'body'], ['response', 'body'], [null, 'chunk']];
  const holder = (c, p) => {
    if (p[0] === null) return c;
    const h = c[p[0]];
    return h !== null && typeof h === 'object' && !isArr(h) ? h : null;
  };
  const snap = (c) => {  // plain loops here: the Array methods are wrapped (see above)
    const out = [];
    for (let i = 0; i < PARTS.length; i++) {
      const p = PARTS[i], h = holder(c, p);
      out[i] = h !== null && p[1] in h ? stringify(h[p[1]]) : null;
    }
    return out;
  };
  const fin = (r, before) => {
    if (r === null || typeof r !== 'object' || isArr(r))
      return '{"e":"hook did not return a context object"' + tail();
    const kept = [];
    const detached = [];
    let s;
    try {
      for (let i = 0; i < PARTS.length; i++) {
        if (before[i] === null) continue;
        const h = holder(r, PARTS[i]);
        const k = PARTS[i][1];
        if (h !== null && k in h && stringify(h[k]) === before[i]) {
          const v = h[k];
          try { h[k] = undefined; } catch (e) { continue; }  // frozen: send it back whole
          detached[detached.length] = [h, k, v];
          kept[kept.length] = i;
        }
      }
      s = stringify(r);
    } catch (e) {
      return errStr(e);
    } finally {
      for (const [h, k, v] of detached) h[k] = v;
    }
    if (s === undefined) return '{"e":"hook did not return a context object"' + tail();
    return '{"v":' + s + ',"k":' + stringify(kept) + tail();
  };
  const rt = Object.freeze({
    install(h) {
      hooks = h;
      return stringify(Object.keys(h).filter((k) => typeof h[k] === 'function'));
    },
    // The engine's way in (a function call, nothing to compile): `this` is the context as JSON text
    // (JSON.parse: a "__proto__" key is an own property), `name` the hook; without a name, take().
    call(name) {
      return name === undefined ? rt.take() : rt.start(name, parse(this));
    },
    start(name, ctx) {
      pending = null;
      const f = hooks[name];
      if (typeof f !== 'function') return '{"e":"hook ' + name + ' is not defined"' + tail();
      let r, before;
      try {
        before = snap(ctx);
        r = f(ctx);
        if (r !== null && typeof r === 'object' && typeof r.then === 'function') {
          const box = { done: false, out: null };
          pending = box;
          r.then((v) => { box.done = true; box.out = fin(v, before); },
                 (e) => { box.done = true; box.out = errStr(e); });
          return '{"p":1' + tail();
        }
      } catch (e) { return errStr(e); }
      return fin(r, before);
    },
    take() {
      const box = pending;
      pending = null;
      if (box === null || !box.done)
        return '{"e":"hook did not settle (awaited a promise that never resolves)"' + tail();
      return box.out;
    },
  });
  Object.defineProperty(g, '__rt', { value: rt, writable: false, configurable: false });
})();
"""


def runtime_source(max_buffer_bytes: int) -> str:
    """The sandbox and runtime for one context, with its ArrayBuffer budget."""
    return _RUNTIME.replace("__MAXB__", str(int(max_buffer_bytes)))


_RUNTIME = (
    _RUNTIME_TEMPLATE.replace("__MAXL__", str(MAX_LOG_LINES))
    .replace("__MAXLEN__", str(MAX_ARRAY_LENGTH))
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
