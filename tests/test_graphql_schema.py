"""In-process checks of the admin API: the contract, error masking, the login throttle, the bus's
overflow policy, and the analytics SQL on SQLite and (with TEST_POSTGRES_URL) PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from graphql import build_schema as build_sdl_schema
from graphql import find_breaking_changes

from graphql_schema import build_schema
from graphql_schema.context import AdminContext, AdminSecurity, LoginThrottle
from graphql_schema.types import decode_cursor, encode_cursor
from router import analytics_queries as aq
from router.auth import AdminTokens
from router.config import Settings, sqlite_url
from router.db import close_db, init_db
from router.models.analytics import RequestLog
from router.usage import EventBus, RequestRecord, new_log_id, rebuild_rollups
from tests.conftest import (
    create_pg_database,
    drop_pg_database,
    postgres_url,
    require_postgres,
    skip_unless_process_dialect,
)

CONTRACT = Path(__file__).parent / "contract" / "admin.graphql"


# What the contract has that the schema does not have yet, with the issue that brings it. Each
# entry must really be missing (the test fails once it lands, so the entry is removed with it);
# nothing else may differ. Never stub a field to shorten this list.
PENDING_CONTRACT: dict[str, int] = {}


def _missing_from_schema() -> set[str]:
    """Contract types and fields the schema lacks; any other breaking change fails the test."""
    contract = build_sdl_schema(CONTRACT.read_text())
    ours = build_sdl_schema(str(build_schema()))
    missing, other = set(), []
    for change in find_breaking_changes(contract, ours):
        words = change.description.removeprefix("Field ").split()
        if change.type.name in ("TYPE_REMOVED", "FIELD_REMOVED") and words[1:] == ["was", "removed."]:
            missing.add(words[0])
        else:
            other.append(change.description)
    assert other == [], "the schema breaks the contract"
    return missing


def test_schema_contains_the_contract_except_what_is_pending():
    missing = _missing_from_schema()
    unexplained = sorted(missing - PENDING_CONTRACT.keys())
    assert unexplained == [], "missing from the schema with no issue that brings it"


def test_pending_contract_entries_are_still_missing():
    landed = sorted(PENDING_CONTRACT.keys() - _missing_from_schema())
    assert landed == [], "these landed: remove them from PENDING_CONTRACT"


def test_contract_copy_matches_the_shared_one():
    shared = Path(__file__).resolve().parents[2] / "shared" / "contract" / "admin.graphql"
    if not shared.exists():
        pytest.skip(
            "nothing to compare with: this keeps tests/contract/admin.graphql equal to the authors' upstream "
            "copy of the API contract, which only exists in their workspace (the other schema tests check "
            "the served schema against tests/contract/admin.graphql)"
        )
    assert CONTRACT.read_text() == shared.read_text()


# --- errors -----------------------------------------------------------------------------------


def _context(runtime: object = None) -> AdminContext:
    security = AdminSecurity(AdminTokens("pw", 60))
    return AdminContext(
        request=SimpleNamespace(),  # type: ignore[arg-type]
        response=None,
        runtime=runtime,  # type: ignore[arg-type]
        admin=None,  # type: ignore[arg-type]
        security=security,
        settings=Settings(),
        address="127.0.0.1",
        loaders=None,  # type: ignore[arg-type]
    )


async def test_internal_errors_are_masked(caplog):
    broken_runtime = SimpleNamespace(bus=None)  # liveSubscribers will fail with AttributeError
    result = await build_schema().execute("{ liveSubscribers }", context_value=_context(broken_runtime))
    assert result.data is None
    [error] = result.errors
    assert error.message == "Internal server error."
    assert error.extensions == {"code": "INTERNAL_SERVER_ERROR"}
    assert "AttributeError" not in str(error.formatted) and "subscriber_count" not in str(error.formatted)
    assert any("GraphQL resolver failed" in r.message for r in caplog.records)  # logged, not shown


async def test_unauthenticated_context_executes_nothing():
    context = _context()
    context.auth_error = await context.security.authenticate(None, "127.0.0.1")
    result = await build_schema().execute("{ liveSubscribers }", context_value=context)
    assert result.data is None
    assert [e.extensions["code"] for e in result.errors] == ["UNAUTHENTICATED"]
    # `login` alone is allowed through (and answers for itself).
    result = await build_schema().execute('mutation { login(password: "pw") { token } }', context_value=context)
    assert result.errors is None and result.data["login"]["token"]


def test_cursors_are_opaque_and_checked():
    assert decode_cursor(encode_cursor(123456789)) == 123456789
    assert "123456789" not in encode_cursor(123456789)
    for bad in ("", "!!!", encode_cursor(1)[:-4] + "AAAA", "bG9nOmFiYw=="):  # the last is "log:abc"
        with pytest.raises(Exception) as excinfo:
            decode_cursor(bad)
        assert excinfo.value.extensions == {"code": "BAD_USER_INPUT", "field": "after"}  # type: ignore[attr-defined]


# --- login throttle ---------------------------------------------------------------------------


def test_login_throttle_grows_is_bounded_and_forgets():
    throttle = LoginThrottle(free_attempts=3, base_delay_s=1, max_delay_s=8, forget_after_s=100)
    for _ in range(3):
        throttle.failure("a", now=0)
    assert throttle.retry_after("a", now=0) == 0
    waits = []
    for _ in range(6):
        throttle.failure("a", now=0)
        waits.append(throttle.retry_after("a", now=0))
    assert waits == [1, 2, 4, 8, 8, 8]
    assert throttle.retry_after("b", now=0) == 0  # per address
    assert throttle.retry_after("a", now=200) == 0  # forgotten after a quiet while
    throttle.failure("a", now=200)
    assert throttle.retry_after("a", now=200) == 0  # counting starts afresh
    throttle.success("a")
    assert throttle.retry_after("a", now=200) == 0


def test_login_throttle_tracks_a_bounded_number_of_addresses():
    throttle = LoginThrottle(free_attempts=0, max_clients=10)
    for i in range(50):
        throttle.failure(f"10.0.0.{i}", now=0)
    assert len(throttle._clients) == 10
    assert throttle.retry_after("10.0.0.49", now=0) > 0


async def test_blocked_address_accepts_session_tokens_only():
    security = AdminSecurity(AdminTokens("secret", 60), LoginThrottle(free_attempts=0))
    session, _ = security.tokens.issue()
    assert await security.authenticate("wrong", "x") is not None
    assert (await security.authenticate("secret", "x")).extensions["retryAfterSeconds"] >= 1  # type: ignore[union-attr]
    assert await security.authenticate(session, "x") is None
    assert await security.authenticate("secret", "elsewhere") is None
    expired, _ = security.tokens.issue(now=1000.0)
    for _ in range(5):
        assert "expired" in (await security.authenticate(expired, "y")).message  # type: ignore[union-attr]
    assert security.throttle.retry_after("y") == 0  # expired sessions are not guesses
    disabled = await AdminSecurity(AdminTokens(None, 60)).authenticate("anything", "x")
    assert disabled.extensions["code"] == "FORBIDDEN"  # type: ignore[union-attr]


# --- the bus: a stuck subscriber ----------------------------------------------------------------


def _record(i: int, user_id: int = 1) -> RequestRecord:
    record = RequestRecord(request_id=f"r{i}", endpoint="/v1/chat/completions", user_id=user_id)
    record.finish(200)
    return record


async def test_stuck_subscriber_loses_oldest_entries_and_blocks_nobody():
    bus = EventBus(queue_size=3)
    stuck = bus.subscribe()
    healthy = bus.subscribe()
    others = bus.subscribe(lambda r: r.user_id == 2)
    received = []

    async def read() -> None:
        while len(received) < 10:
            received.append((await healthy.get()).request_id)

    reader = asyncio.create_task(read())
    for i in range(10):
        bus.publish([_record(i)])  # never waits, whatever the subscribers do
        await asyncio.sleep(0)
    await asyncio.wait_for(reader, 5)
    assert received == [f"r{i}" for i in range(10)]
    assert [(r.request_id, left_out) for r, left_out in stuck.pending()] == [("r7", 7), ("r8", 0), ("r9", 0)]
    assert stuck.dropped == 7 and healthy.dropped == 0
    assert others.pending() == [] and others.dropped == 0  # filtered before queueing
    stuck.close()
    assert bus.subscriber_count == 2


# --- analytics SQL ----------------------------------------------------------------------------

T0 = datetime(2024, 3, 5, 10, 15, 30, tzinfo=UTC)
ROWS = [
    # offset, user, backend, model, status, error, latency, prompt, completion
    (timedelta(0), 1, 1, "m1", 200, None, 100.0, 10, 5),
    (timedelta(seconds=10), 1, 1, "m1", 200, None, 200.0, 20, 5),
    (timedelta(seconds=70), 1, 1, "m2", 502, "boom", 300.0, 0, 0),
    (timedelta(hours=1), 2, 2, "m1", 200, None, 400.0, 1, 1),
    (timedelta(days=1), 2, None, "nope", 404, "no such model", 5.0, 0, 0),
]


@pytest.fixture(params=["sqlite", "postgres"])
async def analytics_db(request, tmp_path) -> AsyncIterator[list[int]]:
    skip_unless_process_dialect(request.param)
    databases: list[str] = []
    if request.param == "postgres":
        # conftest's helpers run their own event loop: call them off this one.
        server = await asyncio.to_thread(require_postgres)
        databases = [await asyncio.to_thread(create_pg_database, server) for _ in range(2)]
        settings = Settings(core_db_url=databases[0], analytics_db_url=databases[1])
    else:
        settings = Settings(
            core_db_url=sqlite_url(str(tmp_path / "core.db")), analytics_db_url=sqlite_url(str(tmp_path / "a.db"))
        )
    await init_db(settings)
    try:
        yield await _insert_rows()
    finally:
        await close_db()
        for db in databases:
            await asyncio.to_thread(drop_pg_database, postgres_url(), db)


async def _insert_rows() -> list[int]:
    ids, rows = [], []
    for offset, user, backend, model, status, error, latency, prompt, completion in ROWS:
        created = T0 + offset
        ids.append(new_log_id(created.timestamp()))
        rows.append(
            RequestLog(
                id=ids[-1],
                request_id=f"req-{len(ids)}",
                created_at=created,
                user_id=user,
                user_name=f"user{user}",
                backend_id=backend,
                backend_name=f"backend{backend}" if backend else None,
                model=model,
                endpoint="/v1/chat/completions",
                status_code=status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                latency_ms=latency,
                error=error,
            )
        )
    await RequestLog.bulk_create(rows)
    await rebuild_rollups()  # rows written around the log writer: usage reads whole hours from the rollups
    return ids


def _key(row: aq.UsageRow) -> tuple:
    return (row.bucket_start, row.user_id, row.backend_id, row.model, row.requests, row.errors)


async def test_usage_grouped_and_bucketed_by_the_database(analytics_db):
    everything = aq.LogFilter()
    [total] = await aq.usage(everything)
    assert (total.requests, total.errors, total.prompt_tokens, total.completion_tokens, total.total_tokens) == (
        5,
        2,
        31,
        11,
        42,
    )
    assert total.avg_latency_ms == pytest.approx(201.0)
    by_user = await aq.usage(everything, ["user"])
    assert [(r.user_id, r.user_name, r.requests, r.errors) for r in by_user] == [(1, "user1", 3, 1), (2, "user2", 2, 1)]
    by_backend_model = await aq.usage(everything, ["backend", "model"])
    assert {(r.backend_id, r.backend_name, r.model, r.requests) for r in by_backend_model} == {
        (1, "backend1", "m1", 2),
        (1, "backend1", "m2", 1),
        (2, "backend2", "m1", 1),
        (None, None, "nope", 1),
    }
    minute = await aq.usage(everything, (), "minute")
    assert [(r.bucket_start, r.requests) for r in minute] == [
        (datetime(2024, 3, 5, 10, 15, tzinfo=UTC), 2),
        (datetime(2024, 3, 5, 10, 16, tzinfo=UTC), 1),
        (datetime(2024, 3, 5, 11, 15, tzinfo=UTC), 1),
        (datetime(2024, 3, 6, 10, 15, tzinfo=UTC), 1),
    ]
    hour = await aq.usage(everything, ["user"], "hour")
    assert [(r.bucket_start.hour, r.bucket_start.day, r.user_id, r.requests) for r in hour] == [
        (10, 5, 1, 3),
        (11, 5, 2, 1),
        (10, 6, 2, 1),
    ]
    day = await aq.usage(everything, ["model"], "day")
    assert [_key(r) for r in day] == [
        (datetime(2024, 3, 5, tzinfo=UTC), None, None, "m1", 3, 0),
        (datetime(2024, 3, 5, tzinfo=UTC), None, None, "m2", 1, 1),
        (datetime(2024, 3, 6, tzinfo=UTC), None, None, "nope", 1, 1),
    ]
    window = aq.LogFilter(since=T0 + timedelta(seconds=10), until=T0 + timedelta(hours=1))
    assert [(r.requests, r.errors) for r in await aq.usage(window)] == [(2, 1)]  # since inclusive, until exclusive
    naive = aq.LogFilter(since=(T0 + timedelta(hours=1)).replace(tzinfo=None))  # naive means UTC
    assert (await aq.usage(naive))[0].requests == 2
    assert await aq.usage(aq.LogFilter(user_id=99)) == []
    assert [r.requests for r in await aq.usage(aq.LogFilter(model="m1", backend_id=1))] == [2]


async def test_request_log_pages(analytics_db):
    ids = analytics_db
    page = await aq.request_log_page(aq.LogFilter(), first=2)
    assert [r.id for r in page.items] == [ids[4], ids[3]] and page.total_count == 5
    page = await aq.request_log_page(aq.LogFilter(), first=2, after_id=page.next_after_id)
    assert [r.id for r in page.items] == [ids[2], ids[1]]
    page = await aq.request_log_page(aq.LogFilter(), first=2, after_id=page.next_after_id)
    assert [r.id for r in page.items] == [ids[0]] and page.next_after_id is None
    exact = await aq.request_log_page(aq.LogFilter(), first=5)
    assert len(exact.items) == 5 and exact.next_after_id is None
    errors = await aq.request_log_page(aq.LogFilter(errors_only=True), first=10)
    assert [r.request_id for r in errors.items] == ["req-5", "req-3"] and errors.total_count == 2
    assert (await aq.request_log_page(aq.LogFilter(status_code=502), first=10)).total_count == 1
    assert (await aq.request_log_page(aq.LogFilter(user_id=1, model="m1"), first=10)).total_count == 2
    window = aq.LogFilter(since=T0, until=T0 + timedelta(seconds=70))
    assert [r.request_id for r in (await aq.request_log_page(window, first=10)).items] == ["req-2", "req-1"]


async def test_backend_stats(analytics_db):
    stats = await aq.backend_stats([1, 2, 3], since=T0 - timedelta(seconds=1))
    assert (stats[1].requests, stats[1].errors, stats[1].p50_latency_ms, stats[1].p95_latency_ms) == (3, 1, 200, 300)
    assert (stats[2].requests, stats[2].p50_latency_ms, stats[2].p95_latency_ms) == (1, 400, 400)
    assert (stats[3].requests, stats[3].p50_latency_ms) == (0, None)
    later = await aq.backend_stats([1], since=T0 + timedelta(seconds=5))
    assert (later[1].requests, later[1].p50_latency_ms, later[1].p95_latency_ms) == (2, 200, 300)
    assert await aq.backend_stats([]) == {}
    assert (await aq.backend_stats([1]))[1].requests == 0  # default: the last hour


@pytest.mark.parametrize(
    ("count", "p50", "p95"), [(1, 0, 0), (2, 0, 1), (3, 1, 2), (20, 9, 18), (100, 49, 94), (101, 50, 95)]
)
def test_percentile_offsets(count, p50, p95):
    assert (aq.percentile_offset(count, 0.5), aq.percentile_offset(count, 0.95)) == (p50, p95)
