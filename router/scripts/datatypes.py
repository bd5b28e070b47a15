"""Public data types of the script engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HOOKS: tuple[str, ...] = ("onRequest", "onResponse", "onStreamChunk")


@dataclass(frozen=True)
class ScriptSource:
    """What the engine needs to know of a stored script."""

    id: int
    name: str
    code: str
    version: str  # changes whenever the code changes (e.g. updated_at iso or a hash)


@dataclass
class ScriptSyntaxError:
    """A problem found by :func:`validate`; ``line`` is 1-based in the user's code."""

    message: str
    line: int | None


@dataclass
class HookResult:
    """Outcome of one hook call."""

    ok: bool
    context: dict[str, Any] | None
    logs: list[str] = field(default_factory=list)
    error: str | None = None
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class RawJSON:
    """A JSON value kept as its exact bytes; hooks see it parsed, and when they leave it
    unchanged the same object (and so the same bytes) comes back. Only build it from bytes a
    JSON parser accepted: they are handed to V8 as they are."""

    raw: bytes
