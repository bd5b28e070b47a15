"""Fuzzing /graphql in-process (hypothesis-graphql and raw bytes), a few seconds per strategy
(FUZZ_EXAMPLES examples each, default 40).

Every answer must be a well-formed GraphQL answer (`data` and/or `errors`, each error with an
`extensions.code`), never a 500 or a masked internal error, and the app must keep answering.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import graphql
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries

from graphql_schema import build_schema
from tests.conftest import ADMIN_PASSWORD
from tests.inprocess import InProcessRouter, in_process

PASSWORD = ADMIN_PASSWORD
CODES = {
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "BAD_USER_INPUT",
    "CONFLICT",
    "GRAPHQL_PARSE_FAILED",
    "GRAPHQL_VALIDATION_FAILED",
    "BAD_REQUEST",
    "PAYLOAD_TOO_LARGE",
}
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),  # each example is a round trip (and DB work)
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SCALARS = {
    "DateTime": st.sampled_from(["2026-01-01T00:00:00Z", "not a date", ""]).map(
        lambda v: graphql.StringValueNode(value=v)
    ),
    "JSON": st.sampled_from(
        [graphql.ObjectValueNode(fields=()), graphql.IntValueNode(value="1"), graphql.StringValueNode(value="x")]
    ),
}
SCHEMA = build_schema()._schema


class App:
    """The router app in this process (tests/inprocess.py), on its own event loop: hypothesis tests
    are synchronous, and the app's lifespan must stay open in one task between examples."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        ready: asyncio.Future[InProcessRouter] = self.loop.create_future()
        self.stop = asyncio.Event()

        async def hold() -> None:
            async with in_process(data_dir, env={"LOG_LEVEL": "ERROR"}) as router:
                ready.set_result(router)
                await self.stop.wait()

        self.task = self.loop.create_task(hold())
        # hold() may end before the router is ready (in_process skips in the TEST_DB=postgres run,
        # or start-up fails): its outcome is raised here instead of waiting for `ready` forever.
        self.loop.run_until_complete(asyncio.wait([ready, self.task], return_when=asyncio.FIRST_COMPLETED))
        if not ready.done():
            try:
                self.loop.run_until_complete(self.task)  # raises what ended it
            finally:
                self.loop.close()
            raise RuntimeError("the in-process router ended before it was ready")
        self.router = ready.result()

    def post(self, body: bytes, token: str | bytes | None = PASSWORD) -> httpx.Response:
        headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = b"Bearer " + (token if isinstance(token, bytes) else token.encode())
        return self.loop.run_until_complete(self.router.client.post("/graphql", content=body, headers=headers))

    def close(self) -> None:
        self.stop.set()
        self.loop.run_until_complete(self.task)
        self.loop.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[App]:
    instance = App(tmp_path_factory.mktemp("fuzz"))
    yield instance
    instance.close()


def well_formed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 400, 413), (response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body, dict) and ("data" in body or "errors" in body), body
    for error in body.get("errors") or []:
        assert isinstance(error["message"], str) and error["message"]
        assert error["extensions"]["code"] in CODES, error  # never INTERNAL_SERVER_ERROR
    return body


def request(query: str, variables: Any = None) -> bytes:
    import orjson

    return orjson.dumps({"query": query, "variables": variables})


@FUZZ
@given(query=queries(SCHEMA, custom_scalars=SCALARS))
def test_valid_queries(app, query):
    body = well_formed(app.post(request(query)))
    assert body.get("errors") or body["data"] is not None


@FUZZ
@given(query=queries(SCHEMA, custom_scalars=SCALARS, mode=Mode.NEGATIVE))
def test_invalid_queries(app, query):
    well_formed(app.post(request(query)))


@FUZZ
@given(query=mutations(SCHEMA, custom_scalars=SCALARS, mode=Mode.NEGATIVE))
def test_invalid_mutations(app, query):
    well_formed(app.post(request(query)))


@FUZZ
@given(query=mutations(SCHEMA, custom_scalars=SCALARS))
def test_valid_mutations(app, query):
    well_formed(app.post(request(query)))


@FUZZ
@given(query=queries(SCHEMA, custom_scalars=SCALARS), token=st.sampled_from([None, b"wrong", b"1.\xe9.x"]))
def test_queries_without_a_valid_token(app, query, token):
    body = well_formed(app.post(request(query), token=token))
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(lambda q: request(q)),
        st.recursive(st.none() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=3)).map(
            lambda v: request("query($v: JSON) { __typename }", {"v": v})
        ),
    )
)
def test_arbitrary_bodies(app, body):
    well_formed(app.post(body))


def test_the_app_is_still_up(app):
    assert well_formed(app.post(request("{ __typename }")))["data"] == {"__typename": "Query"}
