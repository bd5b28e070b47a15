from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index


async def backfill_rollups(apps, schema_editor) -> None:
    """Hourly totals of the request log as it is, so usage over old hours reads the same from the rollups."""
    conn = schema_editor.client
    if conn.capabilities.dialect == "postgres":
        hour = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:  # the text Tortoise stores for an aware datetime, as router.usage.rollup_rows writes it
        hour = "strftime('%Y-%m-%d %H:00:00+00:00', created_at)"
    await conn.execute_script(
        "INSERT INTO usage_rollups (hour, user_id, backend_id, model, user_name, backend_name, requests, errors, "
        "prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, cost_usd, latency_ms_sum) "
        f"SELECT {hour}, COALESCE(user_id, 0), COALESCE(backend_id, 0), COALESCE(model, ''), MAX(user_name), "
        "MAX(backend_name), COUNT(*), SUM(CASE WHEN status_code >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END), "
        "SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens), SUM(cached_tokens), SUM(reasoning_tokens), "
        "COALESCE(SUM(cost_usd), 0), SUM(latency_ms) FROM request_logs GROUP BY 1, 2, 3, 4"
    )

class Migration(migrations.Migration):
    dependencies = [('analytics', '0002_request_log_translated_to'), ('analytics', '0002_usage_details_and_response_id')]

    initial = False

    operations = [
        ops.CreateModel(
            name='UsageRollup',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('hour', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('user_id', fields.IntField(default=0)),
                ('backend_id', fields.IntField(default=0)),
                ('model', fields.CharField(default='', max_length=256)),
                ('user_name', fields.CharField(null=True, max_length=128)),
                ('backend_name', fields.CharField(null=True, max_length=128)),
                ('requests', fields.BigIntField(default=0)),
                ('errors', fields.BigIntField(default=0)),
                ('prompt_tokens', fields.BigIntField(default=0)),
                ('completion_tokens', fields.BigIntField(default=0)),
                ('total_tokens', fields.BigIntField(default=0)),
                ('cached_tokens', fields.BigIntField(default=0)),
                ('reasoning_tokens', fields.BigIntField(default=0)),
                ('cost_usd', fields.FloatField(default=0.0)),
                ('latency_ms_sum', fields.FloatField(default=0.0)),
            ],
            options={'table': 'usage_rollups', 'app': 'analytics', 'unique_together': (('hour', 'user_id', 'backend_id', 'model'),), 'indexes': [Index(fields=['user_id', 'hour']), Index(fields=['backend_id', 'hour'])], 'pk_attr': 'id', 'table_description': 'Request-log totals per UTC hour, user, backend and model, updated with every written batch.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='RequestLog',
            name='cost_usd',
            field=fields.FloatField(null=True),
        ),
        ops.RunPython(backfill_rollups, ops.RunPython.noop),
    ]
