"""Usage accounting: request records, token-usage parsing, the batched log writer, the live event bus."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import operator
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from tortoise import connections, fields
from tortoise.transactions import in_transaction

from router.models.analytics import RequestLog, UsageRollup, UsageRollupDaily
from router.protocols.base import Usage
from router.signals import Signal
from router.urls import redact_text

log = logging.getLogger("router.usage")


# --- records ----------------------------------------------------------------------------------

_EPOCH_MS = 1_704_067_200_000  # 2024-01-01: ids stay below 2**63 for ~69 years
_worker_bits = random.getrandbits(10)
_sequence = itertools.count()


def new_log_id(now: float | None = None) -> int:
    """A time-ordered 63-bit id, unique across processes without asking the database.

    milliseconds since 2024 << 22 | 10 random bits per process << 12 | a 12-bit counter.
    Newest-first pagination by id is then also by time.
    """
    millis = int((now if now is not None else time.time()) * 1000) - _EPOCH_MS
    return (millis << 22) | (_worker_bits << 12) | (next(_sequence) & 0xFFF)


MAX_ERROR_CHARS = 2000  # request_logs.error is TEXT: a bound of our own
MAX_ATTEMPT_ERRORS = 10
MAX_ATTEMPT_ERROR_CHARS = 500
# Every VARCHAR column of the request log: a longer value would fail the whole batch on PostgreSQL.
_CHAR_COLUMNS = tuple(
    (name, column.max_length)
    for name, column in RequestLog._meta.fields_map.items()
    if isinstance(column, fields.CharField) and name != "request_id"  # request_id_of bounds it
)


def clip(text: str | None, limit: int) -> str | None:
    """`text` cut to at most `limit` characters, marked with a trailing '…' when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


# Field metadata of RequestRecord: a field is a request-log column and travels to the other processes
# (router.shared) unless marked so.
_NOT_STORED = {"stored": False}
_LOCAL = {"stored": False, "shared": False}


@dataclass(slots=True)
class RequestRecord:
    """One finished /v1 request, as it goes to the request log, metrics and traces."""

    request_id: str
    endpoint: str
    started_at: float = field(default_factory=time.time, metadata=_LOCAL)  # created_at is stored
    user_id: int | None = None
    user_name: str | None = None
    backend_id: int | None = None
    backend_name: str | None = None
    model: str | None = None
    status_code: int = 0
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: int = 0
    error: str | None = None
    translated_to: str | None = None  # the upstream API path when the request was translated
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    response_id: str | None = None
    method: str = field(default="POST", metadata=_NOT_STORED)  # the endpoint is stored; for the log line
    cost_usd: float | None = None
    attempt_errors: list[str] | None = None  # why each failed attempt failed, in order
    id: int = 0
    created_at: datetime | None = None
    # Not stored in the request log; for tracing only.
    input: Any = field(default=None, repr=False, metadata=_LOCAL)
    output: Any = field(default=None, repr=False, metadata=_LOCAL)
    # Not stored either: what `Runtime.finish` settles with the limiter (router.limits.Admission).
    admission: Any = field(default=None, repr=False, metadata=_LOCAL)

    def set_usage(self, usage: Usage | None) -> None:
        """The answer's usage (a body's, or a stream's so far)."""
        if usage is None:
            return
        self.prompt_tokens, self.completion_tokens, self.total_tokens = (
            usage.prompt,
            usage.completion,
            usage.total_tokens,
        )
        self.cached_tokens, self.cache_write_tokens, self.reasoning_tokens = (
            usage.cached,
            usage.cache_write,
            usage.reasoning,
        )

    def add_usage(self, usage: Usage) -> None:
        """A stream event's usage: what it reports updates what earlier events reported.

        A total reported earlier is not kept: the merged total is the last one reported or the sum.
        """
        so_far = Usage(
            self.prompt_tokens,
            self.completion_tokens,
            0,
            self.cached_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )
        self.set_usage(so_far.merged(usage))

    def attempt_failed(self, error: str) -> None:
        """Keep why one attempt failed (bounded: the first MAX_ATTEMPT_ERRORS, each clipped and redacted)."""
        errors = self.attempt_errors if self.attempt_errors is not None else []
        if len(errors) < MAX_ATTEMPT_ERRORS:
            errors.append(clip(redact_text(error), MAX_ATTEMPT_ERROR_CHARS) or "")
        self.attempt_errors = errors

    def finish(self, status_code: int, error: str | None = None) -> None:
        self.status_code = status_code
        if error and not self.error:
            self.error = error
        # Client- or upstream-chosen strings are cut to their column before anything stores, logs or counts them.
        if self.model and "@" in self.model:
            self.model = redact_text(self.model)
        for name, limit in _CHAR_COLUMNS:
            value = getattr(self, name, None)
            if value is not None and len(value) > limit:
                setattr(self, name, clip(value, limit))
        self.error = clip(redact_text(self.error), MAX_ERROR_CHARS) if self.error else None
        now = time.time()
        self.latency_ms = (now - self.started_at) * 1000.0
        self.id = new_log_id(now)
        self.created_at = datetime.fromtimestamp(self.started_at, UTC)

    def as_tuple(self) -> tuple[Any, ...]:
        """The stored fields in `LOG_COLUMNS` order (one C-level getter: this runs for every request)."""
        row: tuple[Any, ...] = _stored_values(self)
        if self.attempt_errors is not None:  # a JSON list in a TEXT column
            shown = orjson.dumps(self.attempt_errors).decode() if self.attempt_errors else None
            row = (*row[:_ATTEMPT_ERRORS], shown, *row[_ATTEMPT_ERRORS + 1 :])
        return row


# The request log's columns and what travels between processes (router.shared): the record's fields
# unless marked otherwise. tests/test_usage.py checks the ORM model and the GraphQL type against them.
LOG_COLUMNS = tuple(f.name for f in dataclasses.fields(RequestRecord) if f.metadata.get("stored", True))
WIRE_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord) if f.metadata.get("shared", True))
_stored_values = operator.attrgetter(*LOG_COLUMNS)
_ATTEMPT_ERRORS = LOG_COLUMNS.index("attempt_errors")
_CREATED_AT = LOG_COLUMNS.index("created_at")


async def insert_log_rows(records: list[RequestRecord]) -> None:
    """The rows' INSERTs and the hourly rollups' upserts, in one transaction.

    No ORM objects on the hot path's event loop; a failed batch leaves neither rows nor totals.
    """
    conn = connections.get("analytics")
    sqlite = conn.capabilities.dialect == "sqlite"
    # PostgreSQL: one row's statement, run per row (tuples: asyncpg takes any sequence per row).
    inserts: list[tuple[str, list[Any]]] = (
        _sqlite_inserts(records) if sqlite else [(_POSTGRES_INSERT, [r.as_tuple() for r in records])]
    )
    hourly = _rollup_sums(records)
    async with in_transaction("analytics") as tx:
        for sql, values in inserts:
            await tx.execute_many(sql, values)
        # Hourly, then daily, each sorted: concurrent writers lock the same rows in the same order.
        await tx.execute_many(_rollup_sql(sqlite, UsageRollup), _as_rows(hourly, sqlite))
        await tx.execute_many(_rollup_sql(sqlite, UsageRollupDaily), _as_rows(_daily_sums(hourly), sqlite))


_INSERT = f"INSERT INTO {RequestLog._meta.db_table} ({', '.join(LOG_COLUMNS)}) VALUES "
_POSTGRES_INSERT = _INSERT + f"({', '.join(f'${i}' for i in range(1, len(LOG_COLUMNS) + 1))})"
# SQLite: a statement of 64 rows costs ~2 µs a row less than one row's statement run per row (in a
# batch of 500; benchmarks/writer_cost.py). A batch's rows go in as many of those as they fill, the
# rest one at a time: two statements, each compiled once (more, of other sizes, cost more per call
# than they save on the smaller batches). 64 rows' parameters are within SQLite's bound (999 before 3.32).
_SQLITE_ROWS = 64 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999 // len(LOG_COLUMNS)
_SQLITE_ROW = "(" + ", ".join("?" * len(LOG_COLUMNS)) + ")"
_SQLITE_INSERTS = {1: _INSERT + _SQLITE_ROW, _SQLITE_ROWS: _INSERT + ", ".join([_SQLITE_ROW] * _SQLITE_ROWS)}


def _null(value: None) -> None:
    return None


# Python's sqlite3 "adapts" each parameter that is not exactly an int, float, str or bytes: for a None
# or a bool with no adapter registered it looks up `__adapt__` and `__conform__`, and each miss raises
# and formats an AttributeError. A log row has about six. Registered, they are found at once and bind
# the same values (NULL; 0 or 1): ~1 µs less per row (benchmarks/README.md). Process-wide, as
# Tortoise's own adapters (Decimal, date, datetime) are.
sqlite3.register_adapter(type(None), _null)
sqlite3.register_adapter(bool, int)


def _sqlite_inserts(records: list[RequestRecord]) -> list[tuple[str, list[Any]]]:
    """(statement, the parameters of each run): the records in LOG_COLUMNS order, _SQLITE_ROWS a run
    as long as they fill one, then one a run."""
    values: list[Any] = []
    for record in records:
        values += record.as_tuple()
    width = len(LOG_COLUMNS)
    for i in range(_CREATED_AT, len(values), width):  # stored as Tortoise stores datetimes in SQLite:
        values[i] = str(values[i])  # str() of the aware datetime
    out: list[tuple[str, list[Any]]] = []
    full = len(records) // _SQLITE_ROWS * _SQLITE_ROWS * width
    if full:
        step = _SQLITE_ROWS * width
        out.append((_SQLITE_INSERTS[_SQLITE_ROWS], [values[i : i + step] for i in range(0, full, step)]))
    if full < len(values):
        out.append((_SQLITE_INSERTS[1], [values[i : i + width] for i in range(full, len(values), width)]))
    return out


# --- hourly and daily rollups ----------------------------------------------------------------

ROLLUP_KEY = ("hour", "user_id", "backend_id", "model")
ROLLUP_NAMES = ("user_name", "backend_name")
ROLLUP_SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "latency_ms_sum",
)
_Sums = dict[tuple[datetime, int, int, str], list[Any]]


def _rollup_sums(records: list[RequestRecord]) -> _Sums:
    """A batch summed per (UTC hour, user, backend, model): [user_name, backend_name, *ROLLUP_SUMS]."""
    sums: _Sums = {}
    hours: dict[tuple[int, int, int, int], datetime] = {}  # a batch spans an hour or two: replace() once each
    for r in records:
        created = r.created_at or datetime.fromtimestamp(r.started_at, UTC)
        if created.tzinfo is not UTC:
            created = created.astimezone(UTC)
        at = (created.year, created.month, created.day, created.hour)
        hour = hours.get(at)
        if hour is None:
            hour = hours[at] = created.replace(minute=0, second=0, microsecond=0)
        key = (hour, r.user_id or 0, r.backend_id or 0, r.model or "")
        entry = sums.get(key)
        if entry is None:
            entry = sums[key] = [r.user_name, r.backend_name, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0]
        entry[0], entry[1] = r.user_name or entry[0], r.backend_name or entry[1]
        add_to_sums(entry, 2, r)
    return sums


def add_to_sums(sums: list[Any], at: int, r: RequestRecord) -> None:
    """Count one request into running totals in ROLLUP_SUMS order, held from `sums[at]` on."""
    sums[at] += 1
    sums[at + 1] += 1 if r.status_code >= 400 or r.error is not None else 0
    sums[at + 2] += r.prompt_tokens
    sums[at + 3] += r.completion_tokens
    sums[at + 4] += r.total_tokens
    sums[at + 5] += r.cached_tokens
    sums[at + 6] += r.reasoning_tokens
    sums[at + 7] += r.cost_usd or 0.0
    sums[at + 8] += r.latency_ms


def _daily_sums(hourly: _Sums) -> _Sums:
    """The hourly sums of a batch added up per UTC day (midnight)."""
    sums: _Sums = {}
    for (hour, user_id, backend_id, model), values in hourly.items():
        key = (hour.replace(hour=0), user_id, backend_id, model)
        entry = sums.get(key)
        if entry is None:
            sums[key] = list(values)
            continue
        entry[0], entry[1] = values[0] or entry[0], values[1] or entry[1]
        for i in range(2, len(values)):
            entry[i] += values[i]
    return sums


def _as_rows(sums: _Sums, sqlite: bool) -> list[list[Any]]:
    """Rows in ROLLUP_KEY + NAMES + SUMS order, sorted by key (a stable lock order for concurrent writers)."""
    ordered = sorted(sums.items(), key=lambda item: item[0])
    return [[(str(k[0]) if sqlite else k[0]), *k[1:], *v] for k, v in ordered]


def rollup_rows(records: list[RequestRecord], sqlite: bool = False) -> list[tuple[Any, ...]]:
    """A batch summed per (UTC hour, user, backend, model), in ROLLUP_KEY + NAMES + SUMS order."""
    return [tuple(row) for row in _as_rows(_rollup_sums(records), sqlite)]


def rollup_backfill_sql(postgres: bool) -> list[str]:
    """INSERT ... SELECTs of the whole request log's hourly totals into an empty usage_rollups, then of
    those into an empty usage_rollups_daily (the SQL of the rollups' migrations)."""
    if postgres:
        hour = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        day = "date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:  # the text Tortoise stores for an aware datetime, as rollup_rows writes it
        hour = "strftime('%Y-%m-%d %H:00:00+00:00', created_at)"
        day = "strftime('%Y-%m-%d 00:00:00+00:00', hour)"
    columns = ", ".join((*ROLLUP_KEY, *ROLLUP_NAMES, *ROLLUP_SUMS))
    hourly, daily = UsageRollup._meta.db_table, UsageRollupDaily._meta.db_table
    return [
        f"INSERT INTO {hourly} ({columns}) "
        f"SELECT {hour}, COALESCE(user_id, 0), COALESCE(backend_id, 0), COALESCE(model, ''), MAX(user_name), "
        "MAX(backend_name), COUNT(*), SUM(CASE WHEN status_code >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END), "
        "SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens), SUM(cached_tokens), SUM(reasoning_tokens), "
        f"COALESCE(SUM(cost_usd), 0), SUM(latency_ms) FROM {RequestLog._meta.db_table} GROUP BY 1, 2, 3, 4",
        f"INSERT INTO {daily} ({columns.replace('hour', 'day', 1)}) "
        f"SELECT {day}, user_id, backend_id, model, MAX(user_name), MAX(backend_name), "
        f"{', '.join(f'SUM({c})' for c in ROLLUP_SUMS)} FROM {hourly} GROUP BY 1, 2, 3, 4",
    ]


async def rebuild_rollups() -> None:
    """Recompute both rollup levels from the whole request log (after rows were written around the
    log writer, e.g. a bulk import or a test's fixtures)."""
    conn = connections.get("analytics")
    async with in_transaction("analytics") as tx:
        for table in (UsageRollup._meta.db_table, UsageRollupDaily._meta.db_table):
            await tx.execute_script(f"DELETE FROM {table}")
        for statement in rollup_backfill_sql(conn.capabilities.dialect == "postgres"):
            await tx.execute_script(statement)


def _rollup_sql(sqlite: bool, model: type[UsageRollup] | type[UsageRollupDaily]) -> str:
    key = ROLLUP_KEY if model is UsageRollup else ("day", *ROLLUP_KEY[1:])
    columns = (*key, *ROLLUP_NAMES, *ROLLUP_SUMS)
    marks = ", ".join("?" if sqlite else f"${i}" for i in range(1, len(columns) + 1))
    table = model._meta.db_table
    updates = [f"{c} = COALESCE(excluded.{c}, {table}.{c})" for c in ROLLUP_NAMES]
    updates += [f"{c} = {table}.{c} + excluded.{c}" for c in ROLLUP_SUMS]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(updates)}"
    )


# --- the batched writer -----------------------------------------------------------------------


class LogWriter:
    """Collects records in memory and writes them in batches, off the request path.

    `submit` never waits. If the database is away, rows wait (up to `max_buffer`; beyond that the
    oldest are dropped with an error in the log) and are retried with backoff. `close` flushes all.
    """

    def __init__(
        self,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        max_buffer: int = 100_000,
    ) -> None:
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        # Emitted with each batch once it is stored (the live event bus, other processes through Redis).
        self.on_written: Signal[[list[RequestRecord]]] = Signal()
        self._pending: deque[RequestRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self.written = 0

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="log-writer")

    def submit(self, record: RequestRecord) -> None:
        if len(self._pending) >= self.max_buffer:
            self._drop_oldest(len(self._pending) - self.max_buffer + 1)
        self._pending.append(record)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    async def _run(self) -> None:
        backoff = self.flush_interval_s
        while True:
            # Under load, writing whatever is pending right after each batch made many small
            # transactions (each with its journal round trip); a batch waits until it is full or
            # the interval passed, so rows still reach the database within `flush_interval_s`.
            if len(self._pending) < self.batch_size and not self._closing:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            if not self._pending:
                if self._closing:
                    return
                continue
            if await self._write_batch():
                backoff = self.flush_interval_s
            else:
                if self._closing and backoff > 5:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _write_batch(self) -> bool:
        batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
        try:
            await insert_log_rows(batch)
        except Exception as exc:
            self._pending.extendleft(reversed(batch))
            log.warning("writing %d request log rows failed (will retry): %s", len(batch), exc)
            # Rows submitted while the batch was out of the buffer did not see it: the bound
            # holds again only once the oldest of the put-back rows go.
            if len(self._pending) > self.max_buffer:
                self._drop_oldest(len(self._pending) - self.max_buffer)
            return False
        self.written += len(batch)
        self.on_written.emit(batch)
        return True

    def _drop_oldest(self, count: int) -> None:
        for _ in range(count):
            self._pending.popleft()
        self.dropped += count
        log.error("request log buffer full (%d rows): dropped the oldest %d", self.max_buffer, count)

    async def flush(self) -> None:
        """Write everything pending now (used by tests and on shutdown)."""
        while self._pending:
            if not await self._write_batch():
                break

    async def close(self, timeout_s: float = 30.0) -> None:
        self._closing = True
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                self._task.cancel()
        if self._pending:
            log.error("%d request log rows could not be written before exit", len(self._pending))


# --- the live event bus -----------------------------------------------------------------------


class SubscriberQueue:
    """One subscriber's bounded queue, optionally capped at `max_per_second` entries a second.

    Each queued entry carries how many requests were left out just before it: by the cap, or
    because the queue was full (the oldest entry is dropped then, and its count moves to the next).
    """

    def __init__(
        self,
        bus: EventBus,
        maxsize: int,
        predicate: Callable[[RequestRecord], bool],
        max_per_second: int | None = None,
    ) -> None:
        self._bus = bus
        self.maxsize = max(1, maxsize)
        self.predicate = predicate
        self.max_per_second = max_per_second
        self._items: deque[list[Any]] = deque()  # [record, left out just before it]
        self._ready = asyncio.Event()
        self._window = 0
        self._in_window = 0
        self._left_out = 0
        self.dropped = 0  # queue overflows
        self.capped = 0  # left out by max_per_second

    def offer(self, record: RequestRecord) -> None:
        if not self.predicate(record):
            return
        if self.max_per_second is not None:
            window = int(time.monotonic())
            if window != self._window:
                self._window, self._in_window = window, 0
            if self._in_window >= self.max_per_second:
                self._left_out += 1
                self.capped += 1
                return
            self._in_window += 1
        if len(self._items) >= self.maxsize:
            _, before = self._items.popleft()
            self.dropped += 1
            if self._items:
                self._items[0][1] += before + 1
            else:
                self._left_out += before + 1
        self._items.append([record, self._left_out])
        self._left_out = 0
        self._ready.set()

    async def get(self) -> RequestRecord:
        return (await self.get_with_left_out())[0]

    async def get_with_left_out(self) -> tuple[RequestRecord, int]:
        """The next entry and how many requests were left out just before it."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        record, left_out = self._items.popleft()
        return record, left_out

    def pending(self) -> list[tuple[RequestRecord, int]]:
        """The queued entries and their left-out counts, oldest first (not removed)."""
        return [(record, left_out) for record, left_out in self._items]

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """In-process fan-out of logged requests to live subscribers."""

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscribers: set[SubscriberQueue] = set()

    def subscribe(
        self, predicate: Callable[[RequestRecord], bool] = lambda _: True, max_per_second: int | None = None
    ) -> SubscriberQueue:
        subscription = SubscriberQueue(self, self.queue_size, predicate, max_per_second)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: SubscriberQueue) -> None:
        self._subscribers.discard(subscription)

    def publish(self, records: list[RequestRecord]) -> None:
        for subscription in tuple(self._subscribers):
            for record in records:
                subscription.offer(record)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
