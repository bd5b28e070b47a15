"""Live usage ticks: per-second aggregates of finished requests, delivered every N seconds.

Each finished request adds its numbers to this second's bucket in memory (one dict update, no
message to anyone). Once a second a background task closes the bucket of the second just ended:

- without Redis, that bucket is the second's numbers;
- with `REDIS_URL`, every process adds its bucket to one Redis hash per second
  (`<REDIS_PREFIX>:usage:<epoch second>`, one pipeline per process per second, expiring after
  BUCKET_TTL_S), and after TICK_GRACE_S reads the whole hash back: every process then holds the
  same cluster-wide numbers for that second, and each second is counted once, by its key.

Latency percentiles: each group also counts its requests in a latency histogram with fixed,
log-spaced buckets (LATENCY_BUCKETS_PER_OCTAVE per doubling, from 2**-10 ms to 2**20 ms), one
`dict` increment per request. Fixed buckets add up exactly, so histograms of several seconds and
of several processes (through the same Redis hash, one HINCRBY field per non-empty bucket) merge
without loss, and p50/p95 of a tick are read from the merged counts: the geometric middle of the
bucket holding the rank, within about 4.4 % (half a bucket) of the exact value.

Intervals are aligned to the epoch (an `intervalS` of 5 ends at :00, :05, ...), so two subscribers
with the same interval see the same totals wherever they are connected. Each subscriber has a
one-slot mailbox: a tick that finds the previous one still undelivered replaces it and counts it
in `skipped`, so a slow client costs one tick of memory and gets the newest numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from router.analytics_queries import UsageRow
from router.signals import Fanout
from router.usage import RequestRecord, add_to_sums

log = logging.getLogger("router.live")

MAX_INTERVAL_S = 60
FLUSH_DELAY_S = 0.05  # after the second ends: its last requests have surely been added
TICK_GRACE_S = 0.5  # after the second ends: every process has pushed its bucket to Redis
BUCKET_TTL_S = 2 * MAX_INTERVAL_S + 10
MAX_GROUPS_PER_SECOND = 10_000  # distinct (user, backend, model) in one second; more go to one overflow group

# (user id, user name, backend id, backend name, model) of a request.
GroupKey = tuple[int | None, str | None, int | None, str | None, str | None]
_OVERFLOW: GroupKey = (None, None, None, None, "(other)")
# Sums per group, in this order.
SUMS = ("requests", "errors", "prompt", "completion", "total", "cached", "reasoning", "cost", "latency")
_FLOATS = frozenset({"cost", "latency"})
Sums = list[float]

# Latency histogram: bucket i holds latencies in [2**(i/P - 10), 2**((i+1)/P - 10)) ms, P per octave.
LATENCY_BUCKETS_PER_OCTAVE = 8
_LATENCY_OFFSET = 10  # octaves below 1 ms (down to ~1 µs)
LATENCY_BUCKETS = (_LATENCY_OFFSET + 20) * LATENCY_BUCKETS_PER_OCTAVE  # up to 2**20 ms (~17 min); above: the last
_HIST_PREFIX = b"h"  # Redis field `<group>|h<bucket>`


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds."""
    if ms <= 0.0:
        return 0
    i = int((math.log2(ms) + _LATENCY_OFFSET) * LATENCY_BUCKETS_PER_OCTAVE)
    return 0 if i < 0 else LATENCY_BUCKETS - 1 if i >= LATENCY_BUCKETS else i


def bucket_value(i: int) -> float:
    """The value a bucket stands for: its geometric middle (within half a bucket of anything in it)."""
    return float(2.0 ** ((i + 0.5) / LATENCY_BUCKETS_PER_OCTAVE - _LATENCY_OFFSET))


def quantile(hist: dict[int, int], q: float) -> float | None:
    """The `q` quantile (nearest rank) of the latencies counted in `hist`; None when it is empty."""
    n = sum(hist.values())
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen >= rank:
            return bucket_value(i)
    return bucket_value(max(hist))  # pragma: no cover (rank <= n)


class Group:
    """One group's numbers in one second (or merged seconds): the sums and the latency histogram."""

    __slots__ = ("hist", "sums")

    def __init__(self, sums: Sums | None = None, hist: dict[int, int] | None = None) -> None:
        self.sums: Sums = sums if sums is not None else [0.0] * len(SUMS)
        self.hist: dict[int, int] = hist if hist is not None else {}

    def add(self, other: Group) -> None:
        sums = self.sums
        for i, value in enumerate(other.sums):
            sums[i] += value
        hist = self.hist
        for i, count in other.hist.items():
            hist[i] = hist.get(i, 0) + count

    def copy(self) -> Group:
        return Group(list(self.sums), dict(self.hist))


Bucket = dict[GroupKey, Group]


@dataclass(frozen=True, slots=True)
class Tick:
    """What one subscription gets: the interval's end, its length, its rows (empty when quiet).

    One Tick is shared by every subscriber of its interval and grouping; `views` lets the API layer
    build what it sends from it once too (graphql_schema.subscriptions: one message per `skipped`).
    """

    at: datetime
    interval_s: int
    rows: list[UsageRow]
    views: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


class TickMailbox:
    """One subscriber's single slot: the newest undelivered tick and how many it replaced."""

    def __init__(self, interval_s: int, group_by: tuple[str, ...]) -> None:
        self.interval_s = interval_s
        self.group_by = group_by
        self._tick: Tick | None = None
        self._missed = 0
        self._ready = asyncio.Event()

    def put(self, tick: Tick) -> None:
        if self._tick is not None:
            self._missed += 1
        self._tick = tick
        self._ready.set()

    async def get(self) -> tuple[Tick, int]:
        """The newest tick and the number of ticks skipped since the previous `get`."""
        while self._tick is None:
            self._ready.clear()
            await self._ready.wait()
        tick, skipped = self._tick, self._missed
        self._tick, self._missed = None, 0
        return tick, skipped


def add_record(bucket: Bucket, record: RequestRecord) -> None:
    """Add one finished request to a second's bucket: its sums and one latency-bucket increment."""
    key: GroupKey = (record.user_id, record.user_name, record.backend_id, record.backend_name, record.model)
    group = bucket.get(key)
    if group is None:
        if len(bucket) >= MAX_GROUPS_PER_SECOND:
            key = _OVERFLOW
            group = bucket.get(key)
        if group is None:
            group = bucket[key] = Group()
    add_to_sums(group.sums, 0, record)  # in ROLLUP_SUMS order, as the rollups count
    hist = group.hist
    i = latency_bucket(record.latency_ms)
    hist[i] = hist.get(i, 0) + 1


def merge(buckets: Iterable[Bucket]) -> Bucket:
    total: Bucket = {}
    for bucket in buckets:
        for key, group in bucket.items():
            into = total.get(key)
            if into is None:
                total[key] = group.copy()
            else:
                into.add(group)
    return total


def rows_of(bucket: Bucket, group_by: Sequence[str]) -> list[UsageRow]:
    """The bucket summed per the asked grouping ("user", "backend", "model"; none: one row)."""
    by_user, by_backend, by_model = "user" in group_by, "backend" in group_by, "model" in group_by
    grouped: Bucket = {}
    for (uid, uname, bid, bname, model), group in bucket.items():
        key: GroupKey = (
            uid if by_user else None,
            uname if by_user else None,
            bid if by_backend else None,
            bname if by_backend else None,
            model if by_model else None,
        )
        into = grouped.get(key)
        if into is None:
            grouped[key] = group.copy()
        else:
            into.add(group)
    rows = []
    for (uid, uname, bid, bname, model), g in sorted(grouped.items(), key=lambda item: -item[1].sums[0]):
        s = g.sums
        requests = int(s[0])
        rows.append(
            UsageRow(
                bucket_start=None,
                user_id=uid,
                user_name=uname,
                backend_id=bid,
                backend_name=bname,
                model=model,
                requests=requests,
                errors=int(s[1]),
                prompt_tokens=int(s[2]),
                completion_tokens=int(s[3]),
                total_tokens=int(s[4]),
                cached_tokens=int(s[5]),
                reasoning_tokens=int(s[6]),
                avg_latency_ms=s[8] / requests if requests else None,
                cost_usd=s[7],
                p50_latency_ms=quantile(g.hist, 0.50),
                p95_latency_ms=quantile(g.hist, 0.95),
            )
        )
    return rows


def encode_bucket(bucket: Bucket) -> list[tuple[str, bytes, int | float]]:
    """(command, hash field, increment) for HINCRBY/HINCRBYFLOAT of every non-zero sum and histogram bucket."""
    out: list[tuple[str, bytes, int | float]] = []
    for key, group in bucket.items():
        prefix = orjson.dumps(key) + b"|"
        for name, value in zip(SUMS, group.sums, strict=True):
            if value:
                field = prefix + name.encode()
                out.append(("hincrbyfloat", field, value) if name in _FLOATS else ("hincrby", field, int(value)))
        for i, count in group.hist.items():
            out.append(("hincrby", prefix + _HIST_PREFIX + str(i).encode(), count))
    return out


def decode_bucket(entries: dict[bytes, bytes]) -> Bucket:
    bucket: Bucket = {}
    index = {name.encode(): i for i, name in enumerate(SUMS)}
    for raw_field, raw_value in entries.items():
        raw_group, _, name = raw_field.rpartition(b"|")
        i = index.get(name)
        hist_bucket: int | None = None
        if i is None:
            digits = name[len(_HIST_PREFIX) :]
            if not (name.startswith(_HIST_PREFIX) and digits.isdigit() and int(digits) < LATENCY_BUCKETS):
                continue  # a field this version does not know (a newer process's): left out
            hist_bucket = int(digits)
        try:
            uid, uname, bid, bname, model = orjson.loads(raw_group)
            value = float(raw_value)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            continue
        key: GroupKey = (uid, uname, bid, bname, model)
        group = bucket.get(key)
        if group is None:
            group = bucket[key] = Group()
        if hist_bucket is not None:
            group.hist[hist_bucket] = group.hist.get(hist_bucket, 0) + int(value)
        elif i is not None:
            group.sums[i] += value
    return bucket


class Clock:
    """The ticker's time: epoch seconds, and a sleep until a given one. Tests swap in a faster one."""

    def time(self) -> float:
        return time.time()

    async def sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.time()))


class UsageTicker:
    """Per-second usage buckets of this process (shared through Redis when given) and tick fan-out.

    Every second it counts (the buckets, the ticks' ends, the waits) is one of `clock`, read anew
    on each use: a running ticker can be given another clock that continues from the current time.
    """

    def __init__(self, redis: Any | None = None, prefix: str = "llm-router", clock: Clock | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock if clock is not None else Clock()
        self._open: dict[int, Bucket] = {}  # second -> this process's bucket
        self._closed: dict[int, Bucket] = {}  # second -> final numbers (last MAX_INTERVAL_S)
        self._mailboxes: set[TickMailbox] = set()
        self._task: asyncio.Task[None] | None = None
        self._redis_failed = False
        self.ticks = 0  # seconds closed (for tests and metrics)

    # --- the request path ---

    def add(self, record: RequestRecord) -> None:
        """A finished request: one dict update in this second's bucket."""
        second = int(self.clock.time())
        bucket = self._open.get(second)
        if bucket is None:
            bucket = self._open[second] = {}
        add_record(bucket, record)

    # --- subscribers ---

    def subscribe(self, interval_s: int, group_by: Sequence[str]) -> TickMailbox:
        mailbox = TickMailbox(interval_s, tuple(sorted(set(group_by))))
        self._mailboxes.add(mailbox)
        return mailbox

    def unsubscribe(self, mailbox: TickMailbox) -> None:
        self._mailboxes.discard(mailbox)

    @property
    def subscriber_count(self) -> int:
        return len(self._mailboxes)

    # --- lifecycle ---

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-ticks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        last = int(self.clock.time()) - 1  # the last closed second
        while True:
            second = last + 1
            await self.clock.sleep_until(second + 1 + FLUSH_DELAY_S)
            if int(self.clock.time()) - second > MAX_INTERVAL_S:  # the loop was blocked for long: no backlog
                second = int(self.clock.time()) - 1
            try:
                await self._close_second(second)
            except Exception:
                log.exception("closing the usage second %d failed", second)
            last = second

    async def _close_second(self, second: int) -> None:
        mine = merge(self._open.pop(s) for s in [s for s in self._open if s <= second])
        numbers = mine
        if self.redis is not None:
            key = f"{self.prefix}:usage:{second}"
            try:
                if mine:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for command, field, value in encode_bucket(mine):
                            getattr(pipe, command)(key, field, value)
                        pipe.expire(key, BUCKET_TTL_S)
                        await pipe.execute()
                await self.clock.sleep_until(second + 1 + TICK_GRACE_S)
                numbers = decode_bucket(await self.redis.hgetall(key))
                if self._redis_failed:
                    self._redis_failed = False
                    log.warning("usage ticks: Redis is reachable again, ticks cover every process")
            except Exception as exc:
                if not self._redis_failed:
                    self._redis_failed = True
                    log.warning("usage ticks: Redis unavailable (%s): ticks cover this process only", exc)
        self._closed[second] = numbers
        for old in [s for s in self._closed if s <= second - MAX_INTERVAL_S]:
            del self._closed[old]
        self.ticks += 1
        self._deliver(second + 1)

    def _deliver(self, end: int) -> None:
        """Ticks for every subscriber whose interval ends at `end` (epoch seconds)."""
        made: dict[tuple[int, tuple[str, ...]], Tick] = {}
        at = datetime.fromtimestamp(end, UTC)
        for mailbox in tuple(self._mailboxes):
            if end % mailbox.interval_s:
                continue
            shape = (mailbox.interval_s, mailbox.group_by)
            tick = made.get(shape)
            if tick is None:
                seconds = range(end - mailbox.interval_s, end)
                numbers = merge(self._closed[s] for s in seconds if s in self._closed)
                tick = made[shape] = Tick(at, mailbox.interval_s, rows_of(numbers, mailbox.group_by))
            mailbox.put(tick)


# --- backend health transitions ---------------------------------------------------------------

HEALTH_QUEUE_SIZE = 100  # per subscriber; a client that falls this far behind loses the oldest


@dataclass(frozen=True, slots=True)
class HealthChange:
    backend_id: int
    healthy: bool
    reason: str | None
    at: datetime


class HealthFeed(Fanout[HealthChange]):
    """Fan-out of backend up/down transitions (HealthTracker.on_transition) to bounded subscriber queues."""

    def __init__(self) -> None:
        super().__init__(HEALTH_QUEUE_SIZE)

    def __call__(self, backend_id: int, healthy: bool, reason: str | None) -> None:
        self.publish(HealthChange(backend_id, healthy, reason, datetime.now(UTC)))
