"""Live state shared by every router process through Redis (only when `REDIS_URL` is set).

What goes through Redis, all under `REDIS_PREFIX` (one prefix per router cluster):

- `<prefix>:catalog` (pub/sub): "the core data changed, revision N". Sent after an admin change
  made through this process (`Catalog.changed`); every other process reloads its snapshot at
  once. The `catalog_revision` poll (`CATALOG_POLL_INTERVAL_S`) stays as the safety net for a
  missed message, and a (re)connected listener checks the revision straight away.
- `<prefix>:requests` (pub/sub): the request-log rows this process has just written, as compact
  JSON. A process hands its own rows to its local event bus directly and the rows of the others
  as they arrive here (its own are skipped), so a `requestLogged` subscriber on any process sees
  every request of every process exactly once.
- `<prefix>:health` (pub/sub): "backend B is down until T, since S, because R" / "backend B is up
  again"; the others apply it with `HealthTracker.mark_down` / `mark_up`. Also the results of each
  active health-check round, from the one process that made it (`HealthTracker.note_check`).
- `<prefix>:health-check` (key with an expiry): the lock of the current health-check round, so
  one process checks the backends per round, not every process (`lead_health_round`).
- `<prefix>:quota-events` (pub/sub): a user or backend reaching a limit (router.quota_events),
  already throttled by the sending process; the others hand it to their `quotaEvents` subscribers.
- `<prefix>:inflight` (hash, field per process): this process's in-flight counts per backend,
  written about once a second; the sum of the others' fresh entries becomes `InFlight.remote`,
  which least-busy routing adds to the live local count. No Redis call per request.

Nothing on the request path waits for Redis or can fail because of it: messages go into a bounded
outbox that a background task publishes. When Redis goes away, a warning is logged once, each
process carries on with its local state (and the revision poll), and the loops reconnect with
backoff; "Redis is back" is logged when they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import orjson

from router.catalog import Catalog
from router.config import Settings
from router.routing import CheckResult, HealthTracker, InFlight
from router.signals import Signal
from router.usage import WIRE_FIELDS, EventBus, RequestRecord

log = logging.getLogger("router.shared")

OUTBOX_MAX = 1000  # messages (a request-log message carries a whole written batch)
IN_FLIGHT_SYNC_S = 1.0
IN_FLIGHT_FRESH_S = 5.0  # a process that has not written its counts for this long is ignored...
IN_FLIGHT_FORGET_S = 60.0  # ...and removed from the hash after this long
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
SUBSCRIBE_WAIT_S = 2.0  # at start-up, wait this long for the first subscription, then serve anyway


def record_to_wire(record: RequestRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in WIRE_FIELDS}


def record_from_wire(row: dict[str, Any]) -> RequestRecord:
    values = {k: v for k, v in row.items() if k in WIRE_FIELDS}
    created = values.get("created_at")
    if isinstance(created, str):
        values["created_at"] = datetime.fromisoformat(created)
    record = RequestRecord(**values)
    if record.created_at is not None:
        record.started_at = record.created_at.timestamp()
    return record


class SharedState:
    """One per process: publishes this process's changes and applies the others'."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        health: HealthTracker,
        in_flight: InFlight,
        bus: EventBus,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        assert settings.redis_url
        self.settings = settings
        self.catalog = catalog
        self.health = health
        self.in_flight = in_flight
        self.bus = bus
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._node = self.node_id.encode()
        prefix = settings.redis_prefix
        self.catalog_channel = f"{prefix}:catalog"
        self.requests_channel = f"{prefix}:requests"
        self.health_channel = f"{prefix}:health"
        self.quota_channel = f"{prefix}:quota-events"
        self.in_flight_key = f"{prefix}:inflight"
        self.health_lock_key = f"{prefix}:health-check"
        self.share_in_flight = settings.routing_strategy == "least_busy"
        # Fail fast (one immediate retry for a connection that died with the server), back off in the loops.
        self._redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=15,
            retry=Retry(NoBackoff(), 1),
        )
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(OUTBOX_MAX)
        self._reload_wanted = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.degraded = False
        self.dropped = 0  # outbox overflows
        self.received = 0  # messages from other processes applied
        self.on_quota_event: Signal[[dict[str, Any]]] = Signal()  # another process's quotaEvents event

    @property
    def redis(self) -> Any:
        """The shared client (router.live sums usage ticks with it)."""
        return self._redis

    # --- response bindings (router.affinity) ---

    async def get_binding(self, key: str) -> bytes | None:
        value = await self._redis.get(key)
        return value.encode() if isinstance(value, str) else value

    async def set_binding(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._redis.set(key, value, px=max(1, int(ttl_s * 1000)))

    # --- lifecycle ---

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen_forever(), name="redis-listener"),
            loop.create_task(self._publish_forever(), name="redis-publisher"),
            loop.create_task(self._reload_forever(), name="catalog-reloader"),
        ]
        if self.share_in_flight:
            self._tasks.append(loop.create_task(self._sync_in_flight_forever(), name="redis-in-flight"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_WAIT_S)
        if self._subscribed.is_set():
            log.info("sharing live state through Redis (prefix %r) as %s", self.settings.redis_prefix, self.node_id)

    async def stop(self) -> None:
        """Publish what is still queued (for up to 2 s), then disconnect. Call after the writer closed."""
        if not self.degraded:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.share_in_flight and not self.degraded:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.hdel(self.in_flight_key, self._node), 1.0)
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # --- outgoing (called from the request path and the log writer: never wait, never raise) ---

    def _send(self, channel: str, message: dict[str, Any]) -> None:
        try:
            payload = orjson.dumps({"o": self.node_id, **message})
        except TypeError:
            log.exception("cannot encode a %s message", channel)
            return
        if self._outbox.full():
            self._outbox.get_nowait()
            self._outbox.task_done()
            self.dropped += 1
        self._outbox.put_nowait((channel, payload))

    def catalog_changed(self, revision: int) -> None:
        """This process changed the core data (Catalog.on_change): the others reload."""
        self._send(self.catalog_channel, {"rev": revision})

    def health_changed(self, backend_id: int, cooldown_s: float) -> None:
        """This process marked a backend down or up (HealthTracker.on_change): the others follow."""
        until = time.time() + cooldown_s if cooldown_s > 0 else 0.0
        message: dict[str, Any] = {"b": backend_id, "until": until}
        if until:
            message["why"], message["since"], message["chk"] = self.health.down_details(backend_id)
        self._send(self.health_channel, message)

    def quota_event(self, message: dict[str, Any]) -> None:

        if not self.degraded:
            self._send(self.quota_channel, message)

    def share_checks(self, results: dict[int, CheckResult]) -> None:
        """The results of a health-check round this process made, for the others' admin API."""
        checks = {str(b): [r.at, r.ok, r.latency_ms, r.error] for b, r in results.items()}
        self._send(self.health_channel, {"checks": checks})

    async def lead_health_round(self) -> bool:
        """Whether this process does this health-check round: the first to take the round's lock.

        The lock expires before the next round, so a process that stops is replaced at once.
        Without Redis every process checks for itself.
        """
        ttl_ms = max(100, int(self.settings.health_check_interval_s * 900))
        try:
            taken = await self._redis.set(self.health_lock_key, self._node, nx=True, px=ttl_ms)
        except Exception as exc:
            self._down(exc)
            return True
        self._up()
        return bool(taken)

    def records_written(self, batch: list[RequestRecord]) -> None:
        """Rows this process stored (LogWriter.on_written; its own subscribers got them from the writer)."""
        if not self.degraded:  # while Redis is away, rows are not queued up (memory; they would arrive late)
            self._send(self.requests_channel, {"r": [record_to_wire(r) for r in batch]})

    # --- incoming ---

    def _handle(self, channel: bytes, data: bytes) -> None:
        message = orjson.loads(data)
        if message.get("o") == self.node_id:
            return
        self.received += 1
        name = channel.decode()
        if name == self.requests_channel:
            self.bus.publish([record_from_wire(row) for row in message["r"]])
        elif name == self.catalog_channel:
            if message.get("rev") != self.catalog.snapshot.revision:
                self._reload_wanted.set()
        elif name == self.quota_channel:
            self.on_quota_event.emit(message)
        elif name == self.health_channel:
            if "checks" in message:
                for backend_id, (at, ok, latency_ms, error) in message["checks"].items():
                    self.health.note_check(int(backend_id), CheckResult(float(at), bool(ok), float(latency_ms), error))
                return
            backend_id, until = int(message["b"]), float(message["until"])
            if until <= 0:
                self.health.mark_up(backend_id)
            elif (remaining := until - time.time()) > 0:
                since = message.get("since")
                self.health.mark_down(
                    backend_id,
                    time.monotonic() + remaining,
                    message.get("why"),
                    float(since) if since else None,
                    bool(message.get("chk")),
                )

    # --- background loops ---

    async def _listen_forever(self) -> None:
        backoff = BACKOFF_MIN_S
        channels = (self.catalog_channel, self.requests_channel, self.health_channel, self.quota_channel)
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*channels)
                backoff = BACKOFF_MIN_S
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        # (Re)subscribed, also after redis-py reconnected by itself: whatever changed
                        # while we were not listening, the revision tells.
                        self._up()
                        self._subscribed.set()
                        self._reload_wanted.set()
                        continue
                    if message.get("type") != "message":
                        continue
                    try:
                        self._handle(message["channel"], message["data"])
                    except Exception:
                        log.exception("ignoring a malformed message on %s", message.get("channel"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def _publish(self, batch: list[tuple[str, bytes]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, payload in batch:
                pipe.publish(channel, payload)
            await pipe.execute()

    async def _publish_forever(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < 100:
                batch.append(self._outbox.get_nowait())
            try:
                await self._publish(batch)
                self._up()
                backoff = BACKOFF_MIN_S
            except Exception as exc:
                # Dropped: the catalog poll covers missed invalidations; log rows stay local.
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                for _ in batch:
                    self._outbox.task_done()

    async def _reload_forever(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await _quietly(self.catalog.reload_if_stale(), "catalog reload after a broadcast")

    async def _sync_in_flight_forever(self) -> None:
        while True:
            await asyncio.sleep(IN_FLIGHT_SYNC_S)
            try:
                await self._sync_in_flight()
                self._up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.in_flight.remote = {}  # stale counts would mislead: local only until Redis is back
                self._down(exc)

    async def _sync_in_flight(self) -> None:
        now = time.time()
        mine = orjson.dumps({"t": now, "c": {str(k): v for k, v in self.in_flight.counts.items() if v > 0}})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.in_flight_key, self._node, mine)
            pipe.hgetall(self.in_flight_key)
            _, entries = await pipe.execute()
        remote: dict[int, int] = {}
        forgotten = []
        for node, raw in entries.items():
            if node == self._node:
                continue
            try:
                entry = orjson.loads(raw)
                age = now - float(entry["t"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                forgotten.append(node)
                continue
            if age > IN_FLIGHT_FORGET_S:
                forgotten.append(node)
            if age > IN_FLIGHT_FRESH_S:
                continue
            for backend_id, count in entry["c"].items():
                remote[int(backend_id)] = remote.get(int(backend_id), 0) + int(count)
        self.in_flight.remote = remote
        if forgotten:
            await self._redis.hdel(self.in_flight_key, *forgotten)

    # --- Redis availability ---

    def _down(self, exc: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            log.warning(
                "Redis unavailable (%s: %s): this process carries on with local state only (admin changes "
                "from other processes arrive within CATALOG_POLL_INTERVAL_S=%gs, live subscriptions see this "
                "process's requests); reconnecting in the background",
                exc.__class__.__name__,
                exc,
                self.settings.catalog_poll_interval_s,
            )

    def _up(self) -> None:
        if self.degraded:
            self.degraded = False
            log.warning("Redis is reachable again: sharing live state across processes")


async def announce_catalog_change(settings: Settings, revision: int) -> None:
    """A one-shot catalog broadcast from a process without a SharedState (the CLI). Never raises."""
    import redis.asyncio as aioredis

    assert settings.redis_url
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        message = {"o": f"cli:{socket.gethostname()}:{os.getpid()}", "rev": revision}
        await client.publish(f"{settings.redis_prefix}:catalog", orjson.dumps(message))
    except Exception as exc:
        log.warning(
            "could not announce the change through Redis (%s): running routers see it within "
            "CATALOG_POLL_INTERVAL_S=%gs",
            exc,
            settings.catalog_poll_interval_s,
        )
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def _quietly(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("%s failed: %s", what, exc)
