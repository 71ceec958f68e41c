"""manage.py webhooks_send_due: send what is due in this process (cron / debugging)."""

from django.core.management.base import BaseCommand

from webhooks_app.engine import drain
from webhooks_app.timers import fire_due


class Command(BaseCommand):
    help = "Emit due inactivity events, send every delivery that is due now, then exit."

    def add_arguments(self, parser):
        parser.add_argument("--max-seconds", type=float, default=60.0)

    def handle(self, max_seconds, **options):
        fired = batch = fire_due()
        while batch:
            batch = fire_due()
            fired += batch
        n = drain(max_seconds=max_seconds)
        if fired:
            self.stdout.write(f"{fired} inactivity event(s) emitted.")
        self.stdout.write(f"{n} delivery attempt(s) made.")
