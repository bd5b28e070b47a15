"""router.app: the /v1 fast path's request and answers are what Starlette's would be."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from router import proxy
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


def test_answers_carry_the_headers_starlette_would_give_them() -> None:
    """`PlainResponse` and `RelayResponse` are built without Starlette's header pass: same raw headers,
    content-length added as Starlette adds it (not when given, not for 1xx/204/304)."""
    rng = random.Random(19)
    names = ["Content-Type", "content-length", "Content-Length", "x-request-id", "Retry-After", "x-ratelimit-limit"]
    for _ in range(300):
        headers = {rng.choice(names): str(rng.randint(0, 99)) for _ in range(rng.randint(0, 5))}
        status = rng.choice([100, 200, 201, 204, 304, 400, 429, 500])
        body = b"x" * rng.randint(0, 20)
        lean, starlettes = proxy.PlainResponse(body, status, headers), Response(body, status, headers)
        assert (lean.raw_headers, lean.body, lean.status_code) == (starlettes.raw_headers, body, status)
        assert dict(lean.headers) == dict(starlettes.headers) and lean.background is None

        relay = SimpleNamespace(events=lambda: iter(()))
        streamed, streamings = proxy.RelayResponse(relay, status, headers), StreamingResponse([], status, headers)
        assert (streamed.raw_headers, streamed.status_code) == (streamings.raw_headers, status)
