"""``manage.py webhooks_magic_link TENANT``: print a one-time link to the portal."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from webhooks_app.portal import magic_link


class Command(BaseCommand):
    help = "Print a signed, single-use link that opens the webhooks portal for TENANT."

    def add_arguments(self, parser):
        parser.add_argument("tenant")
        parser.add_argument(
            "--expires-in", type=int, default=3600, help="Seconds the link stays valid."
        )
        parser.add_argument("--next", default=None, help="A portal path to open.")
        parser.add_argument("--base-url", default="", help="Prefix, e.g. https://app.example.com")

    def handle(self, *args, tenant: str, expires_in: int, next: str | None, base_url: str, **kw):
        try:
            link = magic_link(
                tenant, expires_in=timedelta(seconds=expires_in), next=next, base_url=base_url
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(link)
