"""The hourly and daily rollups against the request log they summarise: `usage` read in pieces (daily
rollups for whole days, hourly ones at the day edges, the log at the hour edges) must equal sums
computed in Python from the raw rows, whatever the range, grouping and bucket; spend comes from
the rollups; a database upgraded from before the daily level gets it backfilled."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from router import analytics_queries as aq
from router.config import Settings, sqlite_url
from router.db import close_db, init_db
from router.usage import RequestRecord, insert_log_rows
from tests.conftest import (
    create_pg_database,
    drop_pg_database,
    require_postgres,
    seed_databases,
    skip_unless_process_dialect,
)

T0 = datetime(2026, 3, 9, 22, 17, 5, tzinfo=UTC)
SPAN = timedelta(days=4, hours=3)
NAMES = {1: "ann", 2: "ben", 3: "cy", None: None}


def records(count: int, seed: int = 7, start: datetime = T0) -> list[RequestRecord]:
    """Random rows over SPAN from `start`, some exactly on hour and day boundaries."""
    rng = random.Random(seed)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    for i in range(count):
        r = RequestRecord(f"r{i}", "/v1/chat/completions")
        r.user_id = rng.choice([1, 2, 3, None])
        r.user_name = NAMES[r.user_id]
        r.backend_id = rng.choice([1, 2, None])
        r.backend_name = f"b{r.backend_id}" if r.backend_id else None
        r.model = rng.choice(["m1", "m2", "m3", None])
        r.status_code = rng.choice([200, 200, 200, 429, 502])
        r.error = "broken stream" if r.status_code == 200 and rng.random() < 0.05 else None
        r.prompt_tokens, r.completion_tokens = rng.randint(0, 100), rng.randint(0, 50)
        r.total_tokens = r.prompt_tokens + r.completion_tokens
        r.cached_tokens, r.reasoning_tokens = rng.randint(0, 10), rng.randint(0, 5)
        r.cost_usd = rng.choice([None, round(rng.uniform(0, 0.01), 6)])
        r.latency_ms = round(rng.uniform(1, 100), 3)
        r.id = i + 1
        if rng.random() < 0.1:  # on a boundary
            r.created_at = midnight + timedelta(hours=rng.randint(1, 24 * 4))
        else:
            r.created_at = start + timedelta(seconds=rng.uniform(0, SPAN.total_seconds()))
        out.append(r)
    return out


async def write(batch: list[RequestRecord], size: int = 37) -> None:
    for start in range(0, len(batch), size):  # several batches: the same hour and day are upserted many times
        await insert_log_rows(batch[start : start + size])


def database_pair(dialect: str, tmp_path: Path, migrated: bool) -> Iterator[tuple[str, str]]:
    """(core, analytics) URLs of two new databases, SQLite files or PostgreSQL databases: empty, or
    `migrated` (copies of what the migrations make, as a new test router gets)."""
    skip_unless_process_dialect(dialect)  # the tests open them with Tortoise in this process
    if dialect == "sqlite":
        urls = sqlite_url(str(tmp_path / "core.db")), sqlite_url(str(tmp_path / "analytics.db"))
        if migrated:
            seed_databases({"CORE_DB_URL": urls[0], "ANALYTICS_DB_URL": urls[1]})
        yield urls
        return
    server = require_postgres()
    apps = ("core", "analytics") if migrated else (None, None)
    urls = create_pg_database(server, apps[0]), create_pg_database(server, apps[1])
    yield urls
    for url in urls:
        drop_pg_database(server, url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_urls(request, tmp_path) -> Iterator[tuple[str, str]]:
    """Two empty databases."""
    yield from database_pair(request.param, tmp_path, migrated=False)


@pytest.fixture(params=["sqlite", "postgres"])
def migrated_db_urls(request, tmp_path) -> Iterator[tuple[str, str]]:
    yield from database_pair(request.param, tmp_path, migrated=True)


@pytest.fixture
async def analytics_db(migrated_db_urls) -> Any:
    await init_db(Settings(core_db_url=migrated_db_urls[0], analytics_db_url=migrated_db_urls[1]))
    yield
    await close_db()


# --- the oracle: sums in Python over the raw rows ------------------------------------------------


def truncate(value: datetime, bucket: str | None) -> datetime | None:
    if bucket is None:
        return None
    value = value.astimezone(UTC).replace(second=0, microsecond=0)
    if bucket in ("hour", "day"):
        value = value.replace(minute=0)
    return value.replace(hour=0) if bucket == "day" else value


def expected(rows: list[RequestRecord], flt: aq.LogFilter, group_by, bucket) -> list[tuple]:
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        assert r.created_at is not None
        if not (flt.since or r.created_at) <= r.created_at < (flt.until or r.created_at + timedelta(1)):
            continue
        if any(want is not None and want != have for want, have in zip(who(flt), who(r), strict=True)):
            continue
        user, backend, model = (v if k in group_by else None for k, v in zip(aq.GROUP_KEYS, who(r), strict=True))
        g = groups.setdefault(
            (truncate(r.created_at, bucket), user, backend, model),
            {"names": (set(), set()), "sums": [0] * 7 + [0.0, 0.0]},
        )
        if user is not None:
            g["names"][0].add(r.user_name)
        if backend is not None:
            g["names"][1].add(r.backend_name)
        error = r.status_code >= 400 or r.error is not None
        for i, value in enumerate(
            (1, error, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens, r.reasoning_tokens)
        ):
            g["sums"][i] += int(value)
        g["sums"][7] += r.cost_usd or 0.0
        g["sums"][8] += r.latency_ms
    out = []
    for (start, user, backend, model), g in groups.items():
        s = g["sums"]
        names = [max(filter(None, n), default=None) for n in g["names"]]
        out.append((start, user, names[0], backend, names[1], model, *s[:7], s[7], s[8] / s[0]))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return sorted(out, key=lambda t: (t[0] or epoch, -t[6], t[1] or 0, t[3] or 0, t[5] or ""))


def who(item: aq.LogFilter | RequestRecord) -> tuple[int | None, int | None, str | None]:
    return item.user_id, item.backend_id, item.model


def rounded(rows: list[aq.UsageRow]) -> list[tuple]:
    return [
        (
            r.bucket_start,
            r.user_id,
            r.user_name,
            r.backend_id,
            r.backend_name,
            r.model,
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
            r.cached_tokens,
            r.reasoning_tokens,
            r.cost_usd,
            r.avg_latency_ms,
        )
        for r in rows
    ]


def same(got: list[tuple], want: list[tuple]) -> bool:
    """Equal rows: keys and counts exactly, cost and mean latency up to float rounding (sums in another order)."""
    return len(got) == len(want) and all(
        g[:-2] == w[:-2] and g[-2:] == pytest.approx(w[-2:], rel=1e-9, abs=1e-12)
        for g, w in zip(got, want, strict=True)
    )


GROUPINGS = ((), ("user",), ("model",), ("backend", "model"), ("user", "backend", "model"))


def filters(seed: int) -> Iterator[aq.LogFilter]:
    """Fixed ranges that cross or sit on hour and day edges, then random ones."""
    day1 = T0.replace(hour=0, minute=0, second=0) + timedelta(days=1)
    yield aq.LogFilter()
    yield aq.LogFilter(since=T0 + timedelta(minutes=13), until=T0 + timedelta(days=2, hours=30, minutes=7))
    yield aq.LogFilter(since=day1, until=day1 + timedelta(days=2))  # whole days only
    yield aq.LogFilter(since=day1 - timedelta(hours=3), until=day1 + timedelta(days=1, hours=5))  # whole hours
    yield aq.LogFilter(since=day1 + timedelta(hours=2, seconds=1), user_id=1)
    yield aq.LogFilter(until=day1 + timedelta(days=1, hours=5, minutes=59), model="m2", backend_id=2)
    yield aq.LogFilter(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=40))  # inside one hour
    yield aq.LogFilter(since=day1 + timedelta(hours=1, minutes=1), until=day1 + timedelta(hours=3))  # inside a day
    yield aq.LogFilter(
        since=day1 - timedelta(hours=20, minutes=1), until=day1 + timedelta(days=1, hours=19)
    )  # minus hours
    rng = random.Random(seed)
    for _ in range(6):
        a, b = sorted(rng.uniform(-3600, SPAN.total_seconds() + 3600) for _ in range(2))
        yield aq.LogFilter(
            since=T0 + timedelta(seconds=round(a)) if rng.random() < 0.9 else None,
            until=T0 + timedelta(seconds=round(b)) if rng.random() < 0.8 else None,
            user_id=rng.choice([None, None, 1, 3]),
            backend_id=rng.choice([None, None, 2]),
        )


async def test_usage_equals_sums_of_the_raw_rows(analytics_db):
    batch = records(700)
    await write(batch)
    for flt in filters(seed=11):
        for group_by in GROUPINGS:
            for bucket in (None, "hour", "day"):
                got = rounded(await aq.usage(flt, group_by, bucket))
                assert same(got, expected(batch, flt, group_by, bucket)), (flt, group_by, bucket)
    for flt in (aq.LogFilter(), aq.LogFilter(since=T0 + timedelta(minutes=1), until=T0 + timedelta(hours=3))):
        got = rounded(await aq.usage(flt, ("user",), "minute"))  # minute buckets: from the log alone
        assert same(got, expected(batch, flt, ("user",), "minute"))
    assert sum(r.requests for r in await aq.usage(aq.LogFilter())) == 700


async def test_every_row_is_stored_as_recorded_whatever_the_batch_size(analytics_db):
    from router.models.analytics import RequestLog
    from router.usage import LOG_COLUMNS

    batch = records(1 + 63 + 64 + 65 + 200, seed=3)
    for i, r in enumerate(batch):
        r.attempt_errors = [f"attempt {i}: refused"] if i % 7 == 0 else None
        r.ttft_ms, r.stream, r.translated_to = (12.5, True, "/v1/messages") if i % 3 == 0 else (None, False, None)
    at = 0
    for size in (1, 63, 64, 65, 200):  # SQLite's rows go in 64 a statement, the rest one a statement
        await insert_log_rows(batch[at : at + size])
        at += size
    stored = await RequestLog.all().order_by("id").values_list(*LOG_COLUMNS)
    assert [tuple(row) for row in stored] == [r.as_tuple() for r in batch]


async def test_status_and_error_filters_read_the_log(analytics_db):
    batch = records(300, seed=5)
    await write(batch)
    rows = await aq.usage(aq.LogFilter(errors_only=True), ("backend",))
    assert sum(r.requests for r in rows) == sum(1 for r in batch if r.status_code >= 400 or r.error is not None)
    rows = await aq.usage(aq.LogFilter(status_code=429, since=T0 + timedelta(days=1)), (), "day")
    assert sum(r.requests for r in rows) == sum(
        1 for r in batch if r.status_code == 429 and r.created_at and r.created_at >= T0 + timedelta(days=1)
    )


def test_pieces_use_the_coarsest_level_that_fits():
    since, until = datetime(2026, 3, 1, 14, 37, 12, tzinfo=UTC), datetime(2026, 3, 31, 9, 5, tzinfo=UTC)
    later = datetime(2026, 5, 1, tzinfo=UTC)

    def pieces(flt: aq.LogFilter, bucket: str | None = None, now: datetime = later) -> list[tuple]:
        return sorted((p.table, p.sign, p.flt.since, p.flt.until) for p in aq._pieces(flt, bucket, now))

    hour, day = timedelta(hours=1), timedelta(days=1)
    first_hour, first_day = datetime(2026, 3, 1, 15, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    last_hour, last_day = datetime(2026, 3, 31, 9, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC)
    assert pieces(aq.LogFilter(since=since, until=until)) == sorted(
        [
            (aq.TABLE, 1, since, first_hour),
            (aq.TABLE, 1, last_hour, until),
            (aq.ROLLUPS, 1, first_hour, first_day),  # 9 hours in, 15 out: the 9 added
            (aq.ROLLUPS, 1, last_day, last_hour),
            (aq.DAILY_ROLLUPS, 1, first_day, last_day),
        ]
    )
    # 20 hours of the first and last days inside: each whole day, minus its 4 hours outside.
    since, until = datetime(2026, 3, 1, 3, 30, tzinfo=UTC), datetime(2026, 3, 31, 20, 5, tzinfo=UTC)
    assert pieces(aq.LogFilter(since=since, until=until)) == sorted(
        [
            (aq.TABLE, 1, since, since.replace(minute=0) + hour),
            (aq.TABLE, 1, until.replace(minute=0), until),
            (aq.ROLLUPS, -1, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, 4, tzinfo=UTC)),
            (aq.ROLLUPS, -1, datetime(2026, 3, 31, 20, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
            (aq.DAILY_ROLLUPS, 1, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
        ]
    )
    # Ending now, early in the day: today's hours so far are fewer than the rest of it, but the rest
    # holds no rows yet, so today is read whole from the daily rollups minus (empty) later hours.
    now = datetime(2026, 3, 31, 2, 10, tzinfo=UTC)
    assert (aq.ROLLUPS, -1, now.replace(minute=0), day + last_day) in pieces(
        aq.LogFilter(since=since, until=now), None, now
    )
    # Budget periods (whole days, an open or a future end): the daily rollups alone, never the log.
    month = aq.LogFilter(user_id=3, since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC))
    assert [p.table for p in aq._pieces(month, None)] == [aq.DAILY_ROLLUPS]
    assert [p.table for p in aq._pieces(aq.LogFilter(since=since), None)] == [aq.TABLE, aq.ROLLUPS, aq.DAILY_ROLLUPS]
    assert [p.table for p in aq._pieces(aq.LogFilter(since=since), "hour")] == [aq.TABLE, aq.ROLLUPS]
    assert [p.table for p in aq._pieces(aq.LogFilter(since=since), "minute")] == [aq.TABLE]
    assert [p.table for p in aq._pieces(aq.LogFilter(since=since, endpoint="/v1/embeddings"), None)] == [aq.TABLE]


async def test_ranges_ending_now_read_today_from_the_daily_rollups(analytics_db):
    now = datetime.now(UTC)
    batch = [r for r in records(500, seed=13, start=now - SPAN) if r.created_at and r.created_at <= now]
    await write(batch)
    for since in (now - timedelta(days=2, minutes=10), now - timedelta(days=3, hours=20)):
        for until in (None, now, now + timedelta(hours=3)):
            flt = aq.LogFilter(since=since, until=until)
            for group_by, bucket in (((), None), (("user", "model"), "day"), (("backend",), "hour")):
                got = rounded(await aq.usage(flt, group_by, bucket))
                assert same(got, expected(batch, flt, group_by, bucket)), (flt, group_by, bucket)


async def test_spent_comes_from_the_rollups(analytics_db):
    batch = records(400, seed=3)
    await write(batch, size=50)
    day = datetime(2026, 3, 10, tzinfo=UTC)
    ranges = [
        (day, day + timedelta(days=1)),  # a day
        (datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 16, tzinfo=UTC)),  # an ISO week
        (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),  # a month
        (day + timedelta(hours=5), day + timedelta(days=1, hours=7)),  # whole hours
        (day + timedelta(hours=5, minutes=3), day + timedelta(days=2, minutes=1)),  # anything
    ]
    for since, until in ranges:
        for user in (1, 2, 3):
            want = sum(r.cost_usd or 0 for r in batch if r.user_id == user and since <= r.created_at < until)  # type: ignore[operator]
            assert await aq.spent_usd(user, since, until) == pytest.approx(want), (since, until, user)
    assert await aq.spent_usd(99, *ranges[2]) == 0
    for since, until in ranges:  # a budget sync: few users one by one, many in one grouped statement
        for ids in ([1, 3], range(1, aq._FEW_USERS + 5)):
            got = await aq.spent_by_user(ids, since, until)
            assert got == {i: pytest.approx(await aq.spent_usd(i, since, until)) for i in ids}


async def test_daily_rollups_are_the_hourly_ones_added_up(analytics_db):
    from tortoise import connections

    await write(records(300, seed=9), size=23)
    conn = connections.get("analytics")
    day = (
        "date_trunc('day', hour AT TIME ZONE 'UTC')"
        if conn.capabilities.dialect == "postgres"
        else "strftime('%Y-%m-%d', hour)"
    )
    sums = "SUM(requests), SUM(errors), SUM(total_tokens), ROUND(CAST(SUM(cost_usd) AS NUMERIC), 9)"
    hourly = await conn.execute_query_dict(
        f"SELECT {day} AS d, user_id, backend_id, model, {sums} FROM usage_rollups "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )
    daily_day = day.replace("hour", "day") if conn.capabilities.dialect == "postgres" else "strftime('%Y-%m-%d', day)"
    daily = await conn.execute_query_dict(
        f"SELECT {daily_day} AS d, user_id, backend_id, model, {sums} FROM usage_rollups_daily "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )
    assert [tuple(r.values()) for r in daily] == [tuple(r.values()) for r in hourly]
    counts = await conn.execute_query_dict(
        "SELECT (SELECT COUNT(*) FROM usage_rollups) AS hourly, (SELECT COUNT(*) FROM usage_rollups_daily) AS daily"
    )
    assert counts[0]["daily"] == len(daily) < counts[0]["hourly"]


async def test_upgrade_backfills_the_daily_rollups_from_the_hourly_ones(db_urls):
    """A database at 0004 (hourly rollups only) is migrated: the daily level then answers the same."""
    from tortoise import Tortoise, connections
    from tortoise.migrations.executor import MigrationExecutor, MigrationTarget

    from router.db import tortoise_config
    from router.models.analytics import UsageRollup
    from router.usage import LOG_COLUMNS, _rollup_sql, rollup_rows

    core, analytics = db_urls
    batch = records(300, seed=21)
    config = tortoise_config(core, analytics)
    await Tortoise.init(config=config, _enable_global_fallback=True)
    conn = connections.get("analytics")
    sqlite = conn.capabilities.dialect == "sqlite"
    await MigrationExecutor(conn, {"analytics": config["apps"]["analytics"]}).migrate(
        [MigrationTarget("analytics", "0004_request_log_attempt_errors")]
    )
    marks = ", ".join("?" if sqlite else f"${i}" for i in range(1, len(LOG_COLUMNS) + 1))
    rows = [list(r.as_tuple()) for r in batch]
    if sqlite:
        for row in rows:
            row[2] = str(row[2])
    await conn.execute_many(f"INSERT INTO request_logs ({', '.join(LOG_COLUMNS)}) VALUES ({marks})", rows)
    await conn.execute_many(_rollup_sql(sqlite, UsageRollup), [list(r) for r in rollup_rows(batch, sqlite)])
    await Tortoise.close_connections()
    await init_db(Settings(core_db_url=core, analytics_db_url=analytics))  # applies 0005 and what follows
    try:
        for flt in list(filters(seed=4))[:5]:
            for group_by in ((), ("user", "model")):
                got = rounded(await aq.usage(flt, group_by, "day"))
                assert same(got, expected(batch, flt, group_by, "day")), (flt, group_by)
    finally:
        await close_db()


async def test_the_response_id_look_up_uses_an_index(analytics_db):
    """The affinity fall-back after a restart (router.affinity.binding_from_log) finds a response id
    through an index, not by scanning the request log (migration 0006)."""
    from tortoise import connections

    conn = connections.get("analytics")
    if conn.capabilities.dialect == "sqlite":
        plan = await conn.execute_query_dict(
            "EXPLAIN QUERY PLAN SELECT backend_id, user_id FROM request_logs WHERE response_id = ?", ["resp_1"]
        )
        assert any("USING INDEX idx_request_logs_response_id" in row["detail"] for row in plan), plan
    else:
        rows = await conn.execute_query_dict(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'request_logs' AND indexdef LIKE '%(response_id)%'"
        )
        assert rows, "no index on request_logs.response_id"
