"""router.app: the /v1 fast path's request is what Starlette's would be."""

from __future__ import annotations

import random

import pytest
from starlette.datastructures import Headers
from starlette.requests import Request

from router.app import IndexedHeaders, V1Request


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


async def _receive() -> dict:
    return {"type": "http.disconnect"}


async def _send(message: dict) -> None:
    pass


def test_v1_request_is_set_up_as_starlettes() -> None:
    """`V1Request` sets what `Request.__init__` sets (a Starlette upgrade that adds an attribute fails
    here), plus the body read ahead and the indexed headers."""
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", b"application/json")]}
    plain = Request(scope, _receive, _send)
    fast = V1Request(scope, _receive, _send, {"type": "http.request", "body": b"{}"})
    assert vars(plain).keys() <= vars(fast).keys()
    assert all(getattr(fast, name) == value for name, value in vars(plain).items())
    assert fast._body == b"{}" and fast.headers.get("content-type") == "application/json"
