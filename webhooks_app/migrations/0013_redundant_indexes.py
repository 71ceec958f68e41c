"""Drop indexes that another index already covers; each one cost every emit() (and every
recorded attempt) an index insert, and SQLite's prune an index delete:

- the foreign keys' single-column indexes on Delivery (event, endpoint) and
  DeliveryAttempt (delivery): webhooks_delivery_unique, webhooks_dlv_endpoint and
  webhooks_attempt_unique start with those columns, so cascades and joins still use one;
- Event.tenant's: webhooks_event_tenant starts with it;
- on PostgreSQL, the LIKE-only ``varchar_pattern_ops`` copies Django adds for indexed
  CharFields (Event.tenant, Event.public_id); nothing here filters them with LIKE.

Each is dropped only under the name Django gave it (an index of that column added by
hand stays), and not by ``AlterField``: that would drop and re-validate the foreign keys
on PostgreSQL (a write-blocking scan of a big table) and rebuild the tables on SQLite. On
PostgreSQL the drops are ``CONCURRENTLY`` (so the migration is not atomic): a plain DROP
INDEX would queue every emit() behind any long transaction on these tables. Other
databases are left as they are. Event.public_id keeps its unique index.
"""

import django.db.models.deletion
from django.db import migrations, models

# (table, column): Django's single-column indexes of it are dropped.
REDUNDANT = [
    ("webhooks_app_delivery", "event_id"),
    ("webhooks_app_delivery", "endpoint_id"),
    ("webhooks_app_deliveryattempt", "delivery_id"),
    ("webhooks_app_event", "tenant"),
    ("webhooks_app_event", "public_id"),  # PostgreSQL's _like copy only (unique stays)
]


def _django_names(schema_editor, table: str, column: str) -> set[str]:
    """The names Django gives an index of ``column`` (and PostgreSQL's LIKE copy)."""
    return {
        schema_editor._create_index_name(table, [column]),
        schema_editor._create_index_name(table, [column], suffix="_like"),
    }


def drop_redundant_indexes(apps, schema_editor) -> None:
    conn = schema_editor.connection
    if conn.vendor not in ("postgresql", "sqlite"):
        return
    drop = "DROP INDEX CONCURRENTLY IF EXISTS" if conn.vendor == "postgresql" else "DROP INDEX"
    with conn.cursor() as cursor:
        for table, column in REDUNDANT:
            found = conn.introspection.get_constraints(cursor, table)
            names = _django_names(schema_editor, table, column)
            for name, info in found.items():
                if (
                    name in names
                    and info["columns"] == [column]
                    and info["index"]
                    and not info["unique"]
                    and not info["primary_key"]
                ):
                    schema_editor.execute(f"{drop} {conn.ops.quote_name(name)}")


def restore_indexes(apps, schema_editor) -> None:
    """Back to 0012: the indexes as Django created them (``apps`` is 0012's state), those
    that are missing."""
    conn = schema_editor.connection
    if conn.vendor not in ("postgresql", "sqlite"):
        return
    fields = {
        "webhooks_app_delivery": ("Delivery", ["event", "endpoint"]),
        "webhooks_app_deliveryattempt": ("DeliveryAttempt", ["delivery"]),
        "webhooks_app_event": ("Event", ["tenant"]),
    }
    with conn.cursor() as cursor:
        existing = {
            table: set(conn.introspection.get_constraints(cursor, table)) for table in fields
        }
    for table, (name, names) in fields.items():
        model = apps.get_model("webhooks_app", name)
        for field_name in names:
            field = model._meta.get_field(field_name)
            if schema_editor._create_index_name(table, [field.column]) not in existing[table]:
                schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))
    like_sql = getattr(schema_editor, "_create_like_index_sql", None)  # PostgreSQL's
    if like_sql is not None:
        event = apps.get_model("webhooks_app", "Event")
        table = event._meta.db_table
        for field_name in ("tenant", "public_id"):
            like_name = schema_editor._create_index_name(table, [field_name], suffix="_like")
            like = like_sql(event, event._meta.get_field(field_name))
            if like is not None and like_name not in existing[table]:
                schema_editor.execute(like)


def fk(to: str, related_name: str) -> models.ForeignKey:
    return models.ForeignKey(
        db_index=False,
        on_delete=django.db.models.deletion.CASCADE,
        related_name=related_name,
        to=to,
    )


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("webhooks_app", "0012_routing_stamp"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(drop_redundant_indexes, restore_indexes)
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="tenant",
                    field=models.CharField(blank=True, default="", max_length=100),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="endpoint",
                    field=fk("webhooks_app.endpoint", "deliveries"),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="event",
                    field=fk("webhooks_app.event", "deliveries"),
                ),
                migrations.AlterField(
                    model_name="deliveryattempt",
                    name="delivery",
                    field=fk("webhooks_app.delivery", "attempt_log"),
                ),
            ],
        ),
    ]
