"""manage.py demo_seed: an admin login, a receiver inbox and one endpoint pointing at it."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from project.receiver.models import Inbox
from webhooks_app import services
from webhooks_app.models import Endpoint


class Command(BaseCommand):
    help = "Seed the demo: admin user, receiver inbox, and an endpoint subscribed to all events."

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-url", default=os.environ.get("DEMO_BASE_URL", "http://127.0.0.1:8000")
        )

    def handle(self, base_url, **options):
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
        # A customer (not staff) for the webhooks portal at /webhooks/.
        if not User.objects.filter(username="customer").exists():
            User.objects.create_user("customer", "customer@example.com", "customer")
        url = f"{base_url.rstrip('/')}/receiver/demo/"
        if not Endpoint.objects.filter(url=url).exists():
            from webhooks_app.events import event_types

            types = [t for t in event_types() if t != "webhook.test"]
            _, secret = services.create_endpoint(
                url=url,
                events=types,
                name="Demo receiver",
                description="The demo site's own receiver page, /receiver/",
            )
            Inbox.objects.update_or_create(slug="demo", defaults={"secret": secret})
        self.stdout.write("Admin login: admin / admin; portal login: customer / customer")
