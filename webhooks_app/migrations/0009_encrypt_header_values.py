"""Custom header values are credentials: encrypt the ones stored in plain text."""

from django.db import migrations


def encrypt_values(apps, schema_editor):
    from webhooks_app import crypto

    Endpoint = apps.get_model("webhooks_app", "Endpoint")
    for endpoint in Endpoint.objects.exclude(headers={}).iterator():
        endpoint.headers = {k: crypto.encrypt(str(v)) for k, v in (endpoint.headers or {}).items()}
        endpoint.save(update_fields=["headers"])


def decrypt_values(apps, schema_editor):
    from webhooks_app import crypto

    Endpoint = apps.get_model("webhooks_app", "Endpoint")
    for endpoint in Endpoint.objects.exclude(headers={}).iterator():
        endpoint.headers = {k: crypto.decrypt(v) for k, v in (endpoint.headers or {}).items()}
        endpoint.save(update_fields=["headers"])


class Migration(migrations.Migration):
    dependencies = [("webhooks_app", "0008_payload_format_event_log")]

    operations = [migrations.RunPython(encrypt_values, decrypt_values)]
