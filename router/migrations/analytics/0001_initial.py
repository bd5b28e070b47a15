from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='RequestLog',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('request_id', fields.CharField(db_index=True, max_length=128)),
                ('created_at', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ('user_id', fields.IntField(null=True)),
                ('user_name', fields.CharField(null=True, max_length=128)),
                ('backend_id', fields.IntField(null=True)),
                ('backend_name', fields.CharField(null=True, max_length=128)),
                ('model', fields.CharField(null=True, max_length=256)),
                ('endpoint', fields.CharField(max_length=64)),
                ('status_code', fields.IntField()),
                ('stream', fields.BooleanField(default=False)),
                ('prompt_tokens', fields.IntField(default=0)),
                ('completion_tokens', fields.IntField(default=0)),
                ('total_tokens', fields.IntField(default=0)),
                ('latency_ms', fields.FloatField(default=0.0)),
                ('ttft_ms', fields.FloatField(null=True)),
                ('attempts', fields.IntField(default=1)),
                ('error', fields.TextField(null=True, unique=False)),
            ],
            options={'table': 'request_logs', 'app': 'analytics', 'indexes': [Index(fields=['user_id', 'created_at']), Index(fields=['backend_id', 'created_at'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
