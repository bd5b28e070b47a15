"""Model prices and what a request cost: pure functions over an in-memory price table.

A price names a model or a glob (`gpt-4o*`, `*llama*`), optionally on one backend. For a request
served by backend B for model M the price is chosen in this order:

1. prices on B before prices on every backend (a backend-specific price always wins);
2. an exact name before a glob;
3. among globs, the one with the most literal (non-wildcard) characters;
4. then the oldest (lowest id), so the choice never depends on load order.

Token counts follow OpenAI's convention: `prompt_tokens` includes the tokens read from the prompt
cache (`cached_tokens`) and those written to it (`cache_write_tokens`); each part is charged at its
own price, and the rest of the prompt at the input price.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

PER_TOKEN = 1e-6  # prices are USD per million tokens
_MATCH_CACHE_MAX = 4096  # (model, backend) pairs remembered per table
_WILDCARDS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of one kind; None cached/cache-write prices fall back to the input price."""

    id: int
    model: str
    backend_id: int | None
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None


def is_glob(pattern: str) -> bool:
    return any(ch in _WILDCARDS for ch in pattern)


def literal_length(pattern: str) -> int:
    """Characters of a pattern that must match themselves (how specific a glob is)."""
    return sum(1 for ch in pattern if ch not in _WILDCARDS)


def _rank(price: Price) -> tuple[int, int, int, int]:
    """Sort key: lower is preferred (see the module docstring)."""
    glob = is_glob(price.model)
    return (0 if price.backend_id is not None else 1, 1 if glob else 0, -literal_length(price.model), price.id)


def model_matches(pattern: str, model: str) -> bool:
    """Exact (case-sensitive) name, or a shell-style glob over the whole name."""
    if not is_glob(pattern):
        return pattern == model
    return fnmatch.fnmatchcase(model, pattern)


def cost_usd(
    price: Price,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float:
    """What the usage costs at `price`; cached and cache-write prompt tokens at their own prices."""
    cached = max(cached_tokens, 0)
    written = max(cache_write_tokens, 0)
    plain_input = max(prompt_tokens - cached - written, 0)
    cached_price = price.input_per_mtok if price.cached_input_per_mtok is None else price.cached_input_per_mtok
    write_price = price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
    total = (
        plain_input * price.input_per_mtok
        + cached * cached_price
        + written * write_price
        + max(completion_tokens, 0) * price.output_per_mtok
    )
    return total * PER_TOKEN


class PriceTable:
    """The prices of one catalog snapshot, with the choice per (model, backend) memoised."""

    __slots__ = ("_cache", "prices")

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        self.prices: tuple[Price, ...] = tuple(sorted(prices, key=_rank))
        self._cache: dict[tuple[str, int | None], Price | None] = {}

    def __bool__(self) -> bool:
        return bool(self.prices)

    def match(self, model: str | None, backend_id: int | None) -> Price | None:
        """The price that applies to `model` served by `backend_id` (None: no price matches)."""
        if not model or not self.prices:
            return None
        key = (model, backend_id)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = next(
            (
                p
                for p in self.prices
                if (p.backend_id is None or p.backend_id == backend_id) and model_matches(p.model, model)
            ),
            None,
        )
        if len(self._cache) >= _MATCH_CACHE_MAX:
            self._cache.clear()
        self._cache[key] = found
        return found

    def cost(
        self,
        model: str | None,
        backend_id: int | None,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float | None:
        """The request's cost in USD, or None when no price matches its model."""
        price = self.match(model, backend_id)
        if price is None:
            return None
        return cost_usd(price, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens)
