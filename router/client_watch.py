"""Noticing that a client left, for the /v1 requests that last long enough for it to matter.

Neither server cancels a handler whose client went away; the router asks the server's `receive`
for the `http.disconnect` message and cancels the request's task when it comes (app.V1FastPath).
Asking costs a future per request on granian, a task on uvicorn: ~5 µs, ~3 % of a request's CPU
at full load (benchmarks/README.md), although most requests that a load test makes finish within
milliseconds, before any client could usefully be noticed leaving. So a request's watch starts
once it has run `WATCH_AFTER_S`, from one timer shared by every request in flight: a client that
leaves sooner has its upstream request cancelled at most that much later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import Message, Receive

WATCH_AFTER_S = 0.05

log = logging.getLogger("router")


class ClientWatch:
    """One request's watch on its client: once started, a disconnect cancels `task`."""

    __slots__ = ("_gone", "_receive", "_started", "_stopped", "left", "started_at", "task")

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None, started_at: float) -> None:
        self._receive = receive
        self.task = task
        self.started_at = started_at
        self._gone: asyncio.Future[Message] | None = None
        self._started = self._stopped = False
        self.left = False  # the client went away and the task was cancelled for it

    def start(self) -> None:
        """From now on, the client leaving cancels the task (until `stop`)."""
        if not (self._started or self._stopped):
            self._started = True
            self.disconnected().add_done_callback(self._client_gone)

    def disconnected(self) -> asyncio.Future[Message]:
        """The server's next message (`http.disconnect`, the body being read already)."""
        if self._gone is None:
            # granian's receive gives a future (no task); uvicorn's a coroutine: a task waits on it
            pending = self._receive()
            self._gone = pending if asyncio.isfuture(pending) else asyncio.ensure_future(pending)
        return self._gone

    async def receive_after_body(self) -> Message:
        """The request's `receive` once its body is read: the disconnect, when it comes."""
        # A listener that is cancelled must not cancel the watch's receive.
        disconnect: Message = await asyncio.shield(self.disconnected())
        return disconnect

    def stop(self) -> None:
        """The answer is being finished: leaving no longer cancels anything."""
        self._stopped = True
        if self._started:
            self._started = False
            assert self._gone is not None
            self._gone.remove_done_callback(self._client_gone)

    def close(self) -> None:
        """The request is over: the server's receive is not waited on any longer."""
        self._stopped = True
        if self._gone is not None:  # else it was never asked (most requests): nothing to undo
            self.stop()
            if not self._gone.done():
                self._gone.cancel()

    def _client_gone(self, future: asyncio.Future[Message]) -> None:
        try:
            message = future.result()
        except BaseException:  # cancelled by `close`, or the server failed the receive
            return
        if self.task is not None and message.get("type") == "http.disconnect":
            self.left = True
            self.task.cancel()


class LateWatches:
    """Starts each request's watch once it has run `after_s`, from one timer for all of them.

    Per request this is a dict entry added and removed; the timer fires when the oldest request
    in flight becomes due, so at most once per `after_s` while requests are short.
    """

    def __init__(self, after_s: float = WATCH_AFTER_S) -> None:
        self.after_s = after_s
        self._waiting: dict[ClientWatch, None] = {}  # oldest first: watches are added as they start
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's (an app may outlive a loop)

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, watch: ClientWatch, loop: asyncio.AbstractEventLoop) -> None:
        """Watch `watch` from `watch.started_at + after_s` on (`loop`: the running loop)."""
        if self.after_s <= 0:
            watch.start()
            return
        self._waiting[watch] = None
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_at(watch.started_at + self.after_s, self._start_due)

    def discard(self, watch: ClientWatch) -> None:
        self._waiting.pop(watch, None)

    def end(self, watch: ClientWatch) -> None:
        """`discard` and `watch.stop()` in one call: the answer of `watch`'s request is being finished."""
        self._waiting.pop(watch, None)
        watch._stopped = True
        if watch._started:
            watch.stop()

    def _start_due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a timer of a loop that has since been replaced
            return
        due = loop.time() - self.after_s
        waiting = self._waiting
        while waiting:
            watch = next(iter(waiting))
            if watch.started_at > due:
                self._timer = loop.call_at(watch.started_at + self.after_s, self._start_due)
                return
            del waiting[watch]
            try:
                watch.start()
            except Exception:  # one server's refusal must not leave the others unwatched
                log.exception("watching a client for its leaving failed")
