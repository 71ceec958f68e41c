"""manage.py webhooks_send_due: send what is due in this process (cron / debugging)."""

from django.core.management.base import BaseCommand

from webhooks_app.engine import drain


class Command(BaseCommand):
    help = "Send every delivery that is due now, in this process, then exit."

    def add_arguments(self, parser):
        parser.add_argument("--max-seconds", type=float, default=60.0)

    def handle(self, max_seconds, **options):
        n = drain(max_seconds=max_seconds)
        self.stdout.write(f"{n} delivery attempt(s) made.")
