"""The in-memory picture of who may use what: users, keys, permissions, backends, scripts, models.

The /v1 hot path reads only this snapshot; it never queries the database. The snapshot is
rebuilt when something changes: at once after a change made through this process, and within
`CATALOG_POLL_INTERVAL_S` after one made elsewhere (another worker, the CLI), detected through
the `catalog_revision` row (or a Redis broadcast when configured).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from router.crypto import SecretBox
from router.limits import NO_LIMITS, BudgetPeriod, Limits
from router.models.core import Backend, CatalogRevision, ModelPrice, Permission, Script, User
from router.pricing import Price, PriceTable
from router.signals import Signal

log = logging.getLogger("router.catalog")


# --- model lists (pure) -----------------------------------------------------------------------


def model_matches_filter(model: str, model_filter: str | None) -> bool:
    """LLMsRouter's filter: every space-separated term must match; `*` is a wildcard.

    A term matches when it occurs anywhere in the model id, `*` standing for any characters
    (`llama*70b` matches `meta/llama-3-70b-instruct`). Case-insensitive.
    """
    if not model_filter or not model_filter.strip():
        return True
    name = model.lower()
    return all(_term_pattern(term).search(name) for term in model_filter.lower().split())


@functools.lru_cache(maxsize=1024)
def _term_pattern(term: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in term.split("*")))


def resolve_models(
    upstream_models: Iterable[str] | None,
    model_filter: str | None,
    model_override: list[str] | None,
    model_append: list[str] | None,
) -> tuple[str, ...]:
    """The models a backend serves: `override`, else upstream filtered; then `append`. No duplicates."""
    if model_override is not None:
        base = list(model_override)
    else:
        base = [m for m in (upstream_models or ()) if model_matches_filter(m, model_filter)]
    return tuple(dict.fromkeys([*base, *(model_append or ())]))


def split_alias(model: str) -> tuple[str | None, str]:
    """`[alias]model` -> ("alias", "model"); a plain name -> (None, name)."""
    if model.startswith("[") and "]" in model:
        end = model.index("]")
        return model[1:end], model[end + 1 :]
    return None, model


# --- the snapshot ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserEntry:
    id: int
    name: str
    email: str | None
    is_active: bool
    all_backends: bool
    permitted_backend_ids: frozenset[int]
    limits: Limits = NO_LIMITS

    def may_use(self, backend_id: int) -> bool:
        return self.all_backends or backend_id in self.permitted_backend_ids


@dataclass(frozen=True, slots=True)
class BackendEntry:
    id: int
    name: str
    base_url: str
    api_key: str | None = field(repr=False)
    model_filter: str | None
    model_override: tuple[str, ...] | None
    model_append: tuple[str, ...] | None
    weight: int
    is_active: bool
    apis: frozenset[str] | None = None  # the request formats it speaks natively; None = all
    limits: Limits = NO_LIMITS
    auth_header: str | None = None  # the header its key goes in (router/upstream_auth.py); None: from the URL

    @property
    def asks_upstream_for_models(self) -> bool:
        return self.model_override is None


@dataclass(frozen=True, slots=True)
class ScriptEntry:
    id: int
    name: str
    type: str
    user_id: int | None
    backend_id: int | None
    code: str
    priority: int
    version: str


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the core database; replaced whole, never mutated."""

    users_by_key_hash: dict[str, UserEntry] = field(default_factory=dict)
    users_by_id: dict[int, UserEntry] = field(default_factory=dict)
    backends_by_id: dict[int, BackendEntry] = field(default_factory=dict)
    backends_by_name: dict[str, BackendEntry] = field(default_factory=dict)
    active_scripts: tuple[ScriptEntry, ...] = ()
    prices: PriceTable = field(default_factory=PriceTable)
    revision: int = 0
    # What the proxy derives from this snapshot per (user, model, API) and keeps while it lasts
    # (router.proxy.plan_route): a new snapshot starts empty.
    routes: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


async def load_snapshot(secrets: SecretBox | None = None) -> Snapshot:
    """Read the whole core database into a Snapshot (a handful of queries, not per request).

    Upstream API keys are decrypted here, and only here (SecretError if one cannot be).
    """
    secrets = secrets or SecretBox()
    revision_row = await CatalogRevision.get_or_none(id=1)
    users = await User.all()
    perms: dict[int, set[int]] = {}
    for user_id, backend_id in await Permission.all().values_list("user_id", "backend_id"):
        perms.setdefault(user_id, set()).add(backend_id)
    user_entries = {
        u.id: UserEntry(
            id=u.id,
            name=u.name,
            email=u.email,
            is_active=u.is_active,
            all_backends=u.all_backends,
            permitted_backend_ids=frozenset(perms.get(u.id, ())),
            limits=user_limits(u),
        )
        for u in users
    }
    backends = [
        BackendEntry(
            id=b.id,
            name=b.name,
            base_url=b.base_url.rstrip("/"),
            api_key=secrets.open(b.api_key),
            model_filter=b.model_filter,
            model_override=tuple(b.model_override) if b.model_override is not None else None,
            model_append=tuple(b.model_append) if b.model_append else None,
            weight=b.weight,
            is_active=b.is_active,
            apis=frozenset(b.apis) if b.apis is not None else None,
            limits=backend_limits(b),
            auth_header=b.auth_header,
        )
        for b in await Backend.all().order_by("id")
    ]
    scripts = tuple(
        ScriptEntry(
            id=s.id,
            name=s.name,
            type=str(s.type),
            user_id=s.user_id,
            backend_id=s.backend_id,
            code=s.code,
            priority=s.priority,
            version=s.updated_at.isoformat(),
        )
        for s in await Script.filter(is_active=True).order_by("priority", "id")
    )
    return Snapshot(
        users_by_key_hash={u.api_key_hash: user_entries[u.id] for u in users},
        users_by_id=user_entries,
        backends_by_id={b.id: b for b in backends},
        backends_by_name={b.name: b for b in backends},
        active_scripts=scripts,
        prices=PriceTable(price_of(p) for p in await ModelPrice.all()),
        revision=revision_row.revision if revision_row else 0,
    )


def user_limits(user: User) -> Limits:
    period = BudgetPeriod(user.budget_period) if user.budget_period else None
    return Limits(user.rpm, user.tpm, user.max_concurrent, user.budget_usd, period)


def backend_limits(backend: Backend) -> Limits:
    return Limits(backend.rpm, backend.tpm, backend.max_concurrent)


def price_of(row: ModelPrice) -> Price:
    return Price(
        id=row.id,
        model=row.model,
        backend_id=row.backend_id,
        input_per_mtok=row.input_per_mtok,
        output_per_mtok=row.output_per_mtok,
        cached_input_per_mtok=row.cached_input_per_mtok,
        cache_write_per_mtok=row.cache_write_per_mtok,
    )


async def bump_revision() -> int:
    """Record that the core data changed, so every process reloads its snapshot."""
    from tortoise.expressions import F

    updated = await CatalogRevision.filter(id=1).update(revision=F("revision") + 1)
    if not updated:
        await CatalogRevision.get_or_create(id=1, defaults={"revision": 1})
    row = await CatalogRevision.get(id=1)
    return int(row.revision)


class Catalog:
    """Holds the current Snapshot and reloads it when told to or when the revision moves."""

    def __init__(self, secrets: SecretBox | None = None) -> None:
        self.snapshot = Snapshot()
        self._secrets = secrets
        self._reload_lock = asyncio.Lock()
        # Emitted with the new snapshot after every reload (e.g. to refresh model lists).
        self.on_reload: Signal[[Snapshot]] = Signal()
        # Emitted with the new revision after this process changed the core data (e.g. to broadcast it).
        self.on_change: Signal[[int]] = Signal()

    async def reload(self) -> Snapshot:
        async with self._reload_lock:
            self.snapshot = await load_snapshot(self._secrets)
        self.on_reload.emit(self.snapshot)
        return self.snapshot

    async def changed(self) -> None:
        """Called after this process changed the core data: bump the revision, reload now."""
        revision = await bump_revision()
        await self.reload()
        self.on_change.emit(revision)

    async def reload_if_stale(self) -> bool:
        """Reload when another process bumped the revision; True if it did."""
        row = await CatalogRevision.get_or_none(id=1)
        current = row.revision if row else 0
        if current != self.snapshot.revision:
            await self.reload()
            return True
        return False

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload_if_stale()
            except Exception as exc:  # the database may be briefly away: keep serving the old snapshot
                log.warning("catalog refresh failed: %s", exc)
