"""JavaScript hooks (onRequest / onResponse / onStreamChunk) run in isolated V8 contexts."""

from .engine import (
    HOOKS,
    HookResult,
    ScriptEngine,
    ScriptSource,
    ScriptSyntaxError,
    defined_hooks,
    validate,
)

__all__ = [
    "HOOKS",
    "HookResult",
    "ScriptEngine",
    "ScriptSource",
    "ScriptSyntaxError",
    "defined_hooks",
    "validate",
]
