"""router.app: the /v1 fast path's request headers answer as Starlette's do."""

from __future__ import annotations

import random

import pytest
from starlette.datastructures import Headers

from router.app import IndexedHeaders


def test_indexed_headers_answer_as_starlettes() -> None:
    rng = random.Random(19)
    names = ["authorization", "x-api-key", "content-type", "content-length", "x-request-id", "anthropic-version"]
    for _ in range(500):
        raw = [(rng.choice(names).encode(), str(rng.randint(0, 9)).encode()) for _ in range(rng.randint(0, 6))]
        indexed, plain = IndexedHeaders({"headers": list(raw)}), Headers(scope={"headers": list(raw)})
        for name in [*names, "Authorization", "CONTENT-TYPE", "missing"]:
            assert indexed.get(name) == plain.get(name)
            assert indexed.get(name, "d") == plain.get(name, "d")
            assert (name in indexed) == (name in plain)
            assert indexed.getlist(name) == plain.getlist(name)
            if name in plain:
                assert indexed[name] == plain[name]
            else:
                with pytest.raises(KeyError):
                    indexed[name]
        assert indexed.raw == plain.raw and dict(indexed) == dict(plain)
