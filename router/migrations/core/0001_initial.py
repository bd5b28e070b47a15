from tortoise import migrations
from tortoise.migrations import operations as ops
from orjson import loads
from router.models.core import ScriptType
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from tortoise import fields

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='Backend',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('name', fields.CharField(unique=True, max_length=128)),
                ('base_url', fields.CharField(max_length=2048)),
                ('api_key', fields.TextField(null=True, unique=False)),
                ('model_filter', fields.CharField(null=True, max_length=1024)),
                ('model_override', fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads)),
                ('model_append', fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads)),
                ('weight', fields.IntField(default=1)),
                ('is_active', fields.BooleanField(default=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'backends', 'app': 'core', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='CatalogRevision',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('revision', fields.BigIntField(default=0)),
            ],
            options={'table': 'catalog_revision', 'app': 'core', 'pk_attr': 'id', 'table_description': 'One row whose counter every admin change bumps, so other processes notice and reload.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('name', fields.CharField(unique=True, max_length=128)),
                ('email', fields.CharField(null=True, max_length=255)),
                ('is_active', fields.BooleanField(default=True)),
                ('all_backends', fields.BooleanField(default=False)),
                ('api_key_hash', fields.CharField(unique=True, max_length=64)),
                ('api_key_prefix', fields.CharField(max_length=16)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'users', 'app': 'core', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Permission',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('core.User', source_field='user_id', db_constraint=True, to_field='id', related_name='permissions', on_delete=OnDelete.CASCADE)),
                ('backend', fields.ForeignKeyField('core.Backend', source_field='backend_id', db_constraint=True, to_field='id', related_name='permissions', on_delete=OnDelete.CASCADE)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'permissions', 'app': 'core', 'unique_together': (('user', 'backend'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Script',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=128)),
                ('type', fields.CharEnumField(description='PER_USER: PER_USER\nPER_BACKEND: PER_BACKEND\nPER_USER_BACKEND: PER_USER_BACKEND', enum_type=ScriptType, max_length=32)),
                ('user', fields.ForeignKeyField('core.User', source_field='user_id', null=True, db_constraint=True, to_field='id', related_name='scripts', on_delete=OnDelete.CASCADE)),
                ('backend', fields.ForeignKeyField('core.Backend', source_field='backend_id', null=True, db_constraint=True, to_field='id', related_name='scripts', on_delete=OnDelete.CASCADE)),
                ('code', fields.TextField(unique=False)),
                ('is_active', fields.BooleanField(default=False)),
                ('priority', fields.IntField(default=0)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'scripts', 'app': 'core', 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
