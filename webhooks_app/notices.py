"""Failure notices without floods: at most one email per endpoint per ``NOTIFY_INTERVAL``.

The first failed delivery of a quiet endpoint is mailed at once; failures within the
interval after it are counted on the endpoint row (count and the last error) and mailed
as one digest when the interval ends (each worker's dispatcher looks every few seconds).
Who sends is decided by a conditional UPDATE, so several workers never send the same
digest twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import F, Q
from django.utils import timezone

from .conf import app_settings
from .models import Endpoint


def delivery_failed(delivery) -> None:
    """Count a delivery that failed for good; mail now if the interval allows."""
    endpoint = delivery.endpoint
    if not endpoint.notify_email:
        return  # nobody to tell: no bookkeeping either
    code = delivery.last_status_code or "no response"
    details = (
        f"Event: {delivery.event_type} ({delivery.event.public_id})\n"
        f"Attempts: {delivery.attempts}\n"
        f"Status code: {code}\n"
        f"Error: {delivery.last_error}"
    )
    Endpoint.objects.filter(id=endpoint.id).update(
        notice_failures=F("notice_failures") + 1, notice_last_error=details[:4000]
    )
    send_digest(endpoint.id)


def _due() -> Q:
    cutoff = timezone.now() - timedelta(seconds=app_settings.NOTIFY_INTERVAL)
    return Q(notice_failures__gt=0) & (
        Q(notice_sent_at__isnull=True) | Q(notice_sent_at__lte=cutoff)
    )


def send_digest(endpoint_id: int) -> bool:
    """Mail what failed at ``endpoint_id`` since its last notice, if one may go out now;
    True if this call sent it."""
    row = (
        Endpoint.objects.filter(_due(), id=endpoint_id)
        .values_list("notice_failures", "notice_last_error", "notice_sent_at")
        .first()
    )
    if row is None:
        return False
    count, details, since = row
    now = timezone.now()
    won = Endpoint.objects.filter(
        id=endpoint_id, notice_failures=count, notice_sent_at=since
    ).update(notice_failures=0, notice_last_error="", notice_sent_at=now)
    if not won:
        return False  # another worker sent it, or a failure came in between (next flush)
    endpoint = Endpoint.objects.get(id=endpoint_id)
    _mail(endpoint, count, details, since)
    return True


def send_due_digests(limit: int = 100) -> int:
    """Send every digest whose interval has ended; returns how many this call sent."""
    ids = list(Endpoint.objects.filter(_due()).values_list("id", flat=True)[:limit])
    return sum(send_digest(i) for i in ids)


def _mail(endpoint: Endpoint, count: int, details: str, since: datetime | None) -> None:
    from .model_events import notify

    if count == 1:
        notify(
            endpoint,
            f"Webhook delivery failed: {endpoint}",
            f"A delivery to the webhook {endpoint} ({endpoint.url}) failed for good.\n"
            f"{details}\n\nYou can replay it from the delivery history.",
        )
        return
    when = f" since {since:%Y-%m-%d %H:%M} UTC" if since else ""
    notify(
        endpoint,
        f"Webhook deliveries failed: {endpoint} ({count})",
        f"{count} deliveries to the webhook {endpoint} ({endpoint.url}) failed for good"
        f"{when}.\nThe last one:\n{details}\n\n"
        f"At most one such email is sent every {app_settings.NOTIFY_INTERVAL:g} seconds. "
        "You can replay the deliveries from the delivery history.",
    )
