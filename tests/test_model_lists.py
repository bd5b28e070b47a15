"""router/model_lists.py: each backend's models, fetched, filtered, kept when a refresh fails."""

from __future__ import annotations

import httpx
import respx

from router.catalog import BackendEntry, Snapshot
from router.model_lists import ModelDirectory
from router.upstream import HttpxUpstream


def test_model_directory_fetches_filters_and_keeps_last_good_list():
    async def scenario():
        client = HttpxUpstream(1, 1)
        directory = ModelDirectory(client)
        entry = BackendEntry(7, "up", "http://up.test/v1", "k", "chat", None, ("extra",), 1, True)
        directory._snapshot = Snapshot(backends_by_id={7: entry})
        with respx.mock(using="httpx") as mock:
            route = mock.get("http://up.test/v1/models").mock(
                return_value=httpx.Response(200, json={"data": [{"id": "chat-1"}, {"id": "embed-1"}]})
            )
            assert await directory.refresh_backend(entry)
            assert route.calls.last.request.headers["Authorization"] == "Bearer k"
            assert directory.ordered_models_of(7) == ("chat-1", "extra")
            route.mock(return_value=httpx.Response(500))
            assert not await directory.refresh_backend(entry)
            assert directory.models_of(7) == {"chat-1", "extra"}  # last good list kept
            route.mock(side_effect=httpx.ConnectError("down"))
            assert not await directory.refresh_backend(entry)
        await client.aclose()

    import asyncio

    asyncio.run(scenario())
