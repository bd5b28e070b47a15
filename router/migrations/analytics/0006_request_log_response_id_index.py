from tortoise import migrations
from tortoise.migrations import operations as ops

# 0002 declared request_logs.response_id with db_index=True, but AddField created no index:
# the affinity look-up after a restart (router.affinity.binding_from_log) scanned the whole log.
# IF NOT EXISTS: the same statement on SQLite and PostgreSQL, and harmless where the index exists.


class Migration(migrations.Migration):
    dependencies = [('analytics', '0005_daily_rollups')]

    initial = False

    operations = [
        ops.RunSQL(
            "CREATE INDEX IF NOT EXISTS idx_request_logs_response_id ON request_logs (response_id)",
            "DROP INDEX IF EXISTS idx_request_logs_response_id",
        ),
    ]
