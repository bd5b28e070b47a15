"""Admin operations on the core database, shared by the GraphQL API and the CLI.

Every change bumps the catalog revision, so the /v1 hot path of this and every other process
picks it up (this process at once, others within the poll interval or via Redis).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.models import Model
from tortoise.queryset import QuerySet
from tortoise.transactions import in_transaction

from router.auth import api_key_prefix, generate_api_key, hash_api_key
from router.catalog import bump_revision
from router.config import ConfigFile, PriceSpec
from router.crypto import SecretBox, SecretError
from router.limits import BudgetPeriod, Limits, check_limits
from router.models.core import Backend, ModelPrice, Permission, Script, ScriptType, User
from router.protocols.translate import BACKEND_APIS, unknown_apis
from router.upstream_auth import api_key_problem, auth_header_problem, normal_auth_header
from router.urls import UrlError, check_http_url, redact_url


class ServiceError(Exception):
    """A refused admin operation; the subclass says why, its `code` is the admin API's extensions.code.

    `field`: the input field at fault; `extra`: more extensions (e.g. `line`). The CLI prints the message.
    """

    code: ClassVar[str]

    def __init__(self, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra


class NotFoundError(ServiceError):
    code = "NOT_FOUND"


class ConflictError(ServiceError):
    code = "CONFLICT"


class BadInputError(ServiceError):
    code = "BAD_USER_INPUT"


def not_found(kind: str, ident: Any) -> ServiceError:
    return NotFoundError(f"{kind} {ident} does not exist", "id")


_M = TypeVar("_M", bound=Model)


async def _get(model: type[_M], row_id: int | str, kind: str) -> _M:
    """The row with this id, or NotFoundError naming `kind`."""
    row = await model.get_or_none(id=_int_id(row_id, kind))
    if row is None:
        raise not_found(kind, row_id)
    return row


_NAME = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")


def check_name(name: str, field: str = "name") -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise BadInputError(f"{field} must be 1-128 letters, digits or '_', '.', '@', '-'", field)
    return name


def check_base_url(url: str, field: str = "baseUrl") -> str:
    try:
        return check_http_url(url or "", field)
    except UrlError as exc:
        raise BadInputError(str(exc), field) from None


def check_weight(weight: int, field: str = "weight") -> int:
    if weight < 0:
        raise BadInputError(f"{field} must not be negative", field)
    return weight


def check_apis(apis: Iterable[str] | None) -> list[str] | None:
    """The request formats a backend speaks, deduplicated in canonical order; None = all of them."""
    if apis is None:
        return None
    given = list(apis)
    if not given or unknown_apis(given):
        raise BadInputError(f"apis must list one or more of {', '.join(BACKEND_APIS)}", "apis")
    return [api for api in BACKEND_APIS if api in given]


def check_auth_header(name: str | None) -> str | None:
    """A backend's authHeader as stored (lower case); None or "": chosen from the URL."""
    problem = auth_header_problem(name or "")
    if problem:
        raise BadInputError(f"authHeader {problem}", "authHeader")
    return normal_auth_header(name)


def check_api_key(key: str | None) -> str | None:
    """An upstream key as it will be sent (None or "": no key)."""
    problem = api_key_problem(key or "")
    if problem:
        raise BadInputError(f"apiKey {problem}", "apiKey")
    return key or None


def check_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if not re.match(r"^[^@\s]+@[^@\s]+$", email):
        raise BadInputError(f"email {email!r} is not an e-mail address", "email")
    return email


class AdminService:
    """The operations; `on_change` reloads this process's catalog (and broadcasts, when configured)."""

    def __init__(self, on_change: Callable[[], Awaitable[Any]] | None = None, secrets: SecretBox | None = None) -> None:
        self._on_change = on_change or bump_revision
        self._secrets = secrets or SecretBox()  # upstream API keys are stored sealed with it

    async def changed(self) -> None:
        await self._on_change()

    async def _saved(self, row: _M) -> _M:
        """Save a changed row and tell the catalog."""
        await row.save()
        await self.changed()
        return row

    async def _deleted(self, row: Model) -> None:
        await row.delete()
        await self.changed()

    # --- users ---

    async def get_user(self, user_id: int | str) -> User:
        return await _get(User, user_id, "user")

    async def get_user_by_name(self, name: str) -> User:
        user = await User.get_or_none(name=name)
        if user is None:
            raise NotFoundError(f"user {name!r} does not exist", "name")
        return user

    async def create_user(
        self,
        name: str,
        email: str | None = None,
        all_backends: bool = False,
        is_active: bool = True,
        backend_names: Iterable[str] = (),
    ) -> tuple[User, str]:
        """A new user and its API key (the only time the key exists in clear)."""
        name = check_name(name)
        email = check_email(email)
        async with in_transaction("core"):
            if await User.filter(name=name).exists():
                raise ConflictError(f"a user named {name!r} already exists", "name")
            backends = await self._backends_named(backend_names)
            user, key = await _insert_user(name, email, all_backends, is_active, backends)
        await self.changed()
        return user, key

    async def import_users(self, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Create many users at once, all or nothing. Each row: name, email, permissions ("*" or "a,b").

        A bad row raises ServiceError naming the row (1-based, as in the file) and nothing is created.
        """
        seen: set[str] = set()
        planned = []
        for number, row in enumerate(rows, start=1):
            where = f"row {number}"
            try:
                name = check_name(str(row.get("name") or row.get("username") or ""), "username")
                email = check_email(row.get("email") or None)
                all_backends, backend_names = parse_permissions(row.get("permissions"))
            except ServiceError as exc:
                raise type(exc)(f"{where}: {exc.message}", exc.field, **exc.extra) from None
            if name in seen or await User.filter(name=name).exists():
                raise ConflictError(f"{where}: a user named {name!r} already exists", "username")
            seen.add(name)
            try:
                backends = await self._backends_named(backend_names)
            except ServiceError as exc:
                raise type(exc)(f"{where}: {exc.message}", exc.field, **exc.extra) from None
            planned.append((name, email, all_backends, backends))
        created = []
        async with in_transaction("core"):
            for name, email, all_backends, backends in planned:
                _, key = await _insert_user(name, email, all_backends, True, backends)
                created.append((name, key))
        await self.changed()
        return created

    async def update_user(self, user_id: int | str, **changes: Any) -> User:
        user = await self.get_user(user_id)
        if changes.get("name") is not None:
            name = check_name(changes["name"])
            if name != user.name and await User.filter(name=name).exists():
                raise ConflictError(f"a user named {name!r} already exists", "name")
            user.name = name
        if "email" in changes:
            user.email = check_email(changes["email"])
        for attr in ("is_active", "all_backends"):
            if changes.get(attr) is not None:
                setattr(user, attr, bool(changes[attr]))
        return await self._saved(user)

    async def delete_user(self, user_id: int | str) -> None:
        user = await self.get_user(user_id)
        await self._deleted(user)  # permissions and scripts go with it (ON DELETE CASCADE)

    async def regenerate_key(self, user_id: int | str) -> tuple[User, str]:
        user = await self.get_user(user_id)
        key = generate_api_key()
        user.api_key_hash = hash_api_key(key)
        user.api_key_prefix = api_key_prefix(key)
        return await self._saved(user), key

    async def set_permissions(self, user_id: int | str, all_backends: bool, backend_names: Iterable[str]) -> User:
        """Replace a user's permissions: every backend, or exactly the named ones."""
        user = await self.get_user(user_id)
        async with in_transaction("core"):
            backends = await self._backends_named(backend_names)
            user.all_backends = all_backends
            await user.save()
            await Permission.filter(user_id=user.id).delete()
            for backend in backends:
                await Permission.create(user=user, backend=backend)
        await self.changed()
        return user

    async def _backends_named(self, names: Iterable[str]) -> list[Backend]:
        names = [n.strip() for n in names if n.strip()]
        backends = await Backend.filter(name__in=names) if names else []
        missing = set(names) - {b.name for b in backends}
        if missing:
            raise NotFoundError(f"no backend named {', '.join(sorted(missing))}", "permissions")
        return list(backends)

    # --- backends ---

    async def get_backend(self, backend_id: int | str) -> Backend:
        return await _get(Backend, backend_id, "backend")

    async def create_backend(self, **fields: Any) -> Backend:
        values = self._backend_values(fields, creating=True)
        if await Backend.filter(name=values["name"]).exists():
            raise ConflictError(f"a backend named {values['name']!r} already exists", "name")
        try:
            backend = await Backend.create(**values)
        except IntegrityError:
            raise ConflictError(f"a backend named {values['name']!r} already exists", "name") from None
        await self.changed()
        return backend

    async def update_backend(self, backend_id: int | str, **fields: Any) -> Backend:
        backend = await self.get_backend(backend_id)
        values = self._backend_values(fields, creating=False)
        if values.get("base_url") == redact_url(backend.base_url):
            del values["base_url"]  # the redacted URL as shown (e.g. a form sent back): keep its credentials
        renamed = "name" in values and values["name"] != backend.name
        if renamed and await Backend.filter(name=values["name"]).exists():
            raise ConflictError(f"a backend named {values['name']!r} already exists", "name")
        for attr, value in values.items():
            setattr(backend, attr, value)
        return await self._saved(backend)

    async def delete_backend(self, backend_id: int | str) -> None:
        backend = await self.get_backend(backend_id)
        await self._deleted(backend)

    def _backend_values(self, fields: dict[str, Any], creating: bool) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if creating or fields.get("name") is not None:
            values["name"] = check_name(fields.get("name") or "")
        if creating or fields.get("base_url") is not None:
            values["base_url"] = check_base_url(fields.get("base_url") or "")
        if fields.get("weight") is not None:
            values["weight"] = check_weight(fields["weight"])
        if fields.get("is_active") is not None:
            values["is_active"] = bool(fields["is_active"])
        if "api_key" in fields and (creating or fields["api_key"] is not None):
            values["api_key"] = self._secrets.seal(check_api_key(fields["api_key"]))  # "" clears the key
        if "model_filter" in fields:
            values["model_filter"] = (fields["model_filter"] or "").strip() or None
        for attr in ("model_override", "model_append"):
            if attr in fields:
                models = fields[attr]
                if models is not None and not all(isinstance(m, str) and m.strip() for m in models):
                    field = _camel(attr)
                    raise BadInputError(f"{field} must hold non-empty model names", field)
                values[attr] = [m.strip() for m in models] if models is not None else None
        if "apis" in fields:
            values["apis"] = check_apis(fields["apis"])
        if "auth_header" in fields:
            values["auth_header"] = check_auth_header(fields["auth_header"])
        return values

    async def sync_backends(self, config: ConfigFile, prune: bool = False) -> list[tuple[int, str]]:
        """Make the backends match config.yaml by name; returns one (log level, message) per change.

        Servers in the file are created, updated and (re)activated; a disabled server (unset
        `${VAR}`) is deactivated if it exists. With `prune` (or `prune: true` in the file),
        every other active backend is deactivated: the file is the whole truth.
        """
        changes: list[tuple[int, str]] = []
        async with in_transaction("core"):
            for spec in config.servers:
                values: dict[str, Any] = {
                    "base_url": spec.base_url,
                    "api_key": spec.api_key,
                    "model_filter": spec.model_filter,
                    "model_override": spec.model_override,
                    "model_append": spec.model_append,
                    "weight": spec.weight,
                    "apis": spec.apis,
                    "auth_header": spec.auth_header,
                    "is_active": True,
                }
                backend = await Backend.get_or_none(name=spec.name)
                if backend is None:
                    await Backend.create(name=spec.name, **{**values, "api_key": self._secrets.seal(spec.api_key)})
                    changes.append((logging.INFO, f"backend {spec.name}: created from the config file"))
                    continue
                differing = [attr for attr, value in values.items() if self._stored(backend, attr) != value]
                if differing:
                    await Backend.filter(id=backend.id).update(
                        **{**values, "api_key": self._secrets.seal(spec.api_key)}
                    )
                    what = ", ".join("reactivated" if a == "is_active" else _camel(a) for a in differing)
                    changes.append((logging.INFO, f"backend {spec.name}: updated from the config file ({what})"))
            for server in config.disabled:
                backend = await Backend.get_or_none(name=server.name)
                if backend is None:
                    changes.append((logging.WARNING, f"server {server.name} not synced: {server.reason}"))
                elif backend.is_active:
                    await Backend.filter(id=backend.id).update(is_active=False)
                    changes.append((logging.WARNING, f"backend {server.name}: deactivated: {server.reason}"))
                else:
                    changes.append((logging.WARNING, f"backend {server.name}: stays inactive: {server.reason}"))
            if prune or config.prune:
                for backend in await Backend.filter(is_active=True).exclude(name__in=list(config.names)):
                    await Backend.filter(id=backend.id).update(is_active=False)
                    message = f"backend {backend.name}: deactivated (not in the config file; prune)"
                    changes.append((logging.WARNING, message))
        if changes:
            await self.changed()
        return changes

    def _stored(self, backend: Backend, attr: str) -> Any:
        """A backend's value as config.yaml would give it (its API key decrypted, if it can be)."""
        value = getattr(backend, attr)
        if attr != "api_key":
            return value
        try:
            return self._secrets.open(value)
        except SecretError:
            return None  # unreadable: counts as changed, so the file's key replaces it

    # --- permissions ---

    async def create_permission(self, user_id: int | str, backend_id: int | str) -> Permission:
        user = await self.get_user(user_id)
        backend = await self.get_backend(backend_id)
        if await Permission.filter(user_id=user.id, backend_id=backend.id).exists():
            raise ConflictError(f"user {user.name!r} already has backend {backend.name!r}", "backendId")
        try:
            permission = await Permission.create(user=user, backend=backend)
        except IntegrityError:
            raise ConflictError("permission already exists", "backendId") from None
        await self.changed()
        return permission

    async def delete_permission(self, user_id: int | str, backend_id: int | str) -> bool:
        deleted = await Permission.filter(
            user_id=_int_id(user_id, "user"), backend_id=_int_id(backend_id, "backend")
        ).delete()
        if not deleted:
            raise NotFoundError(f"user {user_id} has no permission for backend {backend_id}", "backendId")
        await self.changed()
        return True

    # --- scripts (syntax is checked by the caller, which knows the engine) ---

    async def get_script(self, script_id: int | str) -> Script:
        return await _get(Script, script_id, "script")

    async def check_script_targets(
        self, script_type: ScriptType, user_id: int | str | None, backend_id: int | str | None
    ) -> tuple[int | None, int | None]:
        """The (user id, backend id) a script of this type needs; refused when missing or extra."""
        needs_user = script_type in (ScriptType.PER_USER, ScriptType.PER_USER_BACKEND)
        needs_backend = script_type in (ScriptType.PER_BACKEND, ScriptType.PER_USER_BACKEND)
        if needs_user and user_id is None:
            raise BadInputError(f"a {script_type.value} script needs userId", "userId")
        if needs_backend and backend_id is None:
            raise BadInputError(f"a {script_type.value} script needs backendId", "backendId")
        uid = (await self.get_user(user_id)).id if needs_user and user_id is not None else None
        bid = (await self.get_backend(backend_id)).id if needs_backend and backend_id is not None else None
        return uid, bid

    async def create_script(self, **fields: Any) -> Script:
        name = (fields.get("name") or "").strip()
        if not name:
            raise BadInputError("name must not be empty", "name")
        script_type = ScriptType(fields["type"])
        uid, bid = await self.check_script_targets(script_type, fields.get("user_id"), fields.get("backend_id"))
        script = await Script.create(
            name=name,
            type=script_type,
            user_id=uid,
            backend_id=bid,
            code=fields["code"],
            is_active=bool(fields.get("is_active") or False),
            priority=fields.get("priority") or 0,
        )
        await self.changed()
        return script

    async def update_script(self, script_id: int | str, **fields: Any) -> Script:
        script = await self.get_script(script_id)
        if fields.get("name") is not None:
            if not fields["name"].strip():
                raise BadInputError("name must not be empty", "name")
            script.name = fields["name"].strip()
        if fields.get("code") is not None:
            script.code = fields["code"]
        if fields.get("priority") is not None:
            script.priority = fields["priority"]
        if fields.get("is_active") is not None:
            script.is_active = bool(fields["is_active"])
        if fields.get("user_id") is not None or fields.get("backend_id") is not None:
            uid, bid = await self.check_script_targets(
                script.type,
                fields.get("user_id") if fields.get("user_id") is not None else script.user_id,
                fields.get("backend_id") if fields.get("backend_id") is not None else script.backend_id,
            )
            script.user_id, script.backend_id = uid, bid
        return await self._saved(script)

    async def delete_script(self, script_id: int | str) -> None:
        script = await self.get_script(script_id)
        await self._deleted(script)

    # --- limits ---

    async def set_user_limits(self, user_id: int | str, limits: Limits) -> User:
        """Replace a user's limits as a whole (None fields: unlimited)."""
        user = await self.get_user(user_id)
        _checked(limits, for_backend=False)
        user.rpm, user.tpm, user.max_concurrent = limits.rpm, limits.tpm, limits.max_concurrent
        user.budget_usd = limits.budget_usd
        user.budget_period = limits.budget_period.value if limits.budget_period else None
        return await self._saved(user)

    async def set_backend_limits(self, backend_id: int | str, limits: Limits) -> Backend:
        backend = await self.get_backend(backend_id)
        _checked(limits, for_backend=True)
        backend.rpm, backend.tpm, backend.max_concurrent = limits.rpm, limits.tpm, limits.max_concurrent
        return await self._saved(backend)

    # --- model prices ---

    async def list_prices(self) -> list[ModelPrice]:
        return await ModelPrice.all().order_by("model", "id")

    async def get_price(self, price_id: int | str) -> ModelPrice:
        return await _get(ModelPrice, price_id, "model price")

    async def create_price(self, spec: PriceSpec, backend_id: int | str | None) -> ModelPrice:
        values = await self._price_values(spec, backend_id)
        await self._check_price_unique(values["model"], values["backend_id"], None)
        price = await ModelPrice.create(**values)
        await self.changed()
        return price

    async def update_price(self, price_id: int | str, spec: PriceSpec, backend_id: int | str | None) -> ModelPrice:
        price = await self.get_price(price_id)
        values = await self._price_values(spec, backend_id)
        await self._check_price_unique(values["model"], values["backend_id"], price.id)
        await ModelPrice.filter(id=price.id).update(**values)
        await self.changed()
        return await self.get_price(price.id)

    async def delete_price(self, price_id: int | str) -> None:
        price = await self.get_price(price_id)
        await self._deleted(price)

    async def sync_prices(self, specs: list[PriceSpec], skip_backends: set[str] | None = None) -> None:
        """Create or update the prices of config.yaml by (model, backend); others are left alone.

        Prices of a server in `skip_backends` (disabled in the file) are skipped.
        """
        async with in_transaction("core"):
            for spec in specs:
                backend_id = None
                if spec.backend is not None and spec.backend in (skip_backends or ()):
                    continue
                if spec.backend is not None:
                    backend = await Backend.get_or_none(name=spec.backend)
                    if backend is None:
                        raise NotFoundError(f"prices: no server named {spec.backend!r}", "backend")
                    backend_id = backend.id
                values = await self._price_values(spec, backend_id)
                existing = await ModelPrice.get_or_none(model=values["model"], backend_id=backend_id)
                if existing is None:
                    await ModelPrice.create(**values)
                else:
                    await ModelPrice.filter(id=existing.id).update(**values)
        await self.changed()

    async def _price_values(self, spec: PriceSpec, backend_id: int | str | None) -> dict[str, Any]:
        model = (spec.model or "").strip()
        if not model or len(model) > 256:
            raise BadInputError("model must be a model name or glob of 1-256 characters", "model")
        for field, value in (
            ("inputPerMTok", spec.input_per_mtok),
            ("outputPerMTok", spec.output_per_mtok),
            ("cachedInputPerMTok", spec.cached_input_per_mtok),
            ("cacheWritePerMTok", spec.cache_write_per_mtok),
        ):
            if value is not None and not (0 <= value <= 1e6):
                raise BadInputError(f"{field} must be a number from 0 to 1000000 (USD)", field)
        bid = (await self.get_backend(backend_id)).id if backend_id is not None else None
        return {
            "model": model,
            "backend_id": bid,
            "input_per_mtok": spec.input_per_mtok,
            "output_per_mtok": spec.output_per_mtok,
            "cached_input_per_mtok": spec.cached_input_per_mtok,
            "cache_write_per_mtok": spec.cache_write_per_mtok,
        }

    @staticmethod
    async def _check_price_unique(model: str, backend_id: int | None, own_id: int | None) -> None:
        clash = await ModelPrice.filter(model=model, backend_id=backend_id).exclude(id=own_id or 0).exists()
        if clash:
            where = f"backend {backend_id}" if backend_id is not None else "every backend"
            raise ConflictError(f"a price for {model!r} on {where} already exists", "model")

    # --- listings (read-only; ids that are not integers match nothing) ---

    async def list_users(self, search: str | None = None) -> list[User]:
        return await _searched(User.all(), search, ("name", "email")).order_by("id")

    async def list_backends(self, search: str | None = None) -> list[Backend]:
        return await _searched(Backend.all(), search, ("name", "base_url")).order_by("id")

    async def page_users(self, search: str | None, first: int, after_id: int | None, active: bool | None) -> Page:
        """Users in id order (oldest first), `first` at a time after `after_id`, name/e-mail containing `search`."""
        query = _searched(User.all(), search, ("name", "email"))
        return await _page(query if active is None else query.filter(is_active=active), first, after_id)

    async def page_backends(self, search: str | None, first: int, after_id: int | None, active: bool | None) -> Page:
        """Backends in id order, `first` at a time after `after_id`, name/base URL containing `search`."""
        query = _searched(Backend.all(), search, ("name", "base_url"))
        return await _page(query if active is None else query.filter(is_active=active), first, after_id)

    async def page_scripts(
        self, search: str | None, first: int, after_id: int | None, script_type: ScriptType | None, active: bool | None
    ) -> Page:
        """Scripts in id order, `first` at a time after `after_id`, name containing `search`."""
        query = _searched(Script.all(), search, ("name",))
        if script_type is not None:
            query = query.filter(type=script_type)
        return await _page(query if active is None else query.filter(is_active=active), first, after_id)

    async def list_permissions(
        self, user_id: int | str | None = None, backend_id: int | str | None = None
    ) -> list[Permission]:
        query = Permission.all()
        for column, value in (("user_id", user_id), ("backend_id", backend_id)):
            if value is not None:
                ident = _maybe_int(value)
                if ident is None:
                    return []
                query = query.filter(**{column: ident})
        return await query.order_by("id")

    async def list_scripts(
        self, script_type: ScriptType | None = None, active_only: bool = False, search: str | None = None
    ) -> list[Script]:
        query = _searched(Script.all(), search, ("name",))
        if script_type is not None:
            query = query.filter(type=script_type)
        if active_only:
            query = query.filter(is_active=True)
        return await query.order_by("type", "priority", "id")

    async def users_by_id(self, ids: Iterable[int]) -> dict[int, User]:
        return {u.id: u for u in await User.filter(id__in=list(ids))}

    async def backends_by_id(self, ids: Iterable[int]) -> dict[int, Backend]:
        return {b.id: b for b in await Backend.filter(id__in=list(ids))}


async def _insert_user(
    name: str, email: str | None, all_backends: bool, is_active: bool, backends: list[Backend]
) -> tuple[User, str]:
    """Create a user with a new key and its permissions (inside the caller's transaction)."""
    key = generate_api_key()
    user = await User.create(
        name=name,
        email=email,
        all_backends=all_backends,
        is_active=is_active,
        api_key_hash=hash_api_key(key),
        api_key_prefix=api_key_prefix(key),
    )
    for backend in backends:
        await Permission.create(user=user, backend=backend)
    return user, key


def parse_permissions(value: Any) -> tuple[bool, list[str]]:
    """LLMsRouter's permission strings: "*" (default) for every backend, or "a,b" backend names."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "*")):
        return True, []
    if isinstance(value, list):
        names = [str(v).strip() for v in value]
    elif isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
    else:
        raise BadInputError("permissions must be '*' or comma-separated backend names", "permissions")
    if "*" in names:
        return True, []
    return False, [n for n in names if n]


def _checked(limits: Limits, for_backend: bool) -> Limits:
    try:
        return check_limits(limits, for_backend)
    except ValueError as exc:
        field = str(exc).split(" ", 1)[0]
        raise BadInputError(str(exc), field) from None


def parse_budget_period(value: str | None) -> BudgetPeriod | None:
    if value is None:
        return None
    try:
        return BudgetPeriod(value.upper())
    except ValueError:
        raise BadInputError("budgetPeriod must be DAY, WEEK or MONTH", "budgetPeriod") from None


def _int_id(value: int | str | None, kind: str) -> int:
    try:
        return int(value if value is not None else "")
    except ValueError:
        raise NotFoundError(f"{kind} {value!r} does not exist", "id") from None


def _maybe_int(value: int | str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _camel(attr: str) -> str:
    head, *rest = attr.split("_")
    return head + "".join(part.title() for part in rest)


MAX_SEARCH_LENGTH = 200


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows, how many match in all, and the id to continue after (None: last page)."""

    items: list[Any]
    total_count: int
    next_after_id: int | None


def _searched(query: QuerySet[Any], search: str | None, columns: tuple[str, ...]) -> QuerySet[Any]:
    """Rows with `search` in any of `columns`, case-insensitively (no search: all rows)."""
    if search is None or not search.strip():
        return query
    if len(search) > MAX_SEARCH_LENGTH:
        raise BadInputError(f"search must be at most {MAX_SEARCH_LENGTH} characters", "search")
    term = search.strip()
    condition = Q(**{f"{columns[0]}__icontains": term})
    for column in columns[1:]:
        condition |= Q(**{f"{column}__icontains": term})
    return query.filter(condition)


async def _page(query: QuerySet[Any], first: int, after_id: int | None) -> Page:
    total = await query.count()
    rows = await (query.filter(id__gt=after_id) if after_id is not None else query).order_by("id").limit(first + 1)
    more = len(rows) > first
    rows = rows[:first]
    return Page(rows, total, rows[-1].id if more else None)
