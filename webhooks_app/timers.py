"""Inactivity events: ``touch()`` pushes a key's deadline back; the workers emit once idle.

A timer is one row (``InactivityTimer``), written in the caller's transaction like
``emit()``. Each worker's dispatcher calls :func:`fire_due` every poll interval: in ONE
transaction it takes the due rows, emits their events and deletes the rows, so a worker
killed at any point has either emitted and deleted, or done nothing and the row is still
due for the next worker. A touch after the event starts a new cycle (a new row).
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, router, transaction
from django.utils import timezone

logger = logging.getLogger("webhooks_app.timers")

MAX_KEY_LENGTH = 200
FIRE_BATCH = 100


def _idle_seconds(idle: Any) -> float:
    if isinstance(idle, timedelta):
        seconds = idle.total_seconds()
    elif isinstance(idle, int | float) and not isinstance(idle, bool):
        seconds = float(idle)
    else:
        raise ValidationError({"idle": ["Give the idle time as a timedelta or seconds."]})
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 366 * 86400:
        raise ValidationError({"idle": ["The idle time must be between 0 and 366 days."]})
    return seconds


def touch(
    key: str,
    event_type: str,
    data: Any = None,
    *,
    idle: timedelta | float = timedelta(minutes=30),
    tenant: str | None = None,
    using: str | None = None,
):
    """Record activity on ``key``: ``event_type`` is emitted with ``data`` once the key has
    seen no touch for ``idle``. Each call moves the deadline and replaces the data (and
    type and tenant). Runs in the caller's transaction; returns the timer row."""
    from . import events, jsonenc
    from .conf import app_settings
    from .models import InactivityTimer

    if (
        not isinstance(key, str)
        or not key
        or len(key) > MAX_KEY_LENGTH
        or "\x00" in key
        or jsonenc.has_lone_surrogate(key)
    ):
        raise ValidationError({"key": [f"The key must be text of 1-{MAX_KEY_LENGTH} characters."]})
    tenant = events.clean_tenant(tenant)
    seconds = _idle_seconds(idle)
    info = events.check_event_type(event_type)
    if event_type == events.TEST_EVENT:
        raise ValidationError({"event_type": ["webhook.test is only sent by the Test button."]})
    # Normalised as emit() does (refusing what JSON or the database cannot carry), so the
    # caller hears about bad data now, not a worker half an hour later.
    as_json = jsonenc.normalise({} if data is None else data, path="data")
    if info["schema"] and app_settings.VALIDATE_PAYLOADS:
        events.validate_payload(event_type, as_json, info, normalised=True)
    now = timezone.now()
    db = using or router.db_for_write(InactivityTimer)
    row = InactivityTimer(
        key=key,
        tenant=tenant or "",
        event_type=event_type,
        data=as_json,
        idle_seconds=seconds,
        due_at=now + timedelta(seconds=seconds),
        created_at=now,
        touched_at=now,
    )
    # One INSERT ... ON CONFLICT DO UPDATE: two concurrent first touches of a key cannot
    # both insert, and the cycle's created_at survives later touches.
    InactivityTimer.objects.using(db).bulk_create(
        [row],
        update_conflicts=True,
        unique_fields=["key"],
        update_fields=["tenant", "event_type", "data", "idle_seconds", "due_at", "touched_at"],
    )
    return row


def cancel_touch(key: str, *, using: str | None = None) -> bool:
    """Drop ``key``'s pending inactivity event, if any; True if there was one."""
    from .models import InactivityTimer

    db = using or router.db_for_write(InactivityTimer)
    deleted, _ = InactivityTimer.objects.using(db).filter(key=key).delete()
    return bool(deleted)


def fire_due(*, limit: int = FIRE_BATCH) -> int:
    """Emit the events of timers whose deadline passed; returns how many fired.

    A cheap read first (it never takes SQLite's write lock), then one transaction that
    locks the due rows (skipping rows other workers hold on PostgreSQL), emits and deletes.
    A type that can no longer be emitted (removed from the settings, data failing a newer
    schema) is logged and its timer dropped: it would never succeed.
    """
    from .engine import _writing
    from .events import emit
    from .models import InactivityTimer

    db = router.db_for_write(InactivityTimer)
    now = timezone.now()
    due = InactivityTimer.objects.using(db).filter(due_at__lte=now)
    if not due.exists():
        return 0
    fired = 0
    with _writing(db), transaction.atomic(using=db):
        rows = due.order_by("due_at")
        if connections[db].features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        for timer in list(rows[:limit]):
            try:
                with transaction.atomic(using=db):
                    emit(timer.event_type, timer.data, tenant=timer.tenant or None, using=db)
            except ValidationError as exc:
                logger.error(
                    "inactivity event %s for key %r dropped: %s",
                    timer.event_type,
                    timer.key,
                    " ".join(exc.messages),
                )
            InactivityTimer.objects.using(db).filter(pk=timer.pk).delete()
            fired += 1
    return fired
