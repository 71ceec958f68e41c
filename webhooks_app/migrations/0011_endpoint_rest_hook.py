from django.db import migrations, models


def mark_existing_hooks(apps, schema_editor):
    # Subscriptions made by hooks/ before this field existed carry the name it gives them.
    Endpoint = apps.get_model("webhooks_app", "Endpoint")
    Endpoint.objects.filter(name__startswith="REST hook: ").update(rest_hook=True)


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks_app", "0010_triggers_filters_timers"),
    ]

    operations = [
        migrations.AddField(
            model_name="endpoint",
            name="rest_hook",
            field=models.BooleanField(
                default=False, editable=False, verbose_name="REST Hooks subscription"
            ),
        ),
        migrations.RunPython(mark_existing_hooks, migrations.RunPython.noop),
    ]
