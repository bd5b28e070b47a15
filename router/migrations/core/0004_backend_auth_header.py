from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('core', '0003_limits_and_prices')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Backend',
            name='auth_header',
            field=fields.CharField(null=True, max_length=64),
        ),
    ]
