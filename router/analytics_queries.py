"""Read-only queries over the request log: pages of logs, usage aggregates, backend metrics.

The database does the work: filtering, counting, GROUP BY with time buckets (SQLite `strftime`,
PostgreSQL `date_trunc`) and percentile picks (ORDER BY latency LIMIT 1 OFFSET k). Nothing here
loads a whole time range of rows into Python. Plain async functions taking filters and returning
dataclasses, so the GraphQL layer (and anything else) can call them.

"An error" is the same everywhere: a status code of 400 or more, or an error message recorded
for the request (e.g. a stream that broke after a 200).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from tortoise import connections
from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from router.models.analytics import RequestLog

TABLE = "request_logs"
# Totals per UTC hour / day, user, backend and model, written with each log batch (router.usage).
ROLLUPS = "usage_rollups"
DAILY_ROLLUPS = "usage_rollups_daily"
_TIME_COLUMN = {TABLE: "created_at", ROLLUPS: "hour", DAILY_ROLLUPS: "day"}
_ERROR_SQL = "(status_code >= 400 OR error IS NOT NULL)"

GROUP_KEYS = ("user", "backend", "model")
BUCKETS = ("minute", "hour", "day")

_SQLITE_BUCKET = {"minute": "%Y-%m-%dT%H:%M:00", "hour": "%Y-%m-%dT%H:00:00", "day": "%Y-%m-%dT00:00:00"}


# --- filters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """Which request-log rows: every given condition must hold."""

    request_id: str | None = None
    endpoint: str | None = None
    user_id: int | None = None
    backend_id: int | None = None
    model: str | None = None
    status_code: int | None = None
    errors_only: bool = False
    since: datetime | None = None
    until: datetime | None = None


# The LogFilter fields that name a request-log column the row must equal.
_EQUAL_COLUMNS = ("request_id", "endpoint", "user_id", "backend_id", "model", "status_code")


def _utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def filtered_logs(flt: LogFilter) -> QuerySet[RequestLog]:
    query = RequestLog.all()
    equal = {column: getattr(flt, column) for column in _EQUAL_COLUMNS}
    if given := {column: value for column, value in equal.items() if value is not None}:
        query = query.filter(**given)
    if flt.errors_only:
        query = query.filter(Q(status_code__gte=400) | Q(error__isnull=False))
    if flt.since is not None:
        query = query.filter(created_at__gte=_utc(flt.since))
    if flt.until is not None:
        query = query.filter(created_at__lt=_utc(flt.until))
    return query


# --- request-log pages -----------------------------------------------------------------------------


@dataclass
class LogPage:
    items: list[RequestLog]
    total_count: int
    """The id to continue after (exclusive), or None on the last page."""
    next_after_id: int | None


async def request_log_page(flt: LogFilter, first: int, after_id: int | None = None) -> LogPage:
    """Newest first, keyset-paginated on the time-ordered id: `WHERE id < after ORDER BY id DESC`.

    Rows logged while a client pages have larger ids, so they never shift later pages.
    `total_count` counts every row matching the filter (ignoring the cursor).
    """
    query = filtered_logs(flt)
    total = await query.count()
    page_query = query.filter(id__lt=after_id) if after_id is not None else query
    rows = await page_query.order_by("-id").limit(first + 1)
    more = len(rows) > first
    rows = rows[:first]
    return LogPage(rows, total, rows[-1].id if more and rows else None)


# --- raw SQL helpers (both dialects) -------------------------------------------------------------


class _Sql:
    """Collects parameters and renders placeholders for the analytics connection's dialect."""

    def __init__(self) -> None:
        self.conn = connections.get("analytics")
        self.dialect: str = self.conn.capabilities.dialect
        self.params: list[Any] = []

    @property
    def postgres(self) -> bool:
        return self.dialect == "postgres"

    def param(self, value: Any) -> str:
        if isinstance(value, datetime):
            value = _utc(value)
            if not self.postgres:
                # The text form Tortoise stores in SQLite ("YYYY-MM-DD HH:MM:SS[.ffffff]+00:00").
                value = value.isoformat(" ")
        self.params.append(value)
        return f"${len(self.params)}" if self.postgres else "?"

    def bucket(self, bucket: str, column: str = "created_at") -> str:
        if self.postgres:
            return f"date_trunc('{bucket}', {column} AT TIME ZONE 'UTC')"
        return f"strftime('{_SQLITE_BUCKET[bucket]}', {column})"

    def _who(self, flt: LogFilter) -> list[str]:
        """The user/backend/model conditions of `flt` (columns of both the log and the rollups)."""
        conditions = []
        if flt.user_id is not None:
            conditions.append(f"user_id = {self.param(flt.user_id)}")
        if flt.backend_id is not None:
            conditions.append(f"backend_id = {self.param(flt.backend_id)}")
        if flt.model is not None:
            conditions.append(f"model = {self.param(flt.model)}")
        return conditions

    def rollup_where(self, flt: LogFilter, column: str) -> str:
        """The conditions of `flt` on a rollup level (since/until are whole buckets of `column` there)."""
        conditions = self._who(flt)
        if flt.since is not None:
            conditions.append(f"{column} >= {self.param(flt.since)}")
        if flt.until is not None:
            conditions.append(f"{column} < {self.param(flt.until)}")
        return ("WHERE " + " AND ".join(conditions)) if conditions else ""

    def where(self, flt: LogFilter) -> str:
        conditions = []
        if flt.request_id is not None:
            conditions.append(f"request_id = {self.param(flt.request_id)}")
        if flt.endpoint is not None:
            conditions.append(f"endpoint = {self.param(flt.endpoint)}")
        conditions += self._who(flt)
        if flt.status_code is not None:
            conditions.append(f"status_code = {self.param(flt.status_code)}")
        if flt.errors_only:
            conditions.append(_ERROR_SQL)
        if flt.since is not None:
            conditions.append(f"created_at >= {self.param(flt.since)}")
        if flt.until is not None:
            conditions.append(f"created_at < {self.param(flt.until)}")
        return ("WHERE " + " AND ".join(conditions)) if conditions else ""

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.conn.execute_query_dict(sql, self.params)
        return rows


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _utc(value)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


# --- usage -----------------------------------------------------------------------------------------


@dataclass
class UsageRow:
    bucket_start: datetime | None
    user_id: int | None
    user_name: str | None
    backend_id: int | None
    backend_name: str | None
    model: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    avg_latency_ms: float | None
    cost_usd: float = 0.0
    p50_latency_ms: float | None = None  # live ticks only (router/live.py latency histogram)
    p95_latency_ms: float | None = None


async def usage(flt: LogFilter, group_by: Sequence[str] = (), bucket: str | None = None) -> list[UsageRow]:
    """Requests, errors, tokens, cost and mean latency per group and time bucket.

    `group_by` holds any of "user", "backend", "model"; `bucket` one of "minute", "hour", "day"
    (UTC) or None. The range is read in pieces (`_pieces`): whole days from the daily rollups,
    whole hours at the day edges from the hourly rollups, the minutes at the hour edges from the
    request log; one statement adds them up (UNION ALL under a GROUP BY), so 30 days cost a few
    thousand rollup rows per (user, backend, model), not millions of log rows. Minute buckets and
    status / endpoint / request-id filters read the log alone. Names come from the rows (the name a
    user or backend had when logged; the latest alphabetically if it was renamed within a group).
    Only groups with requests appear. Ordered by bucket, then most requests first.
    """
    unknown = set(group_by) - set(GROUP_KEYS)
    if unknown or (bucket is not None and bucket not in BUCKETS):
        raise ValueError(f"bad grouping {sorted(unknown)} / bucket {bucket!r}")
    sql = _Sql()
    parts = [_usage_sql(sql, piece, group_by, bucket) for piece in _pieces(flt, bucket)]
    keys = ("user_id", "backend_id", "model")
    outer = ["bucket_start", *keys, "MAX(user_name) AS user_name", "MAX(backend_name) AS backend_name"]
    outer += [f"SUM({c}) AS {c}" for c in _SUMS]
    text = f"SELECT {', '.join(outer)} FROM ({' UNION ALL '.join(parts)}) AS parts "
    text += f"GROUP BY bucket_start, {', '.join(keys)}"
    return _merged(await sql.rows(text))


def _floor(value: datetime, unit: str) -> datetime:
    value = _utc(value).replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0) if unit == "day" else value


def _ceil(value: datetime, unit: str) -> datetime:
    floor = _floor(value, unit)
    return floor if floor == _utc(value) else floor + (timedelta(days=1) if unit == "day" else timedelta(hours=1))


class Piece(NamedTuple):
    """A part of a usage range: rows of `table` matching `flt`, added (sign 1) or taken away (-1)."""

    table: str
    flt: LogFilter
    sign: int = 1


def _pieces(flt: LogFilter, bucket: str | None, now: datetime | None = None) -> list[Piece]:
    """`flt`'s range as pieces whose signed sum is the range.

    [since, first whole hour) and [last whole hour, until) from the log; the whole days from the
    daily rollups; a partial day at either end from the hourly rollups, either its hours inside the
    range added, or its whole day added and its hours outside taken away, whichever reads fewer
    hours (hours after `now` hold no rows yet: a range ending now costs ~nothing at that end).
    HOUR buckets read hours only. An open end stays open: the rollups of the current hour and day
    are as current as the log (written in the same transaction).
    """
    log_only = flt.request_id is not None or flt.endpoint is not None or flt.status_code is not None
    if log_only or flt.errors_only or bucket == "minute":
        return [Piece(TABLE, flt)]
    since = _utc(flt.since) if flt.since is not None else None
    until = _utc(flt.until) if flt.until is not None else None
    first_hour = _ceil(since, "hour") if since is not None else None
    last_hour = _floor(until, "hour") if until is not None else None
    if first_hour is not None and last_hour is not None and last_hour <= first_hour:
        return [Piece(TABLE, flt)]  # no whole hour inside
    pieces: list[Piece] = []
    if since is not None and first_hour is not None and since < first_hour:
        pieces.append(Piece(TABLE, replace(flt, until=first_hour)))
    if until is not None and last_hour is not None and last_hour < until:
        pieces.append(Piece(TABLE, replace(flt, since=last_hour)))
    first_day = _ceil(first_hour, "day") if first_hour is not None else None
    last_day = _floor(last_hour, "day") if last_hour is not None else None
    if bucket == "hour" or (first_day is not None and last_day is not None and last_day <= first_day):
        return [*pieces, Piece(ROLLUPS, replace(flt, since=first_hour, until=last_hour))]
    day = timedelta(days=1)
    days_since, days_until = first_day, last_day
    if first_hour is not None and first_day is not None and first_hour < first_day:
        if first_day - first_hour <= first_hour - (first_day - day):
            pieces.append(Piece(ROLLUPS, replace(flt, since=first_hour, until=first_day)))
        else:
            days_since = first_day - day
            pieces.append(Piece(ROLLUPS, replace(flt, since=days_since, until=first_hour), -1))
    if last_hour is not None and last_day is not None and last_day < last_hour:
        next_hour = _floor(now or datetime.now(UTC), "hour") + timedelta(hours=1)
        filled = min(last_day + day, max(last_hour, next_hour))  # the hours after last_hour with rows
        if last_hour - last_day <= filled - last_hour:
            pieces.append(Piece(ROLLUPS, replace(flt, since=last_day, until=last_hour)))
        else:
            days_until = last_day + day
            pieces.append(Piece(ROLLUPS, replace(flt, since=last_hour, until=days_until), -1))
    return [*pieces, Piece(DAILY_ROLLUPS, replace(flt, since=days_since, until=days_until))]


_SUMS: tuple[str, ...] = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
_SUMS += ("reasoning_tokens", "latency_sum", "cost_usd")


def _usage_sql(sql: _Sql, piece: Piece, group_by: Sequence[str], bucket: str | None) -> str:
    """One GROUP BY over the request log or a rollup level, with sums (not means) so pieces can be added.

    Every piece has the same columns in the same order (UNION ALL matches them by position);
    "none" is NULL (the rollups' 0 and "" turned back into it). A piece taken away has its sums
    negated and no names.
    """
    table, flt = piece.table, piece.flt
    rollup = table != TABLE
    columns = {"bucket_start": "NULL"}
    group: list[str] = []
    if bucket is not None:
        columns["bucket_start"] = sql.bucket(bucket, _TIME_COLUMN[table])
        group.append(columns["bucket_start"])
    for key, none in (("user", "0"), ("backend", "0"), ("model", "''")):
        column = "model" if key == "model" else f"{key}_id"
        grouped = key in group_by
        columns[column] = (f"NULLIF({column}, {none})" if rollup else column) if grouped else "NULL"
        if key != "model":
            columns[f"{key}_name"] = f"MAX({key}_name)" if grouped and piece.sign > 0 else "NULL"
        if grouped:
            group.append(column)
    if rollup:
        columns.update({c: f"SUM({c})" for c in _SUMS})
        columns["latency_sum"] = "SUM(latency_ms_sum)"
        where = sql.rollup_where(flt, _TIME_COLUMN[table])
    else:
        columns.update({c: f"SUM({c})" for c in _SUMS})
        columns["requests"] = "COUNT(*)"
        columns["errors"] = f"SUM(CASE WHEN {_ERROR_SQL} THEN 1 ELSE 0 END)"
        columns["latency_sum"] = "SUM(latency_ms)"
        where = sql.where(flt)
    if piece.sign < 0:
        columns.update({c: f"-{columns[c]}" for c in _SUMS})
    text = f"SELECT {', '.join(f'{expr} AS {name}' for name, expr in columns.items())} FROM {table} {where}"
    if group:
        text += f" GROUP BY {', '.join(group)}"
    return text


def _merged(parts: list[dict[str, Any]]) -> list[UsageRow]:
    """Rows of the same (bucket, user, backend, model) added up; ordered by bucket, most requests, then ids."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in parts:
        if not row["requests"]:
            continue
        bucket_start = _as_datetime(row["bucket_start"])
        key = (bucket_start, row["user_id"], row["backend_id"], row["model"])
        entry = groups.get(key)
        if entry is None:
            groups[key] = {**row, "bucket_start": bucket_start, **{c: row[c] or 0 for c in _SUMS}}
            continue
        for column in _SUMS:
            entry[column] += row[column] or 0
        for column in ("user_name", "backend_name"):
            entry[column] = max(filter(None, (entry[column], row[column])), default=None)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ordered = sorted(
        groups.values(),
        key=lambda r: (
            r["bucket_start"] or epoch,
            -r["requests"],
            r["user_id"] or 0,
            r["backend_id"] or 0,
            r["model"] or "",
        ),
    )
    return [
        UsageRow(
            bucket_start=row["bucket_start"],
            user_id=row["user_id"],
            user_name=row["user_name"],
            backend_id=row["backend_id"],
            backend_name=row["backend_name"],
            model=row["model"],
            requests=int(row["requests"]),
            errors=int(row["errors"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            total_tokens=int(row["total_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            reasoning_tokens=int(row["reasoning_tokens"]),
            avg_latency_ms=float(row["latency_sum"]) / int(row["requests"]),
            cost_usd=max(float(row["cost_usd"]), 0.0),  # a day minus hours: 0 may come out as -1e-18
        )
        for row in ordered
    ]


# --- backend metrics -------------------------------------------------------------------------------


@dataclass
class BackendStats:
    backend_id: int
    requests: int = 0
    errors: int = 0
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None


DEFAULT_METRICS_WINDOW = timedelta(hours=1)


def percentile_offset(count: int, fraction: float) -> int:
    """0-based index of the nearest-rank percentile among `count` ascending values."""
    return max(math.ceil(fraction * count) - 1, 0)


async def backend_stats(backend_ids: Iterable[int], since: datetime | None = None) -> dict[int, BackendStats]:
    """Requests, errors and p50/p95 latency per backend over the logs since `since` (default: 1 h).

    One GROUP BY for the counts; each percentile is one indexed `ORDER BY latency_ms LIMIT 1
    OFFSET k` per backend, so no latency list is ever loaded. Every asked-for id gets an entry.
    """
    since = _utc(since) if since is not None else datetime.now(UTC) - DEFAULT_METRICS_WINDOW
    stats = {backend_id: BackendStats(backend_id) for backend_id in backend_ids}
    if not stats:
        return stats
    sql = _Sql()
    text = (
        f"SELECT backend_id, COUNT(*) AS requests, SUM(CASE WHEN {_ERROR_SQL} THEN 1 ELSE 0 END) AS errors "
        f"FROM {TABLE} WHERE backend_id IS NOT NULL AND created_at >= {sql.param(since)} GROUP BY backend_id"
    )
    for row in await sql.rows(text):
        entry = stats.get(row["backend_id"])
        if entry is not None:
            entry.requests, entry.errors = int(row["requests"]), int(row["errors"] or 0)
    for entry in stats.values():
        if entry.requests:
            entry.p50_latency_ms = await _latency_at(entry.backend_id, since, percentile_offset(entry.requests, 0.5))
            entry.p95_latency_ms = await _latency_at(entry.backend_id, since, percentile_offset(entry.requests, 0.95))
    return stats


async def _latency_at(backend_id: int, since: datetime, offset: int) -> float | None:
    sql = _Sql()
    text = (
        f"SELECT latency_ms FROM {TABLE} WHERE backend_id = {sql.param(backend_id)} "
        f"AND created_at >= {sql.param(since)} ORDER BY latency_ms LIMIT 1 OFFSET {int(offset)}"
    )
    rows = await sql.rows(text)
    return float(rows[0]["latency_ms"]) if rows else None


# --- spend (from the rollups) ----------------------------------------------------------------------


async def spent_usd(user_id: int, since: datetime, until: datetime) -> float:
    """A user's spend in [since, until): budget periods are whole days, so whole days of the daily
    rollups (today's included, kept current with every log batch); other bounds are read as `usage` reads them."""
    rows = await usage(LogFilter(user_id=user_id, since=since, until=until))
    return rows[0].cost_usd if rows else 0.0


async def spent_usd_by_user(since: datetime, until: datetime) -> dict[int, float]:
    """Every user's spend in [since, until) (as `spent_usd`, in one query); users who spent nothing are absent."""
    rows = await usage(LogFilter(since=since, until=until), ("user",))
    return {row.user_id: row.cost_usd for row in rows if row.user_id is not None}


_FEW_USERS = 20  # up to this many: one indexed query per user; more: one query grouped by user


async def spent_by_user(user_ids: Collection[int], since: datetime, until: datetime) -> dict[int, float]:
    """The spend of each of `user_ids` in [since, until) (0 for none): what a budget sync reads."""
    ids = set(user_ids)
    if len(ids) <= _FEW_USERS:
        return {user_id: await spent_usd(user_id, since, until) for user_id in ids}
    everyone = await spent_usd_by_user(since, until)
    return {user_id: everyone.get(user_id, 0.0) for user_id in ids}
