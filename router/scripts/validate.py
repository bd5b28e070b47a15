"""Static checks of script code: syntax and which hooks it declares.

Nothing here runs user code: the code is wrapped in a function that returns before the
user's first statement (declarations are still hoisted), so a spinning or hostile top
level cannot hurt. The checks use one shared V8 context owned by its own event-loop
thread, so they work from any thread, including a running event loop (they block the
caller only for the parse, typically well under a few ms).
"""

from __future__ import annotations

import json
import re
import threading

from py_mini_racer import JSEvalException, JSParseException, MiniRacer, init_mini_racer

from .datatypes import HOOKS, ScriptSyntaxError
from .js import parse_error_location, probe_source

_PROBE_TIMEOUT_S = 2.0
_VALIDATOR_MEMORY = 64 << 20
_VAR_RE = {h: re.compile(rf"\bvar\s+{h}\b") for h in HOOKS}

# V8 must be initialised on the main thread: measured with mini-racer 0.14.1, initialising it
# from another thread and then creating contexts on several threads segfaults the process.
# Importing this package (normally done on the main thread) does it early.
init_mini_racer(ignore_duplicate_init=True)

_lock = threading.Lock()
_racer: MiniRacer | None = None


def _get_racer() -> MiniRacer:
    """Create the shared probe context on a thread without a running loop (it gets its own)."""
    global _racer
    if _racer is None:
        box: list[MiniRacer] = []
        t = threading.Thread(target=lambda: box.append(MiniRacer()), name="script-validator-init")
        t.start()
        t.join()
        box[0].set_hard_memory_limit(_VALIDATOR_MEMORY)
        _racer = box[0]
    return _racer


def _probe(code: str) -> list[str]:
    global _racer
    with _lock:
        racer = _get_racer()
        try:
            return json.loads(racer.eval(probe_source(code), timeout_sec=_PROBE_TIMEOUT_S))
        except (JSParseException, JSEvalException):
            raise
        except Exception:
            racer.close()  # timeout/OOM/internal: start afresh next time
            _racer = None
            raise


def _hooks_from_probe(code: str, kinds: list[str]) -> frozenset[str]:
    found = {h for h, k in zip(HOOKS, kinds, strict=True) if k in ("function", "tdz")}
    # `var onRequest = ...` is hoisted as undefined; recognise it textually.
    found |= {h for h in HOOKS if _VAR_RE[h].search(code)}
    return frozenset(found)


def validate(code: str) -> ScriptSyntaxError | None:
    """Syntax check plus 'defines at least one hook' check; None when the code is fine."""
    try:
        kinds = _probe(code)
    except JSParseException as e:
        message, line = parse_error_location(str(e))
        return ScriptSyntaxError(message, line)
    except JSEvalException as e:
        message, line = parse_error_location(str(e))
        return ScriptSyntaxError(message, line)
    except Exception as e:  # timeout / OOM while parsing a pathological input
        return ScriptSyntaxError(f"could not check script: {type(e).__name__}: {e}", None)
    if not _hooks_from_probe(code, kinds):
        return ScriptSyntaxError(f"script defines none of {', '.join(HOOKS)}", None)
    return None


def defined_hooks(code: str) -> frozenset[str]:
    """Hooks the code declares (function declarations exactly; let/const/var/class bindings
    with a hook name are counted without checking they hold a function). Empty on syntax error."""
    try:
        kinds = _probe(code)
    except Exception:
        return frozenset()
    return _hooks_from_probe(code, kinds)
