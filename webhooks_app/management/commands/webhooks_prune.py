"""manage.py webhooks_prune [--days N] [--dry-run]"""

from django.core.management.base import BaseCommand, CommandError

from webhooks_app import services


class Command(BaseCommand):
    help = (
        "Delete finished deliveries, their attempts and their events older than "
        "RETENTION_DAYS (pending deliveries are never deleted)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=None, help="default: RETENTION_DAYS")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, days=None, dry_run=False, **options):
        if days is not None and days <= 0:
            raise CommandError("--days must be more than 0.")
        result = services.prune(days=days, dry_run=dry_run)
        if result.cutoff is None and not dry_run:
            self.stdout.write("RETENTION_DAYS is 0: deliveries are kept; " + str(result))
            return
        self.stdout.write(f"{result} in {result.seconds:.1f} s.")
