"""JavaScript hooks (onRequest / onResponse / onStreamChunk) run in isolated V8 contexts."""

from .datatypes import HOOKS, HookResult, RawJSON, ScriptSource, ScriptSyntaxError
from .engine import ScriptEngine
from .validate import defined_hooks, validate

__all__ = [
    "HOOKS",
    "HookResult",
    "RawJSON",
    "ScriptEngine",
    "ScriptSource",
    "ScriptSyntaxError",
    "defined_hooks",
    "validate",
]
