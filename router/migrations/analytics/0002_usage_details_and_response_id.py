from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('analytics', '0001_initial')]

    initial = False

    operations = [
        ops.AddField(
            model_name='RequestLog',
            name='cache_write_tokens',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='RequestLog',
            name='cached_tokens',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='RequestLog',
            name='reasoning_tokens',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='RequestLog',
            name='response_id',
            field=fields.CharField(null=True, db_index=True, max_length=128),
        ),
    ]
