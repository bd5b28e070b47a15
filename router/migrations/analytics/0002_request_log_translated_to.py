from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('analytics', '0001_initial')]

    initial = False

    operations = [
        ops.AddField(
            model_name='RequestLog',
            name='translated_to',
            field=fields.CharField(null=True, max_length=64),
        ),
    ]
