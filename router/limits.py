"""Rate limits, concurrency limits, budgets and fair queues for /v1 requests.

Pure parts (windows, periods, estimates, headers) are plain functions and small classes; the
counters live in a store: `LocalStore` (this process) or `RedisStore` (every process sharing a
Redis, one atomic Lua script per admission, falling back to a `LocalStore` while Redis is away).

How a request is admitted (`Limiter.admit`), before it is forwarded:

- RPM and TPM are sliding windows of 60 s in 1 s steps. A request is admitted while the window is
  below the limit; it then counts 1 request and reserves its token estimate (prompt size from the
  body plus max_tokens, or `LIMITS_DEFAULT_MAX_TOKENS`). `settle` replaces the reservation with
  the real usage. So a burst overshoots a TPM limit by at most the last admitted request.
- maxConcurrent: a user at its limit is refused at once; a backend at its limit queues the request
  in a per-backend fair queue (round-robin across users) for up to `QUEUE_TIMEOUT_S`.
- Budgets: a user whose spend in the current period (calendar day, ISO week or month, UTC) has
  reached `budgetUsd` is refused until the period ends. Spend counters are seeded from the usage
  rollups (never the request log) and grow with each settled request's cost.

Nothing is asked of any store when neither the user nor the backend has a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import math
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from router.errors import ApiError
from router.quota_events import QuotaEvent
from router.redis_wire import RedisWire, ReplyError, bulk
from router.signals import Signal

log = logging.getLogger("router.limits")

WINDOW_S = 60
LEASE_S = 30.0  # a concurrency slot of a process that died frees itself after this long...
LEASE_REFRESH_S = 10.0  # ...because live processes extend theirs this often
CHARS_PER_TOKEN = 4  # prompt estimate from the body size: roughly 4 bytes of JSON per token
REDIS_RETRY_S = 1.0  # while Redis is away, probe it this often (never on the request path)
QUEUE_POLL_S = 0.05  # with Redis, a waiting queue re-checks capacity freed by other processes this often
SETTLE_BATCH = 500
MAX_QUEUE_PER_BACKEND = 10_000

Clock = Callable[[], float]
# LimitExceeded.kind (and "concurrency" for a backend making a request queue) -> QuotaEvent.kind
EVENT_KINDS = {
    "requests": "RPM",
    "tokens": "TPM",
    "concurrency": "CONCURRENCY",
    "budget": "BUDGET",
    "queue": "QUEUE_FULL",
}


# --- what a user or backend may do ------------------------------------------------------------


class BudgetPeriod(StrEnum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"


@dataclass(frozen=True, slots=True)
class Limits:
    """None means unlimited. Budgets apply to users only."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: float | None = None
    budget_period: BudgetPeriod | None = None

    def __bool__(self) -> bool:
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.max_concurrent is not None
            or self.budget_usd is not None
        )

    @property
    def period(self) -> BudgetPeriod:
        return self.budget_period or BudgetPeriod.MONTH


NO_LIMITS = Limits()


def check_limits(limits: Limits, for_backend: bool = False) -> Limits:
    """The same limits if valid; ValueError naming the field otherwise."""
    for name in ("rpm", "tpm", "max_concurrent"):
        value = getattr(limits, name)
        if value is not None and (not isinstance(value, int) or value < 1 or value > 1_000_000_000):
            raise ValueError(f"{_camel(name)} must be a whole number from 1 to 1000000000 (or null: unlimited)")
    if limits.budget_usd is not None:
        if for_backend:
            raise ValueError("budgetUsd applies to users only")
        if not math.isfinite(limits.budget_usd) or limits.budget_usd < 0 or limits.budget_usd > 1e12:
            raise ValueError("budgetUsd must be a number from 0 to 1e12 (or null: unlimited)")
    if limits.budget_period is not None and for_backend:
        raise ValueError("budgetPeriod applies to users only")
    return limits


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# --- periods (pure) ---------------------------------------------------------------------------


def period_bounds(period: BudgetPeriod, now: float) -> tuple[datetime, datetime]:
    """[start, end) of the calendar day, ISO week (Monday) or month containing `now`, in UTC."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is BudgetPeriod.DAY:
        return day, day + timedelta(days=1)
    if period is BudgetPeriod.WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def estimate_tokens(payload: dict[str, Any], body_size: int, default_max_tokens: int) -> int:
    """Tokens to reserve: the prompt estimated from the body size, plus the completion's ceiling."""
    completion = default_max_tokens
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            completion = value
            break
    return body_size // CHARS_PER_TOKEN + completion


# --- the sliding window (pure, in-process) ----------------------------------------------------


class Window:
    """Amounts per whole second over the last WINDOW_S seconds, with their running total."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [second, amount], oldest first
        self.total = 0

    def advance(self, second: int) -> None:
        buckets = self.buckets
        while buckets and buckets[0][0] <= second - WINDOW_S:
            self.total -= buckets.popleft()[1]

    def add(self, second: int, amount: int) -> None:
        buckets = self.buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += amount
        else:
            buckets.append([second, amount])
        self.total += amount

    def adjust(self, second: int, delta: int, now_second: int) -> None:
        """Correct what was added at `second` (a reservation settled); gone buckets take only a surplus."""
        for bucket in reversed(self.buckets):
            if bucket[0] == second:
                bucket[1] += delta
                self.total += delta
                return
            if bucket[0] < second:
                break
        if delta > 0:
            self.advance(now_second)
            self.add(now_second, delta)

    def wait_s(self, limit: int, now: float) -> float:
        """Seconds until the total drops below `limit` (0 if it is below already)."""
        if self.total < limit:
            return 0.0
        freed = 0
        for second, amount in self.buckets:
            freed += amount
            if self.total - freed < limit:
                return max(second + WINDOW_S - now, 0.0)
        return float(WINDOW_S)

    def next_release_s(self, now: float) -> float:
        """Seconds until the oldest counted amount leaves the window (0 when empty)."""
        return max(self.buckets[0][0] + WINDOW_S - now, 0.0) if self.buckets else 0.0


# --- operations a store performs atomically ---------------------------------------------------

WINDOW, SLOT, QUEUE_SLOT, SPEND = "w", "c", "q", "s"


@dataclass(slots=True)
class Op:
    """One check (and, when every check passes, one update) of an admission.

    WINDOW: used < limit, then add `amount` at this second. SLOT: slots held < limit, then hold
    one as `member`. QUEUE_SLOT: like SLOT, but when it alone is full the request waits instead of
    being refused. SPEND: spent < limit (nothing added: spend is added at settlement).
    """

    kind: str
    key: str
    limit: float
    amount: int = 1
    member: str = ""


@dataclass(slots=True)
class OpResult:
    used: float  # before this request
    wait_s: float  # when refused: until there is room; else until the oldest entry leaves


@dataclass(slots=True)
class StoreAnswer:
    status: int  # ADMITTED, REFUSED or MUST_QUEUE
    index: int  # the refusing (or queueing) op; -1 when admitted
    results: list[OpResult]


ADMITTED, REFUSED, MUST_QUEUE = 0, 1, 2


class Store(Protocol):
    async def admit(self, ops: Sequence[Op], now: float) -> StoreAnswer: ...

    async def acquire(self, key: str, limit: int, member: str, now: float) -> bool: ...

    def settle(self, changes: Sequence[Settle], now: float) -> None: ...

    async def peek(self, ops: Sequence[Op], now: float) -> list[OpResult]: ...

    async def seed_spend(self, key: str, amount: float, ttl_s: float) -> None: ...


@dataclass(slots=True)
class Settle:
    """One update after the answer: a window correction, a slot released, spend added."""

    kind: str  # WINDOW (amount = delta, second = when reserved), SLOT (member released), SPEND
    key: str
    amount: float = 0
    second: int = 0
    member: str = ""
    ttl_s: float = 0


class LocalStore:
    """Counters of this process only (no Redis, or Redis away)."""

    def __init__(self) -> None:
        self.windows: dict[str, Window] = {}
        self.slots: dict[str, set[str]] = {}
        self.spend: dict[str, tuple[float, float]] = {}  # key -> (amount, expires at)
        self.on_release: Callable[[str], None] | None = None

    def _window(self, key: str, second: int) -> Window:
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = Window()
        window.advance(second)
        return window

    def _spent(self, key: str, now: float) -> float:
        entry = self.spend.get(key)
        if entry is None:
            return 0.0
        if entry[1] <= now:
            del self.spend[key]
            return 0.0
        return entry[0]

    def check(self, ops: Sequence[Op], now: float, apply: bool) -> StoreAnswer:
        second = int(now)
        results: list[OpResult] = []
        refused = queued = -1
        for index, op in enumerate(ops):
            if op.kind == WINDOW:
                window = self._window(op.key, second)
                limit = int(op.limit)
                used: float = window.total
                wait = window.wait_s(limit, now) if used >= limit else window.next_release_s(now)
            elif op.kind == SPEND:
                used, wait = self._spent(op.key, now), 0.0
            else:
                used, wait = len(self.slots.get(op.key, ())), 0.0
            results.append(OpResult(used, wait))
            if used >= op.limit:
                if op.kind == QUEUE_SLOT:
                    queued = index if queued < 0 else queued
                elif refused < 0:
                    refused = index
        if refused >= 0:
            return StoreAnswer(REFUSED, refused, results)
        if apply:
            for op in ops:
                if op.kind == WINDOW:
                    self.windows[op.key].add(second, op.amount)
                elif op.kind == SLOT or (op.kind == QUEUE_SLOT and queued < 0):
                    self.slots.setdefault(op.key, set()).add(op.member)
        return StoreAnswer(MUST_QUEUE if queued >= 0 else ADMITTED, queued, results)

    async def admit(self, ops: Sequence[Op], now: float) -> StoreAnswer:
        return self.check(ops, now, apply=True)

    async def peek(self, ops: Sequence[Op], now: float) -> list[OpResult]:
        return self.check(ops, now, apply=False).results

    def try_acquire(self, key: str, limit: int, member: str) -> bool:
        held = self.slots.setdefault(key, set())
        if len(held) >= limit:
            return False
        held.add(member)
        return True

    async def acquire(self, key: str, limit: int, member: str, now: float) -> bool:
        return self.try_acquire(key, limit, member)

    def settle(self, changes: Sequence[Settle], now: float) -> None:
        for change in changes:
            if change.kind == WINDOW:
                self.adjust_window(change.key, int(change.amount), change.second, now)
            elif change.kind == SPEND:
                self.add_spend(change.key, change.amount, change.ttl_s, now)
            else:
                self.release(change.key, change.member)

    # The three kinds of settlement, also called directly by Limiter.settle (no Settle objects in-process).

    def adjust_window(self, key: str, delta: int, second: int, now: float) -> None:
        window = self.windows.get(key)
        if window is not None:
            window.advance(int(now))
            window.adjust(second, delta, int(now))

    def add_spend(self, key: str, amount: float, ttl_s: float, now: float) -> None:
        self.spend[key] = (self._spent(key, now) + amount, now + ttl_s)

    def release(self, key: str, member: str) -> None:
        held = self.slots.get(key)
        if held is not None:
            held.discard(member)
            if not held:
                del self.slots[key]
        if self.on_release is not None:
            self.on_release(key)

    async def seed_spend(self, key: str, amount: float, ttl_s: float) -> None:
        now = time.time()
        if amount > self._spent(key, now):
            self.spend[key] = (amount, now + ttl_s)


# --- Redis ------------------------------------------------------------------------------------

# KEYS: one per op. ARGV: now (ms), apply (1/0), lease (ms), then one string of 4 words per op:
# kind, limit, amount, member ('-' for none). Returns one string: status, index (1-based, 0 = none),
# then used and wait_ms per op, separated by spaces (cheaper to read than nested arrays).
ADMIT_LUA = """
local now_ms = tonumber(ARGV[1])
local apply = ARGV[2] == '1'
local lease_ms = tonumber(ARGV[3])
local now_s = math.floor(now_ms / 1000)
local window_s = 60
local spec = {}
for word in string.gmatch(ARGV[4], '%S+') do spec[#spec + 1] = word end
local out = {0, 0}
local refused, queued = 0, 0
for i = 1, #KEYS do
  local kind, limit = spec[4 * i - 3], tonumber(spec[4 * i - 2])
  local key = KEYS[i]
  local used, wait_ms = 0, 0
  if kind == 'w' then
    local flat = redis.call('HGETALL', key)
    local seconds, amounts = {}, {}
    for j = 1, #flat, 2 do
      local s, a = tonumber(flat[j]), tonumber(flat[j + 1])
      if s <= now_s - window_s then
        redis.call('HDEL', key, flat[j])
      else
        used = used + a
        if amounts[s] == nil then seconds[#seconds + 1] = s; amounts[s] = 0 end
        amounts[s] = amounts[s] + a
      end
    end
    table.sort(seconds)
    if used >= limit then
      local freed = 0
      wait_ms = window_s * 1000
      for _, s in ipairs(seconds) do
        freed = freed + amounts[s]
        if used - freed < limit then wait_ms = (s + window_s) * 1000 - now_ms; break end
      end
    elseif #seconds > 0 then
      wait_ms = (seconds[1] + window_s) * 1000 - now_ms
    end
  elseif kind == 's' then
    used = tonumber(redis.call('GET', key) or '0')
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    used = redis.call('ZCARD', key)
  end
  if wait_ms < 0 then wait_ms = 0 end
  out[#out + 1] = tostring(used)
  out[#out + 1] = string.format('%d', wait_ms)
  if used >= limit then
    if kind == 'q' then
      if queued == 0 then queued = i end
    elseif refused == 0 then
      refused = i
    end
  end
end
if refused > 0 then
  out[1], out[2] = 1, refused
  return table.concat(out, ' ')
end
if apply then
  for i = 1, #KEYS do
    local kind, amount, member = spec[4 * i - 3], spec[4 * i - 1], spec[4 * i]
    if kind == 'w' then
      redis.call('HINCRBY', KEYS[i], now_s, amount)
      redis.call('EXPIRE', KEYS[i], window_s * 2)
    elseif kind == 'c' or (kind == 'q' and queued == 0) then
      redis.call('ZADD', KEYS[i], now_ms + lease_ms, member)
      redis.call('PEXPIRE', KEYS[i], lease_ms * 2)
    end
  end
end
if queued > 0 then out[1], out[2] = 2, queued end
return table.concat(out, ' ')
"""

# Settlements, many per call: KEYS one per change; ARGV: now (ms), then 3 words per change:
# 'w second delta' (a TPM reservation corrected), 'c member -' (a slot released),
# 's amount ttl_ms' (spend added). Returns how many changes were applied.
SETTLE_LUA = """
local now_s = math.floor(tonumber(ARGV[1]) / 1000)
local i = 0
for kind, a, b in string.gmatch(ARGV[2], '(%S+) (%S+) (%S+)') do
  i = i + 1
  local key = KEYS[i]
  if kind == 'w' then
    local second, delta = tonumber(a), tonumber(b)
    if now_s - second < 60 then
      if redis.call('HEXISTS', key, a) == 1 then redis.call('HINCRBY', key, a, delta) end
    elseif delta > 0 then
      redis.call('HINCRBY', key, now_s, delta)
      redis.call('EXPIRE', key, 120)
    end
  elseif kind == 'c' then
    redis.call('ZREM', key, a)
  else
    redis.call('INCRBYFLOAT', key, a)
    redis.call('PEXPIRE', key, b)
  end
end
return i
"""

# One slot for a queued request: KEYS[1] the slot set; ARGV: now (ms), limit, lease (ms), member.
ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
"""

# Spend seeded from the rollups: raise the counter to at least ARGV[1], keep it ARGV[2] ms.
SEED_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# Leases of this process's slots extended: KEYS the slot sets; ARGV: expiry (ms), key TTL (ms), members.
REFRESH_LUA = """
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', ARGV[1], ARGV[i + 2])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return #KEYS
"""


class _Script:
    """A Lua script called by EVALSHA (its sha computed here); loaded once per connection and after NOSCRIPT."""

    __slots__ = ("heads", "sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest().encode()
        self.heads: dict[tuple[int, int], bytes] = {}

    def head(self, keys: int, args: int) -> bytes:
        """The RESP bytes of `EVALSHA sha numkeys`, for a call with this many keys and args."""
        found = self.heads.get((keys, args))
        if found is None:
            count = str(keys).encode()
            found = self.heads[(keys, args)] = (
                b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + keys + args) + bulk(self.sha) + bulk(count)
            )
        return found


class RedisStore:
    """Counters shared by every process through Redis; a LocalStore while Redis is away.

    Admission is one EVALSHA of an atomic script (so N processes together admit exactly the
    limit). Settlements are queued and sent as one EVALSHA per event-loop turn, in the same write
    as that turn's admissions (or alone when there are none), never awaited by a request. Commands
    go through `RedisWire`, one pipelined connection with a minimal RESP codec (redis-py's command
    machinery cost ~10x more CPU than the script). Concurrency slots are leases that the holder
    extends every LEASE_REFRESH_S, so a process that dies frees its slots within LEASE_S.
    """

    def __init__(self, redis_url: str, prefix: str, local: LocalStore | None = None) -> None:
        self.prefix = prefix
        self.local = local or LocalStore()
        self.wire = RedisWire(redis_url, connect_timeout_s=1.0, reply_timeout_s=1.0)
        self._scripts = {name: _Script(text) for name, text in SCRIPTS.items()}
        self._admit_script = self._scripts["admit"]
        self._settle_script = self._scripts["settle"]
        self.degraded = False
        self._pending: list[Settle] = []
        self._settle_scheduled = False
        self._leases: dict[tuple[str, str], None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.on_release: Callable[[str], None] | None = None
        self._keys: dict[str, bytes] = {}  # op key -> its RESP bulk string with the prefix
        self._lease_ms = int(LEASE_S * 1000)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._refresh_leases_forever(), name="limits-leases")]
        try:
            await self._load_scripts()
        except Exception as exc:
            self._down(exc)

    async def stop(self) -> None:
        self._stopping = True
        if not self.degraded and self.wire.connected:
            self._send_pending()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.wire.call("PING"), 2.0)  # replies come in order: settled before
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.wire.close()

    async def _load_scripts(self) -> None:
        await self.wire.connect()
        for script in self._scripts.values():
            await self.wire.call("SCRIPT", "LOAD", script.text)

    # --- availability ---

    def _down(self, exc: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            log.warning(
                "Redis unavailable for limits (%s: %s): counting in this process only until it is back "
                "(each process then admits up to the full limit)",
                exc.__class__.__name__,
                exc,
            )
            if not self._stopping:
                self._tasks.append(asyncio.get_running_loop().create_task(self._probe_until_up(), name="limits-probe"))

    async def _probe_until_up(self) -> None:
        while self.degraded:
            await asyncio.sleep(REDIS_RETRY_S)
            try:
                await self._load_scripts()  # it may have restarted without them
            except Exception:
                continue
            self.degraded = False
            log.warning("Redis is reachable again: limits are shared across processes")

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """EVALSHA outside the request path (acquire, seed, refresh), loading the script on NOSCRIPT."""
        command = script.head(len(keys), len(args)) + b"".join(
            [self._key(k) for k in keys] + [bulk(str(a).encode()) for a in args]
        )
        reply = await self.wire.call_raw(command)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self.wire.call("SCRIPT", "LOAD", script.text)
            reply = await self.wire.call_raw(command)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def _key(self, key: str) -> bytes:
        found = self._keys.get(key)
        if found is None:
            if len(self._keys) >= 100_000:
                self._keys.clear()
            found = self._keys[key] = bulk(f"{self.prefix}:{key}".encode())
        return found

    # --- the request path ---

    def _admit_command(self, ops: Sequence[Op], now: float, apply: bool) -> bytes:
        key = self._key
        spec = " ".join([f"{op.kind} {op.limit} {op.amount} {op.member or '-'}" for op in ops]).encode()
        return b"".join(
            [
                self._admit_script.head(len(ops), 4),
                *[key(op.key) for op in ops],
                bulk(b"%d" % int(now * 1000)),
                b"$1\r\n1\r\n" if apply else b"$1\r\n0\r\n",
                bulk(b"%d" % self._lease_ms),
                bulk(spec),
            ]
        )

    async def _admit_call(self, ops: Sequence[Op], now: float, apply: bool) -> tuple[int, int, list[OpResult]]:
        wire = self.wire
        if not wire.connected:
            await wire.connect()
        if self._pending:  # settlements first, in the same write: slots freed before this admission
            self._send_pending()
        command = self._admit_command(ops, now, apply)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answered(reply: Any) -> None:
            if not future.done():
                if isinstance(reply, (ConnectionError, TimeoutError)):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
            elif apply and isinstance(reply, bytes):
                self._abandoned(ops, now, reply)

        wire.send(command, answered)
        reply = await future
        if isinstance(reply, ReplyError):
            if not str(reply).startswith("NOSCRIPT"):
                raise reply
            await wire.call("SCRIPT", "LOAD", self._admit_script.text)  # Redis restarted without it
            reply = await wire.call_raw(command)
            if isinstance(reply, ReplyError):
                raise reply
        words = reply.split()
        results = [OpResult(float(words[i]), int(words[i + 1]) / 1000.0) for i in range(2, len(words), 2)]
        return int(words[0]), int(words[1]) - 1, results

    def _abandoned(self, ops: Sequence[Op], now: float, reply: bytes) -> None:
        """An admission whose caller left (cancelled) before Redis answered: its slots are given back at once
        rather than after LEASE_S (its request and token counts stay, as a request cut off at 499 keeps them)."""
        words = reply.split()
        status = int(words[0])
        if status == REFUSED:
            return
        changes = [
            Settle(SLOT, op.key, member=op.member)
            for op in ops
            if op.kind == SLOT or (op.kind == QUEUE_SLOT and status == ADMITTED)
        ]
        if changes:
            self.settle(changes, now)

    async def admit(self, ops: Sequence[Op], now: float) -> StoreAnswer:
        if self.degraded:
            return await self.local.admit(ops, now)
        try:
            status, index, results = await self._admit_call(ops, now, apply=True)
        except (ConnectionError, TimeoutError, OSError, ReplyError) as exc:
            self._down(exc)
            return await self.local.admit(ops, now)
        if status != REFUSED:
            for op in ops:
                if op.kind == SLOT or (op.kind == QUEUE_SLOT and status == ADMITTED):
                    self._leases[(op.key, op.member)] = None
        return StoreAnswer(status, index, results)

    async def acquire(self, key: str, limit: int, member: str, now: float) -> bool:
        if self.degraded:
            return self.local.try_acquire(key, limit, member)
        try:
            got = await self._eval(self._scripts["acquire"], [key], [int(now * 1000), limit, self._lease_ms, member])
        except (ConnectionError, TimeoutError, OSError, ReplyError) as exc:
            self._down(exc)
            return self.local.try_acquire(key, limit, member)
        if got:
            self._leases[(key, member)] = None
        return bool(got)

    async def peek(self, ops: Sequence[Op], now: float) -> list[OpResult]:
        if self.degraded:
            return await self.local.peek(ops, now)
        try:
            return (await self._admit_call(ops, now, apply=False))[2]
        except (ConnectionError, TimeoutError, OSError, ReplyError) as exc:
            self._down(exc)
            return await self.local.peek(ops, now)

    def settle(self, changes: Sequence[Settle], now: float) -> None:
        for change in changes:
            if change.kind == SLOT:
                self._leases.pop((change.key, change.member), None)
        self._pending.extend(changes)
        if not self._settle_scheduled:
            self._settle_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_settlements)

    def _send_settlements(self) -> None:
        self._settle_scheduled = False
        if self._pending:
            self._send_pending()

    def _send_pending(self) -> None:
        """The queued settlements as one EVALSHA in this turn's write (or to the local store while degraded)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        if self.degraded or not self.wire.connected:
            if not self.degraded:
                self._down(ConnectionError("not connected to Redis"))
            self.local.settle(batch, time.time())  # slots taken in Redis expire by themselves (LEASE_S)
            return
        key = self._key
        words: list[str] = []
        for change in batch:
            if change.kind == WINDOW:
                words.append(f"w {change.second} {int(change.amount)}")
            elif change.kind == SPEND:
                words.append(f"s {change.amount!r} {max(int(change.ttl_s * 1000), 1)}")
            else:
                words.append(f"c {change.member} -")
        command = b"".join(
            [
                self._settle_script.head(len(batch), 2),
                *[key(change.key) for change in batch],
                bulk(b"%d" % int(time.time() * 1000)),
                bulk(" ".join(words).encode()),
            ]
        )
        self.wire.send(command, lambda reply: self._settled(batch, command, reply))

    def _settled(self, batch: list[Settle], command: bytes, reply: Any) -> None:
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT") and not self.degraded:
            asyncio.get_running_loop().create_task(self._settle_again(batch, command))
            return
        if isinstance(reply, BaseException):
            # Connection lost: slots expire by themselves (LEASE_S); corrections and spend are lost.
            log.warning("limits: %d settlements not applied in Redis (%s)", len(batch), reply)
            return
        if self.on_release is not None:
            for change in batch:
                if change.kind == SLOT:
                    self.on_release(change.key)

    async def _settle_again(self, batch: list[Settle], command: bytes) -> None:
        try:
            await self.wire.call("SCRIPT", "LOAD", self._settle_script.text)
            reply = await self.wire.call_raw(command)
        except (ConnectionError, TimeoutError, OSError, ReplyError) as exc:
            reply = exc
        self._settled(batch, command, reply)

    async def seed_spend(self, key: str, amount: float, ttl_s: float) -> None:
        await self.local.seed_spend(key, amount, ttl_s)
        if self.degraded:
            return
        try:
            await self._eval(self._scripts["seed"], [key], [repr(amount), int(ttl_s * 1000)])
        except (ConnectionError, TimeoutError, OSError, ReplyError) as exc:
            self._down(exc)

    # --- background ---

    async def _refresh_leases_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_REFRESH_S)
            if self.degraded or not self._leases:
                continue
            leases = list(self._leases)
            expires = int((time.time() + LEASE_S) * 1000)
            try:
                for start in range(0, len(leases), SETTLE_BATCH):
                    chunk = leases[start : start + SETTLE_BATCH]
                    await self._eval(
                        self._scripts["refresh"],
                        [key for key, _ in chunk],
                        [expires, self._lease_ms * 2, *[member for _, member in chunk]],
                    )
            except (ConnectionError, TimeoutError, OSError, ReplyError) as exc:
                self._down(exc)


SCRIPTS = {"admit": ADMIT_LUA, "settle": SETTLE_LUA, "acquire": ACQUIRE_LUA, "seed": SEED_LUA, "refresh": REFRESH_LUA}


# --- fair queues --------------------------------------------------------------------------------


class FairQueue:
    """Requests waiting for a backend slot, served round-robin across users.

    Each user has a FIFO of waiters; `pump` hands free slots to the head waiter of the next user
    in turn, so a user with 500 waiting requests and a user with 1 alternate.
    """

    def __init__(self, key: str, limit: int, store: Store, clock: Clock) -> None:
        self.key = key
        self.limit = limit
        self.store = store
        self.clock = clock
        self._users: OrderedDict[int, deque[asyncio.Future[bool]]] = OrderedDict()
        self.depth = 0
        self._pumping = False
        self._again = False

    def enqueue(self, user_id: int) -> asyncio.Future[bool]:
        if self.depth >= MAX_QUEUE_PER_BACKEND:
            raise OverflowError
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._users.setdefault(user_id, deque()).append(waiter)
        self.depth += 1
        return waiter

    def forget(self, user_id: int, waiter: asyncio.Future[bool]) -> None:
        waiters = self._users.get(user_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            self.depth -= 1
            if not waiters:
                del self._users[user_id]

    def _next(self) -> tuple[int, asyncio.Future[bool]] | None:
        while self._users:
            user_id, waiters = next(iter(self._users.items()))
            self._users.move_to_end(user_id)
            waiter = waiters[0]
            return user_id, waiter
        return None

    async def pump(self, member_of: Callable[[asyncio.Future[bool]], str]) -> None:
        """Give free slots to waiters in round-robin order until none is free."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                picked = self._next()
                if picked is None:
                    return
                user_id, waiter = picked
                if not await self.store.acquire(self.key, self.limit, member_of(waiter), self.clock()):
                    # Round-robin turns only advance on success: put this user back in front.
                    self._users.move_to_end(user_id, last=False)
                    if not self._again:
                        return
                    continue
                self.forget(user_id, waiter)
                if not waiter.done():
                    waiter.set_result(True)
        finally:
            self._pumping = False


# --- admission ----------------------------------------------------------------------------------


class ClientDisconnected(ApiError):
    """The client went away while its request waited in a queue (logged as 499)."""

    def __init__(self, message: str) -> None:
        super().__init__(499, message, "invalid_request_error", "client_disconnected")


class LimitExceeded(ApiError):
    """A refused request (429): what was exceeded and when to come back.

    An ApiError, so each protocol's adapter renders it in its own error shape; `headers` carry
    Retry-After and the user's rate-limit headers.
    """

    def __init__(
        self,
        kind: str,
        scope: str,
        message: str,
        retry_after_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        # OpenAI's error: type `requests` / `tokens` + code rate_limit_exceeded; budgets: insufficient_quota.
        if kind == "budget":
            type_, code = "insufficient_quota", "insufficient_quota"
        else:
            type_, code = ("tokens" if kind == "tokens" else "requests"), "rate_limit_exceeded"
        super().__init__(429, message, type_, code)
        self.kind = kind  # "requests", "tokens", "concurrency", "budget", "queue"
        self.scope = scope  # "user" or "backend"
        self.retry_after_s = retry_after_s
        self.admission: Admission | None = None  # the views for the rate-limit headers
        self.headers = {**(headers or {}), **retry_headers(retry_after_s)}
        if kind == "budget":
            # The official SDKs sleep whatever Retry-After says (the period's end: hours or days) unless told not to.
            self.headers["x-should-retry"] = "false"

    @property
    def openai_type(self) -> str:
        return self.type

    @property
    def openai_code(self) -> str:
        return self.code or ""


@dataclass(slots=True)
class WindowView:
    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Admission:
    """An admitted request: its headers' numbers and what to settle when it ends."""

    requests: WindowView | None = None
    tokens: WindowView | None = None
    reserved: int = 0
    token_keys: list[tuple[str, int]] = field(default_factory=list)  # (TPM key, second reserved at)
    slots: list[tuple[str, str]] = field(default_factory=list)  # (slot key, member)
    backend_keys: frozenset[str] = frozenset()  # the keys of the current backend (given back on failover)
    spend_key: str | None = None
    spend_ttl_s: float = 0.0
    settled: bool = False

    @property
    def limited(self) -> bool:
        return self.requests is not None or self.tokens is not None


NOT_LIMITED = Admission(settled=True)  # shared: nothing to settle, no headers


def duration_text(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `6s`, `1m30s`."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


# The whole-second reset texts (the usual case: an admitted request's window resets in 1-60 s).
_WHOLE_SECONDS = tuple(duration_text(s).encode() for s in range(WINDOW_S * 2 + 1))


def _duration_bytes(seconds: float) -> bytes:
    if seconds >= 1:
        whole = math.ceil(seconds)
        if whole < len(_WHOLE_SECONDS):
            return _WHOLE_SECONDS[whole]
    return duration_text(seconds).encode()


# (whole second, its RFC 3339 text), replaced as one tuple: one strftime per second.
_last_instant: list[tuple[int, bytes]] = [(-1, b"")]


def _instant_bytes(timestamp: float) -> bytes:
    """`timestamp` as RFC 3339 in UTC, whole seconds (as datetime.fromtimestamp(...).strftime would)."""
    second = math.floor(round(timestamp, 6))
    cached = _last_instant[0]
    if cached[0] != second:
        cached = _last_instant[0] = (
            second,
            datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode(),
        )
    return cached[1]


# Header names per style: (limit, remaining, reset) of requests, then of tokens.
_HEADER_NAMES = {
    "openai": (
        (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests"),
        (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens"),
    ),
    "anthropic": (
        (
            b"anthropic-ratelimit-requests-limit",
            b"anthropic-ratelimit-requests-remaining",
            b"anthropic-ratelimit-requests-reset",
        ),
        (
            b"anthropic-ratelimit-tokens-limit",
            b"anthropic-ratelimit-tokens-remaining",
            b"anthropic-ratelimit-tokens-reset",
        ),
    ),
}
_ALL_HEADER_NAMES = frozenset(name for style in _HEADER_NAMES.values() for names in style for name in names)


def limit_header_pairs(
    admission: Admission, style: str = "openai", now: float | None = None
) -> list[tuple[bytes, bytes]]:
    """The rate-limit headers of a user's RPM/TPM (only the limits the user has) as raw ASGI pairs.

    "openai": x-ratelimit-* with resets as durations (`20ms`, `6s`, `1m30s`); "anthropic":
    anthropic-ratelimit-* with resets as RFC 3339 times.
    """
    pairs: list[tuple[bytes, bytes]] = []
    anthropic = style == "anthropic"
    names = _HEADER_NAMES["anthropic" if anthropic else "openai"]
    if anthropic and now is None:
        now = time.time()
    for view, (limit, remaining, reset) in zip((admission.requests, admission.tokens), names, strict=True):
        if view is not None:
            if now is not None and anthropic:
                when = _instant_bytes(now + view.reset_s)
            else:
                when = _duration_bytes(view.reset_s)
            pairs += ((limit, b"%d" % view.limit), (remaining, b"%d" % view.remaining), (reset, when))
    return pairs


def openai_headers(admission: Admission) -> dict[str, str]:
    """x-ratelimit-* headers of a user's RPM/TPM (only the limits the user has)."""
    return {name.decode(): value.decode() for name, value in limit_header_pairs(admission)}


def anthropic_headers(admission: Admission, now: float) -> dict[str, str]:
    """anthropic-ratelimit-* headers (reset as an RFC 3339 time)."""
    return {name.decode(): value.decode() for name, value in limit_header_pairs(admission, "anthropic", now)}


def add_limit_headers(response: Any, admission: Admission, style: str) -> None:
    """Add a limited user's rate-limit headers to an answer (a Starlette response) as `headers.update` would,
    without its per-header encoding and search when the answer has none of these headers yet (the usual case)."""
    if not admission.limited:
        return
    raw = response.raw_headers
    pairs = limit_header_pairs(admission, style)
    for name, _ in raw:
        if name in _ALL_HEADER_NAMES:
            response.headers.update({name.decode(): value.decode() for name, value in pairs})
            return
    raw += pairs


def answer_headers(
    admission: Admission | None, error: Exception | None = None, style: str = "openai", now: float | None = None
) -> dict[str, str]:
    """The rate-limit headers of an answer to a limited user (`style` "anthropic" or "openai"), plus
    Retry-After when `error` is a refusal."""
    refusal = error if isinstance(error, LimitExceeded) else None
    views = refusal.admission if refusal is not None and refusal.admission is not None else admission
    headers: dict[str, str] = {}
    if views is not None and views.limited:
        if style == "anthropic":
            headers.update(anthropic_headers(views, time.time() if now is None else now))
        else:
            headers.update(openai_headers(views))
    if refusal is not None:
        headers.update(retry_headers(refusal.retry_after_s))
    return headers


def retry_headers(retry_after_s: float) -> dict[str, str]:
    """Retry-After in whole seconds (at least 1) and, for the OpenAI SDK, in milliseconds."""
    return {
        "retry-after": str(max(math.ceil(retry_after_s), 1)),
        "retry-after-ms": str(max(int(retry_after_s * 1000), 1)),
    }


class HasLimits(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def limits(self) -> Limits: ...


@dataclass(slots=True)
class _Plan:
    ops: list[Op]
    roles: list[tuple[str, str]]  # (scope, what) per op: ("user", "rpm"), ("backend", "slot"), ...
    views: tuple[tuple[int, bool], ...] = ()  # (index, is RPM) of the user's RPM / TPM ops: the headers


@dataclass(frozen=True, slots=True)
class _Skeleton:
    """The ops of a (user, backend) pair's admissions, built once per pair and limits; per request only
    the TPM ops get the request's tokens, the slot ops its member and the budget op the period's key."""

    ops: tuple[Op, ...]
    roles: list[tuple[str, str]]
    tpm: tuple[int, ...]
    slots: tuple[int, ...]
    budget: int  # index of the SPEND op, -1 if none
    views: tuple[tuple[int, bool], ...]
    backend_keys: frozenset[str]
    # For the in-process store (Limiter._admit_local), per op: kind, key, limit, counts the request's
    # tokens (a TPM window), and which header it feeds (1: the user's RPM, 2: the user's TPM, 0: none).
    local: tuple[tuple[str, str, float, bool, int], ...] = ()
    rpm_keys: tuple[str, ...] = ()
    tpm_keys: tuple[str, ...] = ()
    slot_keys: tuple[str, ...] = ()


class Limiter:
    """Decides admissions against a store; one per process (on the Runtime)."""

    def __init__(
        self,
        store: Store,
        default_max_tokens: int = 1024,
        queue_timeout_s: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.default_max_tokens = default_max_tokens
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        self.queues: dict[int, FairQueue] = {}
        self._members = itertools.count()
        self._node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._waiter_members: dict[asyncio.Future[bool], str] = {}
        self._poller: asyncio.Task[None] | None = None
        self._templates: dict[tuple[str, int, Limits], tuple[tuple[Op, str], ...]] = {}
        self._budgets: dict[tuple[int, BudgetPeriod, int], tuple[str, float]] = {}
        self._skeletons: dict[tuple[Any, Any], _Skeleton] = {}
        self._skeletons_by_identity: dict[tuple[int, int], tuple[Any, Any, Any, Any, _Skeleton]] = {}
        self.on_limit: Signal[[QuotaEvent]] = Signal()  # a user or backend reached a limit (quotaEvents)
        if isinstance(store, (LocalStore, RedisStore)):
            store.on_release = self._released
        if isinstance(store, RedisStore):
            store.local.on_release = self._released

    # --- keys ---

    @staticmethod
    def spend_key(user_id: int, period: BudgetPeriod, start: datetime) -> str:
        return f"lim:u:{user_id}:spend:{period.value}:{start:%Y%m%d}"

    def _templates_of(self, scope: str, subject: HasLimits) -> tuple[tuple[Op, str], ...]:
        """A subject's RPM/TPM/slot ops with their keys built once per (subject, limits), and their roles."""
        cache_key = (scope, subject.id, subject.limits)
        found = self._templates.get(cache_key)
        if found is not None:
            return found
        limits = subject.limits
        prefix = f"lim:{'u' if scope == 'user' else 'b'}:{subject.id}"
        items: list[tuple[Op, str]] = []
        if limits.rpm is not None:
            items.append((Op(WINDOW, f"{prefix}:rpm", limits.rpm), "rpm"))
        if limits.tpm is not None:
            items.append((Op(WINDOW, f"{prefix}:tpm", limits.tpm), "tpm"))
        if limits.max_concurrent is not None:
            items.append(
                (Op(SLOT if scope == "user" else QUEUE_SLOT, f"{prefix}:slots", limits.max_concurrent), "slot")
            )
        if len(self._templates) >= 10_000:
            self._templates.clear()
        templates = self._templates[cache_key] = tuple(items)
        return templates

    def _budget_of(self, user: HasLimits, now: float) -> tuple[str, float]:
        """(spend key, period end as a timestamp) of the user's current budget period."""
        period = user.limits.period
        cache_key = (user.id, period, int(now // 3600))
        found = self._budgets.get(cache_key)
        if found is None:
            start, end = period_bounds(period, now)
            if len(self._budgets) >= 10_000:
                self._budgets.clear()
            found = self._budgets[cache_key] = (self.spend_key(user.id, period, start), end.timestamp())
        return found

    def _skeleton(self, user: HasLimits | None, backend: HasLimits | None) -> _Skeleton:
        # Known by identity first: catalog entries are immutable and live until the next snapshot, and
        # hashing the Limits dataclasses of both is most of a look-up by value.
        user_limits = None if user is None else user.limits
        backend_limits = None if backend is None else backend.limits
        known = self._skeletons_by_identity.get((id(user), id(backend)))
        if (
            known is not None
            and known[0] is user
            and known[1] is user_limits
            and known[2] is backend
            and known[3] is backend_limits
        ):
            return known[4]
        skeleton = self._skeleton_by_value(user, backend)
        if len(self._skeletons_by_identity) >= 10_000:
            self._skeletons_by_identity.clear()
        self._skeletons_by_identity[(id(user), id(backend))] = (user, user_limits, backend, backend_limits, skeleton)
        return skeleton

    def _skeleton_by_value(self, user: HasLimits | None, backend: HasLimits | None) -> _Skeleton:
        limited_backend = backend if backend is not None and backend.limits else None
        cache_key = (
            None if user is None else (user.id, user.limits),
            None if limited_backend is None else (limited_backend.id, limited_backend.limits),
        )
        found = self._skeletons.get(cache_key)
        if found is not None:
            return found
        ops: list[Op] = []
        roles: list[tuple[str, str]] = []
        subjects: list[tuple[str, HasLimits]] = [] if user is None else [("user", user)]
        if limited_backend is not None:
            subjects.append(("backend", limited_backend))
        for scope, subject in subjects:
            for op, role in self._templates_of(scope, subject):
                ops.append(op)
                roles.append((scope, role))
            budget = subject.limits.budget_usd
            if scope == "user" and budget is not None:
                ops.append(Op(SPEND, "", budget))
                roles.append((scope, "budget"))
        indices = range(len(ops))
        skeleton = _Skeleton(
            ops=tuple(ops),
            roles=roles,
            tpm=tuple(i for i in indices if roles[i][1] == "tpm"),
            slots=tuple(i for i in indices if roles[i][1] == "slot"),
            budget=next((i for i in indices if roles[i][1] == "budget"), -1),
            views=tuple((i, roles[i][1] == "rpm") for i in indices if roles[i] in (("user", "rpm"), ("user", "tpm"))),
            backend_keys=frozenset(ops[i].key for i in indices if roles[i][0] == "backend" and roles[i][1] != "rpm"),
            local=tuple(
                (
                    op.kind,
                    op.key,
                    op.limit,
                    role[1] == "tpm",
                    {"rpm": 1, "tpm": 2}.get(role[1], 0) * (role[0] == "user"),
                )
                for op, role in zip(ops, roles, strict=True)
            ),
            rpm_keys=tuple(ops[i].key for i in indices if roles[i][1] == "rpm"),
            tpm_keys=tuple(ops[i].key for i in indices if roles[i][1] == "tpm"),
            slot_keys=tuple(ops[i].key for i in indices if roles[i][1] == "slot"),
        )
        if len(self._skeletons) >= 10_000:
            self._skeletons.clear()
        self._skeletons[cache_key] = skeleton
        return skeleton

    def _plan(
        self, user: HasLimits | None, backend: HasLimits | None, tokens: int, now: float, member: str
    ) -> tuple[_Plan, Admission]:
        """The ops of an admission: the user's and the backend's limits (user None: the backend's only)."""
        skeleton = self._skeleton(user, backend)
        ops = list(skeleton.ops)
        admission = Admission(backend_keys=skeleton.backend_keys)
        if skeleton.tpm:
            second = int(now)
            for i in skeleton.tpm:
                template = ops[i]
                ops[i] = Op(WINDOW, template.key, template.limit, tokens)
                admission.token_keys.append((template.key, second))
            admission.reserved = tokens
        for i in skeleton.slots:
            template = ops[i]
            ops[i] = Op(template.kind, template.key, template.limit, member=member)
            admission.slots.append((template.key, member))
        if skeleton.budget >= 0:
            assert user is not None
            admission.spend_key, end = self._budget_of(user, now)
            admission.spend_ttl_s = end - now + 86_400
            ops[skeleton.budget] = Op(SPEND, admission.spend_key, ops[skeleton.budget].limit)
        return _Plan(ops, skeleton.roles, skeleton.views), admission

    def estimate(self, payload: dict[str, Any], body_size: int) -> int:
        return estimate_tokens(payload, body_size, self.default_max_tokens)

    def needs_estimate(self, user: HasLimits, backend: HasLimits | None) -> bool:
        return user.limits.tpm is not None or (backend is not None and backend.limits.tpm is not None)

    # --- admit / settle ---

    async def admit(
        self,
        user: HasLimits,
        backend: HasLimits | None,
        tokens: int = 0,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
        previous: Admission | None = None,
    ) -> Admission:
        """Count the request or raise LimitExceeded; may wait in the backend's fair queue.

        `previous`: the admission of an earlier attempt of the same request (failover). The user
        was counted then; the earlier backend's slot and reservation are given back and only the
        new backend's limits are checked.
        """
        if previous is not None:
            return await self._admit_failover(previous, user, backend, tokens, disconnected)
        if not user.limits and (backend is None or not backend.limits):
            return NOT_LIMITED
        now = self.clock()
        if type(self.store) is LocalStore:  # most requests: admitted at once, without another coroutine
            admitted = self._admit_local(self.store, self._skeleton(user, backend), user, tokens, now)
            if admitted is not None:
                return admitted
        return await self._admit(user, backend, tokens, disconnected, now=now)

    async def _admit(
        self,
        user: HasLimits | None,
        backend: HasLimits | None,
        tokens: int,
        disconnected: Callable[[], Awaitable[Any]] | None,
        user_id: int = 0,
        now: float | None = None,
    ) -> Admission:
        """Count the request (user None: against the backend's limits only), refuse it or queue it.
        `now`: when the caller already tried `_admit_local` (the same instant, the same decision)."""
        if now is None:
            now = self.clock()
            if type(self.store) is LocalStore:
                admitted = self._admit_local(self.store, self._skeleton(user, backend), user, tokens, now)
                if admitted is not None:
                    return admitted
        member = f"{self._node}:{next(self._members)}"
        plan, admission = self._plan(user, backend, tokens, now, member)
        answer = await self.store.admit(plan.ops, now)
        self._fill_views(admission, plan, answer.results, counted=answer.status != REFUSED)
        if answer.status == REFUSED:
            admission.settled = True
            refusal = self._refusal(plan, answer, admission, user, backend)
            refusal.admission = admission
            if self.on_limit:
                subject = user if refusal.scope == "user" else backend
                limit = plan.ops[answer.index].limit
                self._limit_reached(refusal.kind, refusal.scope, subject, user, user_id, backend, limit, refusal)
            raise refusal
        if answer.status == MUST_QUEUE:
            assert backend is not None
            op = plan.ops[answer.index]
            if self.on_limit:
                self._limit_reached("concurrency", "backend", backend, user, user_id, backend, op.limit, None)
            try:
                await self._wait_for_slot(backend, op, user.id if user else user_id, member, disconnected)
            except BaseException as exc:
                self.settle(admission, 0, 0.0, failed=True, queued_out=op.key)
                if isinstance(exc, LimitExceeded) and self.on_limit:
                    self._limit_reached("queue", "backend", backend, user, user_id, backend, op.limit, exc)
                raise
        return admission

    def _admit_local(
        self, store: LocalStore, skeleton: _Skeleton, user: HasLimits | None, tokens: int, now: float
    ) -> Admission | None:
        """The in-process store's admission of a request every limit lets through at once, without building
        ops, results or plans; None when one refuses or queues it (then the general path decides, with the
        same `now`, what `store.check` would). What it counts and the views it gives are those of the
        general path."""
        second = int(now)
        windows, held = store.windows, store.slots
        spend_key, spend_end = "", 0.0
        requests = tokens_view = None
        for kind, key, limit, is_tpm, view in skeleton.local:
            if kind == WINDOW:
                window = windows.get(key)
                if window is None:
                    window = windows[key] = Window()
                buckets = window.buckets
                if buckets and buckets[0][0] <= second - WINDOW_S:  # Window.advance, without a call when current
                    window.advance(second)
                used = window.total
                if used >= limit:
                    return None
                if view:  # reset: Window.next_release_s, or a whole window when it is empty
                    reset = max(buckets[0][0] + WINDOW_S - now, 0.0) if buckets else 0.0
                    whole, reset = int(limit), reset or float(WINDOW_S)
                    shown = WindowView(whole, max(whole - (used + (tokens if is_tpm else 1)), 0), reset)
                    if view == 1:
                        requests = shown
                    else:
                        tokens_view = shown
            elif kind == SPEND:
                assert user is not None
                spend_key, spend_end = self._budget_of(user, now)
                if store._spent(spend_key, now) >= limit:
                    return None
            elif len(held.get(key, ())) >= limit:
                return None
        for key in skeleton.rpm_keys:
            windows[key].add(second, 1)
        for key in skeleton.tpm_keys:
            windows[key].add(second, tokens)
        member = ""
        if skeleton.slot_keys:
            member = f"{self._node}:{next(self._members)}"
            for key in skeleton.slot_keys:
                members = held.get(key)
                if members is None:
                    members = held[key] = set()
                members.add(member)
        return Admission(
            requests,
            tokens_view,
            tokens if skeleton.tpm_keys else 0,
            [(key, second) for key in skeleton.tpm_keys],
            [(key, member) for key in skeleton.slot_keys],
            skeleton.backend_keys,
            spend_key or None,
            spend_end - now + 86_400 if spend_key else 0.0,
        )

    def _limit_reached(
        self,
        kind: str,
        scope: str,
        subject: HasLimits | None,
        user: HasLimits | None,
        user_id: int,
        backend: HasLimits | None,
        limit: float,
        refusal: LimitExceeded | None,
    ) -> None:
        """Tell `on_limit` (quotaEvents) that `subject` reached a limit: a refusal, or a backend queueing a request."""
        if subject is None:
            return
        event = QuotaEvent(
            kind=EVENT_KINDS[kind],
            scope=scope,
            subject_id=subject.id,
            subject_name=subject.name,
            user_id=user.id if user is not None else (user_id or None),
            backend_id=backend.id if backend is not None else None,
            limit=limit,
            retry_after_s=refusal.retry_after_s if refusal is not None else 0.0,
            at=time.time(),
        )
        self.on_limit.emit(event)

    async def _admit_failover(
        self,
        previous: Admission,
        user: HasLimits,
        backend: HasLimits | None,
        tokens: int,
        disconnected: Callable[[], Awaitable[Any]] | None,
    ) -> Admission:
        merged = dataclasses.replace(previous, slots=list(previous.slots), token_keys=list(previous.token_keys))
        if previous.backend_keys and not previous.settled:
            gone = previous.backend_keys
            changes = [Settle(SLOT, k, member=m) for k, m in previous.slots if k in gone]
            changes += [Settle(WINDOW, k, -previous.reserved, s) for k, s in previous.token_keys if k in gone]
            self.store.settle(changes, self.clock())
            merged.slots = [(k, m) for k, m in previous.slots if k not in gone]
            merged.token_keys = [(k, s) for k, s in previous.token_keys if k not in gone]
            merged.backend_keys = frozenset()
        if previous is not NOT_LIMITED:
            previous.settled = True  # `merged` owns what is left
        merged.settled = not (merged.slots or merged.token_keys or merged.spend_key)
        if backend is None or not backend.limits:
            return merged
        extra = await self._admit(None, backend, tokens, disconnected, user_id=user.id)
        merged.slots += extra.slots
        merged.token_keys += extra.token_keys
        merged.reserved = tokens if extra.token_keys else merged.reserved
        merged.backend_keys = extra.backend_keys
        merged.settled = False
        return merged

    def _fill_views(self, admission: Admission, plan: _Plan, results: list[OpResult], counted: bool) -> None:
        for index, is_rpm in plan.views:
            op, result = plan.ops[index], results[index]
            used = result.used + (op.amount if counted else 0)
            limit = int(op.limit)
            reset = result.wait_s if result.wait_s > 0 or not counted else float(WINDOW_S)
            view = WindowView(limit, max(limit - int(used), 0), reset)
            if is_rpm:
                admission.requests = view
            else:
                admission.tokens = view

    def _refusal(
        self,
        plan: _Plan,
        answer: StoreAnswer,
        admission: Admission,
        user: HasLimits | None,
        backend: HasLimits | None,
    ) -> LimitExceeded:
        scope, what = plan.roles[answer.index]
        op, result = plan.ops[answer.index], answer.results[answer.index]
        headers = openai_headers(admission)
        subject = (
            f"user '{user.name if user else ''}'" if scope == "user" else f"backend '{backend.name if backend else ''}'"
        )
        if what == "budget" and user is not None:
            _, end = period_bounds(user.limits.period, self.clock())
            wait = max(end.timestamp() - self.clock(), 1.0)
            message = (
                f"You exceeded your budget of ${op.limit:g} for this {user.limits.period.value.lower()} "
                f"(spent ${result.used:.4f}); it renews at {end:%Y-%m-%dT%H:%M:%SZ}."
            )
            return LimitExceeded("budget", scope, message, wait, headers)
        if what == "slot":
            message = f"Rate limit reached for {subject}: {int(op.limit)} requests in flight at once."
            return LimitExceeded("concurrency", scope, message, 1.0, headers)
        unit = "requests" if what == "rpm" else "tokens"
        message = (
            f"Rate limit reached for {subject}: {int(op.limit)} {unit} per minute "
            f"(used {int(result.used)}). Please try again in {duration_text(result.wait_s)}."
        )
        return LimitExceeded(unit, scope, message, max(result.wait_s, 0.001), headers)

    async def _wait_for_slot(
        self,
        backend: HasLimits,
        op: Op,
        user_id: int,
        member: str,
        disconnected: Callable[[], Awaitable[Any]] | None,
    ) -> None:
        queue = self.queues.get(backend.id)
        if queue is None or queue.limit != int(op.limit):
            queue = self.queues[backend.id] = FairQueue(op.key, int(op.limit), self.store, self.clock)
        try:
            waiter = queue.enqueue(user_id)
        except OverflowError:
            raise LimitExceeded(
                "queue", "backend", f"Backend '{backend.name}' is at capacity and its queue is full.", 1.0
            ) from None
        self._waiter_members[waiter] = member
        self._ensure_poller()
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        acquired = False
        try:
            await queue.pump(self._member_of)
            waits: set[asyncio.Future[Any]] = {waiter} if watcher is None else {waiter, watcher}
            done, _ = await asyncio.wait(waits, timeout=self.queue_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                acquired = True
                return
            if watcher is not None and watcher in done:
                raise ClientDisconnected("client disconnected while queued")
            raise LimitExceeded(
                "queue",
                "backend",
                f"Backend '{backend.name}' stayed at its {int(op.limit)} concurrent requests for "
                f"{self.queue_timeout_s:g} s (QUEUE_TIMEOUT_S).",
                1.0,
            )
        finally:
            queue.forget(user_id, waiter)
            self._waiter_members.pop(waiter, None)
            if watcher is not None:
                watcher.cancel()
            if not acquired and waiter.done() and not waiter.cancelled():
                # Handed a slot just as it gave up: give the slot back.
                self.store.settle([Settle(SLOT, op.key, member=member)], self.clock())

    def _member_of(self, waiter: asyncio.Future[bool]) -> str:
        return self._waiter_members.get(waiter, f"{self._node}:orphan")

    def _released(self, key: str) -> None:
        if not self.queues:
            return
        for queue in self.queues.values():
            if queue.key == key and queue.depth:
                asyncio.get_running_loop().create_task(queue.pump(self._member_of))

    def _ensure_poller(self) -> None:
        """With Redis, slots freed by other processes are noticed by polling while requests wait."""
        if isinstance(self.store, RedisStore) and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll_queues(), name="limits-queues")

    async def _poll_queues(self) -> None:
        while any(q.depth for q in self.queues.values()):
            await asyncio.sleep(QUEUE_POLL_S)
            for queue in list(self.queues.values()):
                if queue.depth:
                    await queue.pump(self._member_of)

    def settle(
        self,
        admission: Admission,
        total_tokens: int,
        cost_usd: float | None,
        failed: bool = False,
        queued_out: str | None = None,
    ) -> None:
        """The request is over: true up reserved tokens, free its slots, add its cost. Never waits.

        `total_tokens` 0 with `failed` (no answer from upstream) gives the reservation back; 0
        without it (usage unknown, e.g. a stream cut off) keeps the reservation.
        """
        if admission.settled:
            return
        admission.settled = True
        store = self.store
        if type(store) is LocalStore:  # the same settlements, applied at once (no Settle objects)
            now = 0.0
            if admission.token_keys and (total_tokens > 0 or failed):
                delta = total_tokens - admission.reserved
                if delta:
                    now = self.clock()
                    for key, second in admission.token_keys:
                        store.adjust_window(key, delta, second, now)
            for key, member in admission.slots:
                if key != queued_out:
                    store.release(key, member)
            if admission.spend_key is not None and cost_usd:
                store.add_spend(admission.spend_key, cost_usd, admission.spend_ttl_s, now or self.clock())
            return
        changes: list[Settle] = []
        if admission.token_keys and (total_tokens > 0 or failed):
            delta = total_tokens - admission.reserved
            if delta:
                changes += [Settle(WINDOW, key, delta, second) for key, second in admission.token_keys]
        for key, member in admission.slots:
            if key != queued_out:
                changes.append(Settle(SLOT, key, member=member))
        if admission.spend_key is not None and cost_usd:
            changes.append(Settle(SPEND, admission.spend_key, cost_usd, ttl_s=admission.spend_ttl_s))
        if changes:
            self.store.settle(changes, self.clock())

    # --- state for the admin API ---

    async def quota(self, subject: HasLimits, scope: str) -> QuotaView:
        """Requests and tokens in the last minute, slots held, spend this period (from the store)."""
        return (await self.quotas([(subject, scope)]))[0]

    async def quotas(self, subjects: Sequence[tuple[HasLimits, str]]) -> list[QuotaView]:
        """`quota` of many users ("user") and backends ("backend") with one store look-up per 500."""
        now = self.clock()
        views: list[QuotaView] = []
        for first in range(0, len(subjects), 500):
            chunk = subjects[first : first + 500]
            ops: list[Op] = []
            for subject, scope in chunk:
                prefix = f"lim:{'u' if scope == 'user' else 'b'}:{subject.id}"
                ops += [Op(WINDOW, f"{prefix}:rpm", 1), Op(WINDOW, f"{prefix}:tpm", 1), Op(SLOT, f"{prefix}:slots", 1)]
                if scope == "user":
                    begin, _ = period_bounds(subject.limits.period, now)
                    ops.append(Op(SPEND, self.spend_key(subject.id, subject.limits.period, begin), 1))
            results = iter(await self.store.peek(ops, now))
            for subject, scope in chunk:
                requests, tokens, slots = next(results), next(results), next(results)
                start: datetime | None = None
                end: datetime | None = None
                spent = 0.0
                if scope == "user":
                    start, end = period_bounds(subject.limits.period, now)
                    spent = next(results).used
                queue = self.queues.get(subject.id) if scope == "backend" else None
                views.append(
                    QuotaView(
                        requests=int(requests.used),
                        tokens=int(tokens.used),
                        in_flight=int(slots.used),
                        spent_usd=spent,
                        period_start=start,
                        period_end=end,
                        queued=queue.depth if queue is not None else 0,
                    )
                )
        return views

    async def seed_budgets(
        self,
        users: Iterable[HasLimits],
        spent: Callable[[Collection[int], datetime, datetime], Awaitable[dict[int, float]]],
    ) -> None:
        """Raise each budgeted user's spend counter to what the rollups say it spent this period.

        `spent(user_ids, start, end)` is asked once per distinct period, for all its users at once.
        """
        now = self.clock()
        periods: dict[tuple[BudgetPeriod, datetime, datetime], list[int]] = {}
        for user in users:
            if user.limits.budget_usd is not None:
                start, end = period_bounds(user.limits.period, now)
                periods.setdefault((user.limits.period, start, end), []).append(user.id)
        for (period, start, end), user_ids in periods.items():
            amounts = await spent(user_ids, start, end)
            ttl = end.timestamp() - now + 86_400
            for user_id in user_ids:
                await self.store.seed_spend(self.spend_key(user_id, period, start), amounts.get(user_id, 0.0), ttl)


@dataclass(slots=True)
class QuotaView:
    requests: int
    tokens: int
    in_flight: int
    spent_usd: float
    period_start: datetime | None
    period_end: datetime | None
    queued: int = 0


def make_store(redis_url: str | None, prefix: str) -> LocalStore | RedisStore:
    return RedisStore(redis_url, prefix) if redis_url else LocalStore()
