"""The analytics database: one row per finished /v1 request."""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model


class RequestLog(Model):
    id = fields.BigIntField(primary_key=True)
    request_id = fields.CharField(max_length=128, db_index=True)
    created_at = fields.DatetimeField(db_index=True)
    user_id = fields.IntField(null=True)
    user_name = fields.CharField(max_length=128, null=True)
    backend_id = fields.IntField(null=True)
    backend_name = fields.CharField(max_length=128, null=True)
    model = fields.CharField(max_length=256, null=True)
    endpoint = fields.CharField(max_length=64)
    status_code = fields.IntField()
    stream = fields.BooleanField(default=False)
    prompt_tokens = fields.IntField(default=0)
    completion_tokens = fields.IntField(default=0)
    total_tokens = fields.IntField(default=0)
    cached_tokens = fields.IntField(default=0)
    cache_write_tokens = fields.IntField(default=0)
    reasoning_tokens = fields.IntField(default=0)
    # The Responses API's response id: which backend (and user) a stored response belongs to.
    response_id = fields.CharField(max_length=128, null=True, db_index=True)
    latency_ms = fields.FloatField(default=0.0)
    ttft_ms = fields.FloatField(null=True)
    attempts = fields.IntField(default=1)
    error = fields.TextField(null=True)
    # The upstream API path a translated request went to (router.protocols.translate); null = as called.
    translated_to = fields.CharField(max_length=64, null=True)
    cost_usd = fields.FloatField(null=True)
    # Why each failed attempt failed (a JSON list of strings, in order), also when a later attempt succeeded.
    attempt_errors = fields.TextField(null=True)

    class Meta:
        app = "analytics"
        table = "request_logs"
        indexes = (
            Index(fields=("user_id", "created_at")),
            Index(fields=("backend_id", "created_at")),
        )


class RollupTotals(Model):
    """What both rollup levels hold per time bucket, user, backend and model.

    `user_id`/`backend_id` 0 and `model` "" stand for "none" (NULL would defeat the unique key).
    """

    id = fields.BigIntField(primary_key=True)
    user_id = fields.IntField(default=0)
    backend_id = fields.IntField(default=0)
    model = fields.CharField(max_length=256, default="")
    user_name = fields.CharField(max_length=128, null=True)
    backend_name = fields.CharField(max_length=128, null=True)
    requests = fields.BigIntField(default=0)
    errors = fields.BigIntField(default=0)
    prompt_tokens = fields.BigIntField(default=0)
    completion_tokens = fields.BigIntField(default=0)
    total_tokens = fields.BigIntField(default=0)
    cached_tokens = fields.BigIntField(default=0)
    reasoning_tokens = fields.BigIntField(default=0)
    cost_usd = fields.FloatField(default=0.0)
    latency_ms_sum = fields.FloatField(default=0.0)

    class Meta:
        abstract = True


class UsageRollup(RollupTotals):
    """Request-log totals per UTC hour, user, backend and model, updated with every written batch.

    Spend and usage over long ranges read these instead of scanning the request log.
    """

    hour = fields.DatetimeField()

    class Meta:
        app = "analytics"
        table = "usage_rollups"
        unique_together = (("hour", "user_id", "backend_id", "model"),)
        indexes = (Index(fields=("user_id", "hour")), Index(fields=("backend_id", "hour")))


class UsageRollupDaily(RollupTotals):
    """The same totals per UTC day (midnight), updated with every written batch alongside the hourly ones.

    Ranges of whole days read these: ~24 times fewer rows than the hourly level.
    """

    day = fields.DatetimeField()

    class Meta:
        app = "analytics"
        table = "usage_rollups_daily"
        unique_together = (("day", "user_id", "backend_id", "model"),)
        indexes = (Index(fields=("user_id", "day")), Index(fields=("backend_id", "day")))
