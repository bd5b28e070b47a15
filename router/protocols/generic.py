"""The other model-routed endpoints: a JSON body with a `model`, answered in OpenAI's shape.

Rerank (`/v1/rerank`, and `/rerank`, `/v2/rerank` as vLLM serves them), moderations, image
generation, speech (a binary answer relayed as it comes), and vLLM's `/tokenize` / `/detokenize`.
They are authenticated, permission-checked, routed by model, logged (with usage where the answer
carries it) and traced like chat. Paths outside /v1 are asked at the backend's root (its base URL
without the trailing `/v1`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from router.protocols.base import Adapter, Usage


class ModelRouted(Adapter):
    """One JSON endpoint routed by its `model` field; what differs is only its path."""

    at_root: ClassVar[bool] = False

    def __init__(self, name: str, path: str, at_root: bool = False, counts_usage: bool = True) -> None:
        self.name = name  # type: ignore[misc]  # per instance: one class serves several endpoints
        self.path = path  # type: ignore[misc]
        self.at_root = at_root  # type: ignore[misc]
        self.counts_usage = counts_usage

    def traced_input(self, payload: dict[str, Any]) -> Any:
        for field in ("input", "query", "prompt", "documents", "text"):
            if field in payload:
                return payload[field]
        return None

    def usage_of_body(self, body: Any) -> Usage | None:
        return super().usage_of_body(body) if self.counts_usage else None


def upstream_url(base_url: str, path: str, at_root: bool) -> str:
    """Where an endpoint is asked: under the base URL, or at its root for paths outside /v1."""
    if at_root:
        base_url = base_url.rstrip("/").removesuffix("/v1")
    return base_url + path


GENERIC_ADAPTERS: dict[str, Adapter] = {
    "/v1/rerank": ModelRouted("rerank", "/rerank"),
    "/rerank": ModelRouted("rerank_root", "/rerank", at_root=True),
    "/v2/rerank": ModelRouted("rerank_v2", "/v2/rerank", at_root=True),
    "/v1/moderations": ModelRouted("moderations", "/moderations"),
    "/v1/images/generations": ModelRouted("images", "/images/generations"),
    "/v1/audio/speech": ModelRouted("speech", "/audio/speech"),
    "/tokenize": ModelRouted("tokenize", "/tokenize", at_root=True, counts_usage=False),
    "/detokenize": ModelRouted("detokenize", "/detokenize", at_root=True, counts_usage=False),
}
