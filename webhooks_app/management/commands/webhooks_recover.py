"""manage.py webhooks_recover <endpoint id> --since WHEN [--until WHEN]"""

import re
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from webhooks_app import services
from webhooks_app.models import Endpoint

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def moment(value: str):
    """``2026-11-30T08:00Z`` (ISO 8601) or a duration ago: ``90m``, ``24h``, ``7d``."""
    m = _AGO.match(value.strip())
    if m:
        return timezone.now() - timedelta(**{_UNITS[m[2]]: float(m[1])})
    return value


class Command(BaseCommand):
    help = "Replay every failed delivery of an endpoint created since a time (bulk recovery)."

    def add_arguments(self, parser):
        parser.add_argument("endpoint", type=int, help="endpoint id")
        parser.add_argument("--since", required=True, help="ISO 8601, or e.g. 24h / 7d ago")
        parser.add_argument("--until", default=None, help="ISO 8601, or e.g. 1h ago")

    def handle(self, endpoint, since, until=None, **options):
        ep = Endpoint.objects.filter(pk=endpoint).first()
        if ep is None:
            raise CommandError(f"No endpoint with id {endpoint}.")
        try:
            result = services.recover(
                ep, since=moment(since), until=moment(until) if until else None
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(
            f"{result.queued} failed delivery(ies) of endpoint {ep.pk} queued to be sent again."
        )
