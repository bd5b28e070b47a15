"""The limits' minimal Redis client: RESP parsing (whole and in pieces), pipelining, and the RedisStore
built on it admitting exactly the limit across two stores (as two processes would)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from router.limits import QUEUE_SLOT, SLOT, WINDOW, Op, RedisStore, Settle
from router.redis_wire import RedisWire, ReplyError, encode, parse
from tests.conftest import require_redis


def test_encode_and_parse_every_reply_kind() -> None:
    assert encode("GET", "k", 5) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n5\r\n"
    replies = b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n-ERR nope\r\n"
    values, pos = [], 0
    while pos < len(replies):
        value, pos = parse(replies, pos)
        values.append(value)
    assert values[:5] == ["OK", 42, b"hello", None, [1, [b"x"]]]
    assert isinstance(values[5], ReplyError) and str(values[5]) == "ERR nope"


@pytest.mark.parametrize("cut", range(1, 20))
def test_replies_split_anywhere_are_read_whole(cut: int) -> None:
    wire = RedisWire("redis://127.0.0.1:1/0")
    got: list[object] = []
    wire._waiters.extend([got.append, got.append, got.append])
    data = b"$5\r\nhello\r\n*2\r\n:1\r\n$2\r\nab\r\n:7\r\n"
    wire._received(data[:cut])
    wire._received(data[cut:])
    assert got == [b"hello", [1, b"ab"], 7]


def test_url_forms() -> None:
    wire = RedisWire("redis://user:p%40ss@example:6380/9")
    assert (wire.host, wire.port, wire.username, wire.password, wire.db) == ("example", 6380, "user", "p@ss", 9)
    assert RedisWire("unix:///tmp/redis.sock?db=3").db == 3
    assert RedisWire("rediss://h").ssl


async def test_pipelined_calls_and_unreachable_redis() -> None:
    wire = RedisWire(require_redis())
    key = f"test-wire-{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(*(wire.call("INCR", key) for _ in range(50)))
        assert sorted(replies) == list(range(1, 51))
        with pytest.raises(ReplyError):
            await wire.call("NOSUCHCOMMAND")
        assert await wire.call("DEL", key) == 1
    finally:
        wire.close()
    with pytest.raises((ConnectionError, OSError, TimeoutError)):
        await RedisWire("redis://127.0.0.1:1/0", connect_timeout_s=0.5).call("PING")


async def test_two_stores_admit_exactly_the_limit_and_settle_frees_slots() -> None:
    url, prefix = require_redis(), f"test-{uuid.uuid4().hex[:12]}"
    a, b = RedisStore(url, prefix), RedisStore(url, prefix)
    await a.start()
    await b.start()
    try:
        ops = [Op(WINDOW, "lim:u:1:rpm", 7)]
        answers = await asyncio.gather(*(store.admit(ops, 1000.5) for store in (a, b) * 20))
        assert sum(answer.status == 0 for answer in answers) == 7
        refused = [answer for answer in answers if answer.status == 1]
        assert refused[0].results[0].used == 7 and 59 < refused[0].results[0].wait_s <= 60

        slot = [Op(SLOT, "lim:u:1:slots", 1, member="m1")]
        assert (await a.admit(slot, 1001.0)).status == 0
        assert (await b.admit([Op(SLOT, "lim:u:1:slots", 1, member="m2")], 1001.0)).status == 1
        released = asyncio.Event()
        a.on_release = lambda key: released.set()
        a.settle([Settle(SLOT, "lim:u:1:slots", member="m1")], 1001.0)
        await asyncio.wait_for(released.wait(), 5)
        assert (await b.admit([Op(QUEUE_SLOT, "lim:b:1:slots", 1, member="m2")], 1001.0)).status == 0
        assert a.degraded is False and b.degraded is False
    finally:
        await a.stop()
        await b.stop()


async def test_an_admission_abandoned_before_redis_answers_gives_its_slot_back() -> None:
    url, prefix = require_redis(), f"test-{uuid.uuid4().hex[:12]}"
    store = RedisStore(url, prefix)
    await store.start()
    try:
        released = asyncio.Event()
        store.on_release = lambda key: released.set()
        waiting = asyncio.create_task(store.admit([Op(SLOT, "lim:u:1:slots", 1, member="gone")], 1000.0))
        await asyncio.sleep(0)  # the command is queued for this turn's write...
        waiting.cancel()  # ...and its caller leaves before the answer
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(released.wait(), 5)
        assert (await store.admit([Op(SLOT, "lim:u:1:slots", 1, member="next")], 1000.0)).status == 0
    finally:
        await store.stop()
