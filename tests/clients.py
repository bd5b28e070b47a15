"""SDK clients for a test router, closed at the end of the test that made them.

An OpenAI or Anthropic SDK client sits in a reference cycle, so one left open keeps its keep-alive
socket until some later cyclic collection frees it, in whatever test runs one (an in-process
router's start-up does): that test then fails on the socket's ResourceWarning. The autouse
`_close_sdk_clients` fixture of conftest.py closes every client made here when its test ends.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai

_open: list[openai.OpenAI | anthropic.Anthropic] = []


def openai_client(router: Any, key: str | None = None, **options: Any) -> openai.OpenAI:
    """An OpenAI SDK client on the router's /v1 with `key` (the router's `api_key` by default),
    without retries unless `options` say."""
    client = openai.OpenAI(base_url=router.v1, api_key=key or router.api_key, **{"max_retries": 0, **options})
    _open.append(client)
    return client


def anthropic_client(router: Any, **options: Any) -> anthropic.Anthropic:
    """An Anthropic SDK client on the router (the SDK adds /v1) authenticated as `options` say
    (`api_key=` sends x-api-key, `auth_token=` a bearer token), without retries unless they say."""
    client = anthropic.Anthropic(base_url=router.url, **{"max_retries": 0, **options})
    _open.append(client)
    return client


def close_all() -> None:
    while _open:
        _open.pop().close()
