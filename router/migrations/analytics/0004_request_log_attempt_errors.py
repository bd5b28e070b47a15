from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('analytics', '0003_cost_and_rollups')]

    initial = False

    operations = [
        ops.AddField(
            model_name='RequestLog',
            name='attempt_errors',
            field=fields.TextField(null=True, unique=False),
        ),
    ]
