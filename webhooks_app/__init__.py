"""Outbound webhooks for Django: ``from webhooks_app import emit``."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .models import Event, InactivityTimer


def emit(
    event_type: str,
    data: Any = None,
    *,
    tenant: str | None = None,
    idempotency_key: str | None = None,
) -> Event:
    """Record an event and queue its deliveries in the caller's transaction."""
    from .events import emit as _emit

    return _emit(event_type, data, tenant=tenant, idempotency_key=idempotency_key)


def touch(
    key: str,
    event_type: str,
    data: Any = None,
    *,
    idle: timedelta | float = timedelta(minutes=30),
    tenant: str | None = None,
) -> InactivityTimer:
    """Activity on ``key``: emit ``event_type`` once ``key`` has been idle for ``idle``
    (default 30 minutes). Each call pushes the deadline back and replaces the data; runs
    in the caller's transaction. The qcluster workers emit it when due."""
    from .timers import touch as _touch

    return _touch(key, event_type, data, idle=idle, tenant=tenant)


def cancel_touch(key: str) -> bool:
    """Drop ``key``'s pending inactivity event; True if one was pending."""
    from .timers import cancel_touch as _cancel

    return _cancel(key)
def register_payload_format(name: str, fn: Any, **options: Any) -> None:
    """Add a payload format endpoints can choose; see ``webhooks_app.formats``."""
    from .formats import register_payload_format as _register

    _register(name, fn, **options)
