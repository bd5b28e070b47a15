"""Static checks of script code: syntax and which hooks it declares.

Nothing here runs user code in a context anything else uses: every check gets a throw-away V8
context (created and closed off the event loop), and the code is wrapped in a function that
returns before the user's first statement (declarations are still hoisted). If a crafted script
escapes the wrapper, it runs only in that throw-away context, under a time and memory limit, and
can at worst make its own check pass or fail.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

from py_mini_racer import JSEvalException, JSParseException

from .datatypes import HOOKS, ScriptSyntaxError
from .engine import _open_context
from .js import parse_error_location, probe_source

_PROBE_TIMEOUT_S = 2.0
_VALIDATOR_MEMORY = 64 << 20
_VAR_RE = {h: re.compile(rf"\bvar\s+{h}\b") for h in HOOKS}


async def _probe(code: str) -> list[str]:
    loop = asyncio.get_running_loop()
    opened = await asyncio.to_thread(_open_context, loop, _VALIDATOR_MEMORY)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            result = json.loads(str(await opened.racer.eval_cancelable(probe_source(code))))
    finally:
        # closing waits for the isolate to stop: never on the loop
        threading.Thread(target=opened.close, daemon=True).start()
    if not isinstance(result, list) or len(result) != len(HOOKS):
        raise ValueError("unexpected probe result")
    return [str(k) for k in result]


def _hooks_from_probe(code: str, kinds: list[str]) -> frozenset[str]:
    found = {h for h, k in zip(HOOKS, kinds, strict=True) if k in ("function", "tdz")}
    # `var onRequest = ...` is hoisted as undefined; recognise it textually.
    found |= {h for h in HOOKS if _VAR_RE[h].search(code)}
    return frozenset(found)


async def defined_hooks(code: str) -> frozenset[str]:
    """Hooks the code declares (function declarations exactly; let/const/var/class bindings
    with a hook name are counted without checking they hold a function). Empty on syntax error."""
    try:
        kinds = await _probe(code)
    except Exception:
        return frozenset()
    return _hooks_from_probe(code, kinds)


async def validate(code: str) -> ScriptSyntaxError | None:
    """Syntax check plus 'defines at least one hook' check; None when the code is fine."""
    try:
        kinds = await _probe(code)
    except (JSParseException, JSEvalException) as e:
        message, line = parse_error_location(str(e))
        return ScriptSyntaxError(message, line)
    except Exception as e:  # timeout / OOM while parsing a pathological input
        return ScriptSyntaxError(f"could not check script: {type(e).__name__}: {e}", None)
    if not _hooks_from_probe(code, kinds):
        return ScriptSyntaxError(f"script defines none of {', '.join(HOOKS)}", None)
    return None
