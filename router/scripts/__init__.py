"""JavaScript hooks (onRequest / onResponse / onStreamChunk) run in isolated V8 contexts."""

from .datatypes import HOOKS, HookResult, RawJSON, ScriptSource, ScriptSyntaxError
from .engine import ScriptEngine
from .host import IsolatedScriptEngine
from .validate import defined_hooks, validate


def script_engine(isolation: str, timeout_ms: float, max_memory_mb: int) -> ScriptEngine:
    """The engine SCRIPT_ISOLATION asks for: V8 on threads of this process, or in a child process."""
    if isolation == "process":
        return IsolatedScriptEngine(timeout_ms, max_memory_mb)
    return ScriptEngine(timeout_ms, max_memory_mb)


__all__ = [
    "HOOKS",
    "HookResult",
    "IsolatedScriptEngine",
    "RawJSON",
    "ScriptEngine",
    "ScriptSource",
    "ScriptSyntaxError",
    "defined_hooks",
    "script_engine",
    "validate",
]
