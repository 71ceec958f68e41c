"""Small renderers shared by the admin pages (status badges)."""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import Delivery

STATUS_CSS = {
    Delivery.Status.SUCCEEDED: "wh-ok",
    Delivery.Status.FAILED: "wh-fail",
    Delivery.Status.PENDING: "wh-pending",
}


def status_badge(status: str | None) -> str:
    if not status:
        return format_html('<span class="wh-muted">{}</span>', _("never"))
    label = Delivery.Status(status).label
    return format_html('<span class="wh-badge {}">{}</span>', STATUS_CSS[status], label)
