"""Limits on /v1/messages seen through the official anthropic SDK (the app in-process, its limiter's clock
injected so a minute's window ends in a second): RateLimitError with Anthropic's error shape,
`anthropic-ratelimit-*` and Retry-After headers, the SDK's own retry waiting what Retry-After says,
and a budget refusal that tells the SDK not to retry."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anthropic
import httpx2
import pytest

from tests.inprocess import InProcessRouter, in_process

MODEL = "claude-test"
ASK = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def router(tmp_path, upstream_factory) -> AsyncIterator[InProcessRouter]:
    upstream = upstream_factory(name="claude", models=[MODEL])
    async with in_process(tmp_path, {"claude": {"url": upstream.base_url}}) as router:
        yield router


class Seen:
    """What the SDK sent and got back: (monotonic time, status, headers) per attempt."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, int, httpx2.Headers]] = []

    async def __call__(self, response: httpx2.Response) -> None:
        self.answers.append((time.monotonic(), response.status_code, response.headers))


def sdk(router: InProcessRouter, seen: Seen, retries: int) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=router.app), event_hooks={"response": [seen]}, timeout=30
    )
    return anthropic.AsyncAnthropic(
        base_url="http://router.test", api_key=router.api_key, http_client=http, max_retries=retries
    )


async def set_limits(router: InProcessRouter, limits: dict) -> None:
    users = (await router.gql("{ users { id name } }"))["data"]["users"]
    uid = next(u["id"] for u in users if u["name"] == "alice")
    answer = await router.gql(
        "mutation($id: ID!, $l: LimitsInput!) { setUserLimits(userId: $id, limits: $l) { id } }",
        {"id": uid, "l": limits},
    )
    assert not answer.get("errors"), answer


async def test_rpm_refusal_in_anthropics_shape_and_the_sdk_retries_after_retry_after(router) -> None:
    limiter = router.runtime.limiter
    offset = 0.0
    limiter.clock = lambda: time.time() + offset
    await set_limits(router, {"rpm": 1})
    seen = Seen()
    once = sdk(router, seen, retries=0)

    first = await once.messages.with_raw_response.create(model=MODEL, max_tokens=20, messages=ASK)
    assert first.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert first.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "x-ratelimit-limit-requests" not in first.headers  # OpenAI's trio is for OpenAI's APIs
    counted_at = int(limiter.clock())

    with pytest.raises(anthropic.RateLimitError) as refused:
        await once.messages.create(model=MODEL, max_tokens=20, messages=ASK)
    error = refused.value
    assert error.status_code == 429
    assert error.body["type"] == "error" and error.body["error"]["type"] == "rate_limit_error"
    assert "1 requests per minute" in error.body["error"]["message"]
    headers = error.response.headers
    assert 55 <= int(headers["retry-after"]) <= 60
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-limit"] == "1"
    assert "x-should-retry" not in headers

    # 1.5 s before the counted request leaves the window: the SDK is told so and waits that long.
    offset = counted_at + 60 - 1.5 - time.time()
    seen.answers.clear()
    retrying = sdk(router, seen, retries=2)
    message = await retrying.messages.create(model=MODEL, max_tokens=20, messages=ASK)
    assert message.content[0].text
    (refused_at, status, refusal), (answered_at, ok, _) = seen.answers
    assert (status, ok) == (429, 200)
    wait_s = int(refusal["retry-after-ms"]) / 1000
    assert 1.0 <= wait_s <= 1.5 and refusal["retry-after"] == "2"
    # The SDK's own backoff would be under 1 s: it waited what Retry-After said.
    assert answered_at - refused_at >= wait_s - 0.05


async def test_budget_refusal_on_messages_tells_the_sdk_not_to_retry(router) -> None:
    created = await router.gql(
        'mutation { createModelPrice(input: {model: "claude-test", inputPerMTok: 100000, outputPerMTok: 100000}) '
        "{ id } }"
    )
    assert not created.get("errors"), created
    await set_limits(router, {"budgetUsd": 0.5, "budgetPeriod": "DAY"})
    seen = Seen()
    client = sdk(router, seen, retries=2)
    await client.messages.create(model=MODEL, max_tokens=20, messages=ASK)  # costs ~ $1: over budget after it
    with pytest.raises(anthropic.RateLimitError) as refused:
        await client.messages.create(model=MODEL, max_tokens=20, messages=ASK)
    error = refused.value
    assert error.body["type"] == "error" and error.body["error"]["type"] == "rate_limit_error"
    assert "budget of $0.5" in error.body["error"]["message"]
    assert error.response.headers["x-should-retry"] == "false"
    assert int(error.response.headers["retry-after"]) >= 1  # when the day ends
    assert [status for _, status, _ in seen.answers] == [200, 429]  # no retry of a refusal that lasts a day
