"""The hourly rollups against the request log they summarise: `usage` read from whole hours of rollups
plus the log at the edges must equal `usage` read from the log alone, and spend comes from them."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import pytest

from router import analytics_queries as aq
from router.config import Settings, sqlite_url
from router.db import close_db, init_db
from router.usage import RequestRecord, insert_log_rows
from tests.conftest import create_pg_database, drop_pg_database, require_postgres

T0 = datetime(2026, 3, 9, 22, 17, 5, tzinfo=UTC)


def records(count: int, seed: int = 7) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        r = RequestRecord(f"r{i}", "/v1/chat/completions")
        r.user_id = rng.choice([1, 2, None])
        r.user_name = {1: "ann", 2: "ben", None: None}[r.user_id]
        r.backend_id = rng.choice([1, 2])
        r.backend_name = f"b{r.backend_id}"
        r.model = rng.choice(["m1", "m2", None])
        r.status_code = rng.choice([200, 200, 200, 429, 502])
        r.prompt_tokens, r.completion_tokens = rng.randint(0, 100), rng.randint(0, 50)
        r.total_tokens = r.prompt_tokens + r.completion_tokens
        r.cached_tokens, r.reasoning_tokens = rng.randint(0, 10), rng.randint(0, 5)
        r.cost_usd = rng.choice([None, 0.001 * i])
        r.latency_ms = rng.uniform(1, 100)
        r.id = i + 1
        r.created_at = T0 + timedelta(minutes=rng.randint(0, 60 * 50))
        out.append(r)
    return out


@pytest.fixture(params=["sqlite", "postgres"])
async def analytics_db(request, tmp_path):
    created = []
    if request.param == "postgres":
        server = require_postgres()
        core, analytics = create_pg_database(server), create_pg_database(server)
        created = [core, analytics]
    else:
        core, analytics = sqlite_url(str(tmp_path / "core.db")), sqlite_url(str(tmp_path / "analytics.db"))
    await init_db(Settings(core_db_url=core, analytics_db_url=analytics))
    yield
    await close_db()
    for url in created:
        drop_pg_database(os.environ["TEST_POSTGRES_URL"], url)


async def log_only(flt: aq.LogFilter, group_by, bucket) -> list[aq.UsageRow]:
    return aq._merged(await aq._usage_rows(aq.TABLE, flt, group_by, bucket))


def rounded(rows: list[aq.UsageRow]) -> list[tuple]:
    return [
        (
            r.bucket_start,
            r.user_id,
            r.user_name,
            r.backend_id,
            r.model,
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
            r.cached_tokens,
            r.reasoning_tokens,
            round(r.cost_usd, 9),
            round(r.avg_latency_ms or 0, 6),
        )
        for r in rows
    ]


async def test_usage_from_rollups_equals_usage_from_the_log(analytics_db):
    batch = records(400)
    for start in range(0, len(batch), 37):  # several batches: the same hour is upserted many times
        await insert_log_rows(batch[start : start + 37])
    filters = [
        aq.LogFilter(),
        aq.LogFilter(since=T0 + timedelta(minutes=13), until=T0 + timedelta(hours=30, minutes=7)),
        aq.LogFilter(since=T0 + timedelta(hours=2), user_id=1),
        aq.LogFilter(until=T0 + timedelta(hours=5, minutes=59), model="m2", backend_id=2),
        aq.LogFilter(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=40)),  # inside one hour
    ]
    for flt in filters:
        for group_by in ((), ("user",), ("backend", "model"), ("user", "backend", "model")):
            for bucket in (None, "hour", "day"):
                hybrid = await aq.usage(flt, group_by, bucket)
                assert rounded(hybrid) == rounded(await log_only(flt, group_by, bucket)), (flt, group_by, bucket)
    assert sum(r.requests for r in await aq.usage(aq.LogFilter())) == 400


async def test_spent_comes_from_the_rollups(analytics_db):
    batch = records(200, seed=3)
    await insert_log_rows(batch)
    since, until = datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)
    expected = sum(r.cost_usd or 0 for r in batch if r.user_id == 1 and since <= r.created_at < until)
    assert await aq.spent_usd(1, since, until) == pytest.approx(expected)
    assert await aq.spent_usd(99, since, until) == 0
