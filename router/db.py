"""Tortoise ORM set-up for the two databases: `core` and `analytics`, each on its own connection."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import logging
import os
import pkgutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from tortoise import Tortoise, connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.migrations.executor import MigrationExecutor

from router.config import ConfigError, Settings
from router.crypto import SecretBox, SecretError, seal_stored_keys

log = logging.getLogger("router.db")

CORE_MODELS = ["router.models.core"]
ANALYTICS_MODELS = ["router.models.analytics"]
CORE_MIGRATIONS = "router.migrations.core"
ANALYTICS_MIGRATIONS = "router.migrations.analytics"
# Any fixed number works: it only has to be the same in every router process.
_SCHEMA_LOCK_ID = 4_180_512


def tortoise_config(core_db_url: str, analytics_db_url: str) -> dict[str, Any]:
    """The Tortoise config dict for both apps."""
    return {
        "connections": {"core": core_db_url, "analytics": analytics_db_url},
        "apps": {
            "core": {"models": CORE_MODELS, "default_connection": "core", "migrations": CORE_MIGRATIONS},
            "analytics": {
                "models": ANALYTICS_MODELS,
                "default_connection": "analytics",
                "migrations": ANALYTICS_MIGRATIONS,
            },
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in ("postgres", "postgresql", "asyncpg", "psycopg")


def _ensure_sqlite_file(url: str) -> None:
    """Create a SQLite file (and its directory) readable by this user only: 0600 in a 0700 directory.

    SQLite gives its -wal and -shm files the database file's mode. Existing files are left as
    they are (an operator may have chosen their mode), with a warning when others can read them.
    """
    path = _sqlite_path(url)
    if path is None:
        return
    file = Path(path)
    if not file.parent.exists():
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        if file.stat().st_mode & 0o077:
            log.warning(
                "%s can be read by other users (mode %o): consider chmod 600", file, file.stat().st_mode & 0o777
            )


def _leave_wal(url: str) -> str:
    """Switch a SQLite file from WAL (earlier versions) to the rollback journal `url` asks for.

    Only possible while no other connection has it open: under the migration lock, so workers
    starting together take turns. If a process of an earlier version still holds it, the file
    stays in WAL for this run (returned URL says so, with a warning) instead of failing to start.
    """
    path = _sqlite_path(url)
    if path is None or "journal_mode=DELETE" not in url:
        return url
    with open_lock_file(path) as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                return url
            conn.execute("PRAGMA journal_mode=DELETE")
            return url
        except sqlite3.OperationalError as exc:
            log.warning(
                "%s stays in WAL mode for now (%s: another process, e.g. an older router, has it open); "
                "it switches to a rollback journal at a start when nothing else holds it",
                path,
                exc,
            )
            return url.replace("journal_mode=DELETE", "journal_mode=WAL")
        finally:
            conn.close()


def open_lock_file(path: str) -> BinaryIO:
    """`<database file>.migrate.lock`, created 0600: the cross-process lock of schema changes."""
    return os.fdopen(os.open(f"{path}.migrate.lock", os.O_CREAT | os.O_RDWR, 0o600), "r+b")


async def init_db(settings: Settings, create_schema: bool = True) -> None:
    """Connect both databases and bring their tables up to date (one process at a time)."""
    for url in (settings.core_db_url, settings.analytics_db_url):
        _ensure_sqlite_file(url)
    core_url, analytics_url = await asyncio.gather(
        asyncio.to_thread(_leave_wal, settings.core_db_url), asyncio.to_thread(_leave_wal, settings.analytics_db_url)
    )
    await Tortoise.init(config=tortoise_config(core_url, analytics_url), _enable_global_fallback=True)
    if not create_schema:
        return
    try:
        await migrate_db(settings)
        try:
            await seal_stored_keys(SecretBox(settings.secrets_key))
        except SecretError as exc:
            raise ConfigError(str(exc)) from None
    except BaseException:
        await close_db()
        raise


# --- migrations -------------------------------------------------------------------------------

# A table each app's initial migration creates: present without a migration record means the
# database was made by the schema generator of earlier versions, i.e. it is at `0001_initial`.
_INITIAL_TABLES = {"core": "users", "analytics": "request_logs"}
_INITIAL_MIGRATION = "0001_initial"
_MIGRATIONS_TABLE = "tortoise_migrations"  # Tortoise's MigrationRecorder's table


async def migrate_db(settings: Settings) -> None:
    """Apply the pending Tortoise migrations of both apps, each under a cross-process lock.

    PostgreSQL: a session advisory lock (per database) held while migrating; SQLite: an
    exclusive `fcntl` lock on `<database file>.migrate.lock`. Concurrent starts (`--workers N`,
    several hosts) therefore migrate once; the others wait, then find nothing to do.
    """
    config = tortoise_config(settings.core_db_url, settings.analytics_db_url)
    for app, url in (("core", settings.core_db_url), ("analytics", settings.analytics_db_url)):
        conn = connections.get(app)
        async with _migration_lock(conn, url):
            await _migrate_app(conn, app, config["apps"][app])


async def _migrate_app(conn: BaseDBAsyncClient, app: str, app_config: dict[str, Any]) -> None:
    if await _all_recorded(conn, app, app_config["migrations"]):
        return
    executor = MigrationExecutor(conn, {app: app_config})
    await executor.recorder.ensure_schema(executor._schema_editor(atomic=False))
    applied = [key for key in await executor.recorder.applied_migrations() if key.app_label == app]
    if not applied and await _table_exists(conn, _INITIAL_TABLES[app]):
        log.info("%s database predates migrations: recording it at %s", app, _INITIAL_MIGRATION)
        await executor.recorder.record_applied(app, _INITIAL_MIGRATION)
    steps = await executor.plan()
    if steps:
        names = ", ".join(step.migration.name for step in steps)
        log.info("%s database: applying migrations %s", app, names)
        await executor.migrate()


def _committed_migrations(package: str) -> set[str]:
    """The migrations Tortoise's loader finds in `package`: its modules not starting with `_` or `~`."""
    path = importlib.import_module(package).__path__
    return {name for _, name, is_pkg in pkgutil.iter_modules(path) if not is_pkg and name[0] not in "_~"}


async def _all_recorded(conn: BaseDBAsyncClient, app: str, package: str) -> bool:
    """Whether every committed migration of `app` is recorded as applied: a restart's usual case,
    answered by two queries instead of Tortoise's executor (its migration-record model parses the
    source of `tortoise/migrations/recorder.py` anew, its loader reloads every migration module and
    builds the graph: 15-40 ms per database at every start)."""
    if not await _table_exists(conn, _MIGRATIONS_TABLE):
        return False
    placeholder = "$1" if conn.capabilities.dialect == "postgres" else "?"
    _, rows = await conn.execute_query(f"SELECT name FROM {_MIGRATIONS_TABLE} WHERE app = {placeholder}", [app])
    return _committed_migrations(package) <= {row["name"] for row in rows}


async def _table_exists(conn: BaseDBAsyncClient, table: str) -> bool:
    if conn.capabilities.dialect == "postgres":
        _, rows = await conn.execute_query("SELECT to_regclass($1) IS NOT NULL AS present", [table])
        return bool(rows and rows[0]["present"])
    _, rows = await conn.execute_query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table])
    return bool(rows)


@contextlib.asynccontextmanager
async def _migration_lock(conn: BaseDBAsyncClient, url: str) -> AsyncIterator[None]:
    if is_postgres(url):
        # Held by one pooled session for the whole run; released at unlock or if the process dies.
        async with conn.acquire_connection() as session:
            await session.execute(f"SELECT pg_advisory_lock({_SCHEMA_LOCK_ID})")
            try:
                yield
            finally:
                await session.execute(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK_ID})")
        return
    path = _sqlite_path(url)
    if path is None:  # in-memory: private to this process
        yield
        return
    lock_file = open_lock_file(path)
    try:
        await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    finally:
        lock_file.close()


def _sqlite_path(url: str) -> str | None:
    if not url.startswith("sqlite://") or ":memory:" in url:
        return None
    return url[len("sqlite://") :].split("?", 1)[0]


async def close_db() -> None:
    await Tortoise.close_connections()


def __getattr__(name: str) -> dict[str, Any]:
    """`router.db.TORTOISE_ORM`: the config for Tortoise's own CLI, from this environment.

    e.g. `tortoise -c router.db.TORTOISE_ORM history` or `... makemigrations` after a model change.
    """
    if name == "TORTOISE_ORM":
        from router.config import load_settings

        settings = load_settings()
        return tortoise_config(settings.core_db_url, settings.analytics_db_url)
    raise AttributeError(name)
