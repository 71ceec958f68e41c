"""Receivers: the ``webhook_event`` signal, model signals bound in settings, notices."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps
from django.core.mail import send_mail
from django.db.models.signals import post_delete, post_save
from django.utils.module_loading import import_string

from .conf import app_settings

logger = logging.getLogger("webhooks_app")


def on_webhook_event(
    sender, event_type: str, data: Any = None, tenant: str | None = None, **kwargs
) -> None:
    from .events import emit

    emit(event_type, data, tenant=tenant, idempotency_key=kwargs.get("idempotency_key"))


def serialize_instance(instance, fields: list[str] | None) -> dict[str, Any]:
    """The fields named in the binding (default: the primary key only, never a password)."""
    names = fields or ["pk"]
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(instance, name, None)
        out["id" if name == "pk" else name] = value
    return out


def _binding_handler(label: str, binding: dict[str, Any]):
    serializer = binding.get("serializer")
    serialize = import_string(serializer) if isinstance(serializer, str) else serializer
    tenant_of = binding.get("tenant")
    if isinstance(tenant_of, str) and "." in tenant_of:
        tenant_of = import_string(tenant_of)

    def data_for(instance) -> Any:
        if serialize:
            return serialize(instance)
        return serialize_instance(instance, binding.get("fields"))

    def tenant_for(instance) -> str | None:
        if callable(tenant_of):
            return tenant_of(instance)
        if isinstance(tenant_of, str):
            value = getattr(instance, tenant_of, None)
            return None if value is None else str(value)
        return None

    def on_save(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:
        if raw:
            return  # loaddata
        event_type = binding.get("created" if created else "updated")
        if event_type:
            from .events import emit

            emit(event_type, data_for(instance), tenant=tenant_for(instance))

    def on_delete(sender, instance, **kwargs) -> None:
        event_type = binding.get("deleted")
        if event_type:
            from .events import emit

            emit(event_type, data_for(instance), tenant=tenant_for(instance))

    return on_save, on_delete


_connected: list = []


def connect_model_signals() -> None:
    """Bind ``WEBHOOKS_APP['MODEL_EVENTS']``: {"app.Model": {"created": "type", ...}}."""
    for label, binding in app_settings.MODEL_EVENTS.items():
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            continue  # checks.E003 reports it
        on_save, on_delete = _binding_handler(label, binding)
        _connected.append((on_save, on_delete))  # signals hold weak references
        post_save.connect(on_save, sender=model, dispatch_uid=f"webhooks_app.save.{label}")
        post_delete.connect(on_delete, sender=model, dispatch_uid=f"webhooks_app.delete.{label}")


def notify(endpoint, subject: str, body: str) -> None:
    """Email the endpoint's notify_email, if any; a mail failure is logged, never raised
    (notices are sent from sender threads and on-commit hooks)."""
    if not endpoint.notify_email:
        return
    try:
        send_mail(subject, body, None, [endpoint.notify_email])
    except Exception as exc:
        logger.warning("notice %r for endpoint %s not sent: %s", subject, endpoint.pk, exc)


def notify_failure(sender, delivery, **kwargs) -> None:
    endpoint = delivery.endpoint
    code = delivery.last_status_code or "no response"
    notify(
        endpoint,
        f"Webhook delivery failed: {endpoint}",
        f"The {delivery.event_type} event ({delivery.event.public_id}) could not be "
        f"delivered to the webhook {endpoint} ({endpoint.url}) after {delivery.attempts} "
        f"attempt(s).\nStatus code: {code}\nError: {delivery.last_error}\n\n"
        "You can replay it from the delivery history.",
    )


def notify_disabled(sender, endpoint, reason: str, **kwargs) -> None:
    logger.warning("webhook endpoint %s disabled: %s", endpoint.pk, reason)
    notify(
        endpoint,
        f"Webhook disabled: {endpoint}",
        f"The webhook {endpoint} ({endpoint.url}) was disabled: {reason}\n"
        "Fix the receiver, then enable the webhook again.",
    )
