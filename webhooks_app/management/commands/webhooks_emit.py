"""manage.py webhooks_emit <event_type> '<json data>' [--tenant T]"""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from webhooks_app import emit


class Command(BaseCommand):
    help = "Emit a webhook event, as site code would with webhooks_app.emit()."

    def add_arguments(self, parser):
        parser.add_argument("event_type")
        parser.add_argument("data", nargs="?", default="{}", help="JSON object")
        parser.add_argument("--tenant", default=None)
        parser.add_argument("--idempotency-key", default=None)

    def handle(self, event_type, data, tenant, idempotency_key=None, **options):
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as exc:
            raise CommandError(f"data is not valid JSON: {exc}") from None
        try:
            event = emit(event_type, payload, tenant=tenant, idempotency_key=idempotency_key)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        count = event.deliveries.count() if event.pk else 0
        self.stdout.write(
            f"Emitted {event.event_type} {event.public_id}: {count} delivery(ies) queued."
        )
