"""The core database: who may use what, where requests go, and the scripts that rewrite them."""

from __future__ import annotations

from enum import StrEnum

from tortoise import fields
from tortoise.models import Model


class ScriptType(StrEnum):
    PER_USER = "PER_USER"
    PER_BACKEND = "PER_BACKEND"
    PER_USER_BACKEND = "PER_USER_BACKEND"


class User(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=128, unique=True)
    email = fields.CharField(max_length=255, null=True)
    is_active = fields.BooleanField(default=True)
    all_backends = fields.BooleanField(default=False)
    api_key_hash = fields.CharField(max_length=64, unique=True)
    api_key_prefix = fields.CharField(max_length=16)
    # Limits (null = unlimited); see router/limits.py.
    rpm = fields.IntField(null=True)
    tpm = fields.IntField(null=True)
    max_concurrent = fields.IntField(null=True)
    budget_usd = fields.FloatField(null=True)
    budget_period = fields.CharField(max_length=8, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    permissions: fields.ReverseRelation[Permission]
    scripts: fields.ReverseRelation[Script]

    class Meta:
        app = "core"
        table = "users"


class Backend(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=128, unique=True)
    base_url = fields.CharField(max_length=2048)
    api_key = fields.TextField(null=True)
    model_filter = fields.CharField(max_length=1024, null=True)
    model_override: fields.JSONField[list[str] | None] = fields.JSONField(null=True)
    model_append: fields.JSONField[list[str] | None] = fields.JSONField(null=True)
    weight = fields.IntField(default=1)
    is_active = fields.BooleanField(default=True)
    # The request formats it speaks natively (router.protocols.translate.BACKEND_APIS); null = all.
    apis: fields.JSONField[list[str] | None] = fields.JSONField(null=True)
    # The header the upstream key goes in (router/upstream_auth.py); null = chosen from base_url.
    auth_header = fields.CharField(max_length=64, null=True)
    # Limits (null = unlimited); see router/limits.py.
    rpm = fields.IntField(null=True)
    tpm = fields.IntField(null=True)
    max_concurrent = fields.IntField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    permissions: fields.ReverseRelation[Permission]
    scripts: fields.ReverseRelation[Script]

    class Meta:
        app = "core"
        table = "backends"

    def __str__(self) -> str:  # never shows the upstream key
        return f"Backend({self.name})"


class Permission(Model):
    id = fields.IntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "core.User", related_name="permissions", on_delete=fields.CASCADE
    )
    backend: fields.ForeignKeyRelation[Backend] = fields.ForeignKeyField(
        "core.Backend", related_name="permissions", on_delete=fields.CASCADE
    )
    # The foreign keys' columns, which Tortoise adds at run time.
    user_id: int
    backend_id: int
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        app = "core"
        table = "permissions"
        unique_together = (("user", "backend"),)


class Script(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=128)
    type = fields.CharEnumField(ScriptType, max_length=32)
    user: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        "core.User", related_name="scripts", null=True, on_delete=fields.CASCADE
    )
    backend: fields.ForeignKeyNullableRelation[Backend] = fields.ForeignKeyField(
        "core.Backend", related_name="scripts", null=True, on_delete=fields.CASCADE
    )
    user_id: int | None
    backend_id: int | None
    code = fields.TextField()
    is_active = fields.BooleanField(default=False)
    priority = fields.IntField(default=0)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        app = "core"
        table = "scripts"


class ModelPrice(Model):
    """USD per million tokens for a model name or glob, on one backend or (backend null) on all."""

    id = fields.IntField(primary_key=True)
    model = fields.CharField(max_length=256)
    backend: fields.ForeignKeyNullableRelation[Backend] = fields.ForeignKeyField(
        "core.Backend", related_name="prices", null=True, on_delete=fields.CASCADE
    )
    backend_id: int | None
    input_per_mtok = fields.FloatField()
    cached_input_per_mtok = fields.FloatField(null=True)
    cache_write_per_mtok = fields.FloatField(null=True)
    output_per_mtok = fields.FloatField()
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        app = "core"
        table = "model_prices"


class CatalogRevision(Model):
    """One row whose counter every admin change bumps, so other processes notice and reload."""

    id = fields.IntField(primary_key=True)
    revision = fields.BigIntField(default=0)

    class Meta:
        app = "core"
        table = "catalog_revision"
