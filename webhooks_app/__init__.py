"""Outbound webhooks for Django: ``from webhooks_app import emit``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .models import Event


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


def register_payload_format(name: str, fn: Any, **options: Any) -> None:
    """Add a payload format endpoints can choose; see ``webhooks_app.formats``."""
    from .formats import register_payload_format as _register

    _register(name, fn, **options)
