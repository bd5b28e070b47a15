"""Tortoise ORM set-up for the two databases: `core` and `analytics`, each on its own connection."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from tortoise import Tortoise, connections
from tortoise.utils import generate_schema_for_client

from router.config import Settings

log = logging.getLogger("router.db")

CORE_MODELS = ["router.models.core"]
ANALYTICS_MODELS = ["router.models.analytics"]
# Any fixed number works: it only has to be the same in every router process.
_SCHEMA_LOCK_ID = 4_180_512


def tortoise_config(core_db_url: str, analytics_db_url: str) -> dict:
    """The Tortoise config dict for both apps."""
    return {
        "connections": {"core": core_db_url, "analytics": analytics_db_url},
        "apps": {
            "core": {"models": CORE_MODELS, "default_connection": "core"},
            "analytics": {"models": ANALYTICS_MODELS, "default_connection": "analytics"},
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in ("postgres", "postgresql", "asyncpg", "psycopg")


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite://") and ":memory:" not in url:
        path = url[len("sqlite://") :].split("?", 1)[0]
        Path(path).parent.mkdir(parents=True, exist_ok=True)


async def init_db(settings: Settings, create_schema: bool = True) -> None:
    """Connect both databases and create missing tables (one process at a time on PostgreSQL)."""
    for url in (settings.core_db_url, settings.analytics_db_url):
        _ensure_sqlite_dir(url)
    await Tortoise.init(
        config=tortoise_config(settings.core_db_url, settings.analytics_db_url),
        _enable_global_fallback=True,
    )
    if create_schema:
        await _create_schema(settings)


async def _create_schema(settings: Settings) -> None:
    for name, url in (("core", settings.core_db_url), ("analytics", settings.analytics_db_url)):
        conn = connections.get(name)
        if is_postgres(url):
            # Concurrent starts: the advisory lock makes the second process wait, then find the tables.
            async with conn._in_transaction() as tx:
                await tx.execute_query(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_ID})")
                await generate_schema_for_client(tx, safe=True)
        else:
            await generate_schema_for_client(conn, safe=True)


async def close_db() -> None:
    await Tortoise.close_connections()
