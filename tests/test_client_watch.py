"""router.client_watch: a request's client is watched once it has lasted; leaving then cancels it."""

from __future__ import annotations

import asyncio
from typing import Any

from router.client_watch import ClientWatch, LateWatches


class FakeServer:
    """A server's `receive` after the body: each call gives a future that the client's leaving completes."""

    def __init__(self) -> None:
        self.calls = 0
        self.futures: list[asyncio.Future[dict[str, Any]]] = []

    def receive(self) -> asyncio.Future[dict[str, Any]]:
        self.calls += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def client_leaves(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result({"type": "http.disconnect"})


async def _until(condition: Any) -> None:
    """Wait for `condition()` (the shared timer runs on the loop), failing after 2 s."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the watch did not start")


async def _watched(watches: LateWatches, server: FakeServer, work: asyncio.Event) -> ClientWatch:
    task = asyncio.current_task()
    watch = ClientWatch(server.receive, task, asyncio.get_running_loop().time())  # type: ignore[arg-type]
    watches.add(watch, asyncio.get_running_loop())
    try:
        await work.wait()
    finally:
        watches.discard(watch)
        watch.close()
    return watch


async def test_a_short_request_never_asks_the_server() -> None:
    watches, server, done = LateWatches(after_s=0.05), FakeServer(), asyncio.Event()
    task = asyncio.create_task(_watched(watches, server, done))
    await asyncio.sleep(0)
    done.set()
    await task
    assert server.calls == 0 and len(watches) == 0
    await asyncio.sleep(0.08)  # the timer armed for it finds nothing due
    assert server.calls == 0


async def test_a_lasting_request_is_watched_and_cancelled_when_its_client_leaves() -> None:
    watches, server, never = LateWatches(after_s=0.02), FakeServer(), asyncio.Event()
    task = asyncio.create_task(_watched(watches, server, never))
    await _until(lambda: server.calls > 0)  # started by the shared timer, not by the request
    assert len(watches) == 0
    server.client_leaves()
    await asyncio.wait([task])
    assert task.cancelled()


async def test_watches_start_each_when_due_and_a_discarded_one_never() -> None:
    watches, server = LateWatches(after_s=0.03), FakeServer()
    now = asyncio.get_running_loop().time()
    overdue, ended, later = (ClientWatch(server.receive, None, t) for t in (now - 1, now, now))  # type: ignore[arg-type]
    for watch in (overdue, ended, later):
        watches.add(watch, asyncio.get_running_loop())
    watches.discard(ended)  # its request ended before it was due
    await _until(lambda: server.calls >= 2)
    assert asyncio.get_running_loop().time() >= now + 0.03  # the second waited until it was due
    assert len(watches) == 0 and not ended._started and overdue._started and later._started
    for watch in (overdue, later):
        watch.close()
    assert all(f.cancelled() for f in server.futures)  # the server's receive is not left waiting


async def test_leaving_after_stop_cancels_nothing_and_an_early_receive_is_the_same_future() -> None:
    server = FakeServer()
    watch = ClientWatch(server.receive, asyncio.current_task(), 0.0)  # type: ignore[arg-type]
    early = watch.disconnected()  # something read the server's next message before the watch began
    watch.start()
    assert watch.disconnected() is early and server.calls == 1
    watch.stop()
    server.client_leaves()
    await asyncio.sleep(0)
    assert not watch.left  # the answer was being finished: nothing to cancel


async def test_after_zero_watches_at_once() -> None:
    watches, server = LateWatches(after_s=0), FakeServer()
    watch = ClientWatch(server.receive, asyncio.current_task(), 0.0)  # type: ignore[arg-type]
    watches.add(watch, asyncio.get_running_loop())
    assert server.calls == 1 and len(watches) == 0
    watch.close()


async def test_a_receive_that_raises_leaves_the_other_watches_started(caplog) -> None:
    watches, server = LateWatches(after_s=0.01), FakeServer()

    def refusing() -> asyncio.Future[dict[str, Any]]:
        raise RuntimeError("ASGI flow error")

    now = asyncio.get_running_loop().time()
    broken = ClientWatch(refusing, None, now - 1)  # type: ignore[arg-type]
    fine = ClientWatch(server.receive, None, now - 1)  # type: ignore[arg-type]
    watches.add(broken, asyncio.get_running_loop())
    watches.add(fine, asyncio.get_running_loop())
    await _until(lambda: server.calls >= 1)
    assert len(watches) == 0 and "watching a client for its leaving failed" in caplog.text
    fine.close()


def test_watches_still_start_on_a_new_loop_after_the_old_one_closed_with_its_timer_armed() -> None:
    """An app can outlive an event loop (tests run one app's lifespan per loop): the timer armed on
    a closed loop never fires, so the next loop arms its own."""
    watches = LateWatches(after_s=0.01)

    async def armed_then_abandoned() -> None:
        server = FakeServer()
        watches.add(ClientWatch(server.receive, None, asyncio.get_running_loop().time()), asyncio.get_running_loop())  # type: ignore[arg-type]

    async def on_the_next_loop() -> int:
        server = FakeServer()
        watch = ClientWatch(server.receive, None, asyncio.get_running_loop().time() - 1)  # type: ignore[arg-type]
        watches.add(watch, asyncio.get_running_loop())
        await _until(lambda: server.calls >= 1)
        watch.close()
        return server.calls

    asyncio.run(armed_then_abandoned())
    assert asyncio.run(on_the_next_loop()) == 1


async def test_end_discards_a_waiting_watch_and_stops_a_started_one() -> None:
    watches, server = LateWatches(after_s=0.01), FakeServer()
    now = asyncio.get_running_loop().time()
    waiting = ClientWatch(server.receive, asyncio.current_task(), now + 10)  # type: ignore[arg-type]
    started = ClientWatch(server.receive, asyncio.current_task(), now - 1)  # type: ignore[arg-type]
    watches.add(started, asyncio.get_running_loop())
    await _until(lambda: server.calls >= 1)
    watches.add(waiting, asyncio.get_running_loop())
    watches.end(waiting)
    watches.end(started)
    assert len(watches) == 0 and not waiting._started and not started._started
    server.client_leaves()
    await asyncio.sleep(0)
    assert not started.left and server.calls == 1  # leaving after the end cancels nothing
    started.close()
