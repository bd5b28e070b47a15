from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('core', '0002_backend_apis')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ModelPrice',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('model', fields.CharField(max_length=256)),
                ('backend', fields.ForeignKeyField('core.Backend', source_field='backend_id', null=True, db_constraint=True, to_field='id', related_name='prices', on_delete=OnDelete.CASCADE)),
                ('input_per_mtok', fields.FloatField()),
                ('cached_input_per_mtok', fields.FloatField(null=True)),
                ('cache_write_per_mtok', fields.FloatField(null=True)),
                ('output_per_mtok', fields.FloatField()),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'model_prices', 'app': 'core', 'pk_attr': 'id', 'table_description': 'USD per million tokens for a model name or glob, on one backend or (backend null) on all.'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Backend',
            name='max_concurrent',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Backend',
            name='rpm',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Backend',
            name='tpm',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='User',
            name='budget_period',
            field=fields.CharField(null=True, max_length=8),
        ),
        ops.AddField(
            model_name='User',
            name='budget_usd',
            field=fields.FloatField(null=True),
        ),
        ops.AddField(
            model_name='User',
            name='max_concurrent',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='User',
            name='rpm',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='User',
            name='tpm',
            field=fields.IntField(null=True),
        ),
    ]
