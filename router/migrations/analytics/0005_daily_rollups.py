from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index


async def backfill_daily_rollups(apps, schema_editor) -> None:
    """Daily totals of the hourly rollups as they are (an upgraded database's whole history)."""
    conn = schema_editor.client
    if conn.capabilities.dialect == "postgres":
        day = "date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:  # the text Tortoise stores for an aware datetime, as router.usage.rollup_rows writes it
        day = "strftime('%Y-%m-%d 00:00:00+00:00', hour)"
    sums = "requests, errors, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, "
    sums += "cost_usd, latency_ms_sum"
    await conn.execute_script(
        f"INSERT INTO usage_rollups_daily (day, user_id, backend_id, model, user_name, backend_name, {sums}) "
        f"SELECT {day}, user_id, backend_id, model, MAX(user_name), MAX(backend_name), "
        + ", ".join(f"SUM({c})" for c in sums.split(", "))
        + " FROM usage_rollups GROUP BY 1, 2, 3, 4"
    )


class Migration(migrations.Migration):
    dependencies = [('analytics', '0004_request_log_attempt_errors')]

    initial = False

    operations = [
        ops.CreateModel(
            name='UsageRollupDaily',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
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
                ('day', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'usage_rollups_daily', 'app': 'analytics', 'unique_together': (('day', 'user_id', 'backend_id', 'model'),), 'indexes': [Index(fields=['user_id', 'day']), Index(fields=['backend_id', 'day'])], 'pk_attr': 'id', 'table_description': 'The same totals per UTC day (midnight), updated with every written batch alongside the hourly ones.'},
            bases=['RollupTotals'],
        ),
        ops.RunPython(backfill_daily_rollups, ops.RunPython.noop),
    ]
