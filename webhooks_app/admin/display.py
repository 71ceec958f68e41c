"""Small renderers shared by the admin pages (status badges)."""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import Delivery, Endpoint

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


BREAKER_CSS = {
    Endpoint.BreakerState.CLOSED: "wh-ok",
    Endpoint.BreakerState.OPEN: "wh-fail",
    Endpoint.BreakerState.HALF_OPEN: "wh-pending",
}
BREAKER_HELP = {
    Endpoint.BreakerState.CLOSED: _("Delivering normally."),
    Endpoint.BreakerState.OPEN: _(
        "Recent attempts failed: deliveries wait for the cool-down, then one probe is sent."
    ),
    Endpoint.BreakerState.HALF_OPEN: _(
        "A probe delivery is being sent; success resumes delivery in order of due time."
    ),
}


def breaker_badge(state: str) -> str:
    """The circuit breaker's state, with what it means as a tooltip."""
    return format_html(
        '<span class="wh-badge {}" title="{}">{}</span>',
        BREAKER_CSS[state],
        BREAKER_HELP[state],
        Endpoint.BreakerState(state).label,
    )
