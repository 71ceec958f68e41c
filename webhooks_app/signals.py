"""Public signals of webhooks_app.

``webhook_event``
    Send it to emit an event: ``webhook_event.send(sender, event_type=..., data=...,
    tenant=None)`` does what ``webhooks_app.emit()`` does.
``delivery_succeeded`` (``delivery``)
    A delivery got a 2xx. Sent from the worker after the outcome is committed.
``delivery_failed`` (``delivery``)
    A delivery failed for good (attempts used up, 410, refused URL). Replay is possible.
``endpoint_disabled`` (``endpoint``, ``reason``)
    An endpoint was switched off automatically (410 Gone, or AUTO_DISABLE_AFTER).
"""

from django.dispatch import Signal

webhook_event = Signal()
delivery_succeeded = Signal()
delivery_failed = Signal()
endpoint_disabled = Signal()
