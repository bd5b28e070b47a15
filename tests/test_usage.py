"""router.usage: RequestRecord's fields are the one definition of the request log's columns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

from graphql_schema.types import RequestLogEntry
from router import usage
from router.models.analytics import RequestLog
from router.usage import LOG_COLUMNS, WIRE_FIELDS, RequestRecord, new_log_id, rollup_rows


def test_log_columns_are_the_orm_models_columns():
    assert set(LOG_COLUMNS) == set(RequestLog._meta.db_fields)


def test_as_tuple_follows_log_columns():
    record = RequestRecord("r1", "/v1/chat/completions", model="m", attempt_errors=["a: x"])
    record.finish(200)
    row = dict(zip(LOG_COLUMNS, record.as_tuple(), strict=True))
    assert (row["request_id"], row["model"], row["status_code"]) == ("r1", "m", 200)
    assert (row["id"], row["created_at"], row["attempt_errors"]) == (record.id, record.created_at, '["a: x"]')
    for attempt_errors in (None, []):
        plain = RequestRecord("r2", "/v1/models", attempt_errors=attempt_errors)
        assert dict(zip(LOG_COLUMNS, plain.as_tuple(), strict=True))["attempt_errors"] is None


def test_what_travels_between_processes_is_the_columns_and_the_method():
    assert set(WIRE_FIELDS) == {*LOG_COLUMNS, "method"}


def test_the_graphql_request_log_shows_every_column_but_the_response_id():
    shown = {f.python_name for f in RequestLogEntry.__strawberry_definition__.fields} - {"skipped_before"}
    assert shown - {"time_to_first_token_ms"} | {"ttft_ms"} == set(LOG_COLUMNS) - {"response_id"}


def test_log_ids_are_time_ordered_and_unique():
    ids = [new_log_id(1_800_000_000.0) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert new_log_id(1_800_000_001.0) > max(ids)
    assert max(ids) < 2**63


def test_rollup_hours_are_utc_hours_whatever_the_zone_of_created_at():
    """The hour of each row (computed once per hour of a batch) is its UTC hour, also for rows in
    another zone, on both sides of an hour boundary."""
    ist = timezone(timedelta(hours=5, minutes=30))
    base = datetime(2026, 3, 9, 22, 59, 59, 999_999, tzinfo=UTC)
    stamps = [
        base,
        base.astimezone(ist),
        base + timedelta(microseconds=1),
        (base + timedelta(minutes=1)).astimezone(ist),
    ]
    batch = []
    for i, created in enumerate(stamps):
        r = RequestRecord(f"r{i}", "/v1/chat/completions", user_id=1, backend_id=1, model="m")
        r.finish(200)
        r.created_at = created
        batch.append(r)
    rows = rollup_rows(batch)
    assert [(row[0], row[6]) for row in rows] == [
        (datetime(2026, 3, 9, 22, tzinfo=UTC), 2),
        (datetime(2026, 3, 9, 23, tzinfo=UTC), 2),
    ]
    assert all(row[0].tzinfo is UTC for row in rows)


def test_none_and_bools_bind_as_sqlite_would_without_the_adapters():
    """router.usage registers adapters for None and bool (they skip sqlite3's failing attribute look-ups);
    what is stored stays NULL and the integers 0 and 1."""
    import sqlite3
    from contextlib import closing

    import router.usage  # noqa: F401  (registers them)

    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (a, b, c)")
        conn.execute("INSERT INTO t VALUES (?, ?, ?)", (None, True, False))
        assert conn.execute("SELECT typeof(a), typeof(b), b, typeof(c), c FROM t").fetchone() == (
            "null",
            "integer",
            1,
            "integer",
            0,
        )


async def test_the_buffer_bound_holds_when_a_failed_batch_is_put_back(monkeypatch) -> None:
    """Rows submitted while a batch is out of the buffer (being written) did not count it: when the
    write fails and the batch goes back, the oldest rows beyond the bound are dropped, not kept."""
    writing, fail = asyncio.Event(), asyncio.Event()

    async def failing_insert(batch: list[RequestRecord]) -> None:
        writing.set()
        await fail.wait()
        raise OSError("disk I/O error")

    monkeypatch.setattr(usage, "insert_log_rows", failing_insert)
    writer = usage.LogWriter(batch_size=4, max_buffer=5)
    records = [RequestRecord(f"r{i}", "/v1/chat/completions") for i in range(9)]
    for record in records[:4]:
        writer.submit(record)
    batch = asyncio.create_task(writer._write_batch())
    await writing.wait()
    for record in records[4:]:  # five more while four are out: nine rows, bound five
        writer.submit(record)
    fail.set()
    assert await batch is False
    assert writer.queue_depth == 5
    assert [r.request_id for r in writer._pending] == [r.request_id for r in records[4:]]
    assert writer.dropped == 4
