"""Receivers: the ``webhook_event`` signal, model signals bound in settings, notices."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.core.mail import send_mail
from django.db.models import Model
from django.db.models.signals import post_delete, post_save, pre_save
from django.utils.module_loading import import_string

from .conf import app_settings

logger = logging.getLogger("webhooks_app")


def on_webhook_event(
    sender, event_type: str, data: Any = None, tenant: str | None = None, **kwargs
) -> None:
    from .events import emit

    emit(event_type, data, tenant=tenant, idempotency_key=kwargs.get("idempotency_key"))


DEFAULT_IGNORE_FIELDS = ["last_login"]


def serialize_instance(instance, fields: list[str] | None) -> dict[str, Any]:
    """The fields named in the binding (default: the primary key only, never a password).

    A related object is sent as its primary key; dates, Decimals, UUIDs... are written
    by emit() as DjangoJSONEncoder writes them.
    """
    names = fields or ["pk"]
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(instance, name, None)
        if isinstance(value, Model):
            value = value.pk
        out["id" if name == "pk" else name] = value
    return out


def _ignored(binding: dict[str, Any]) -> set[str]:
    value = binding.get("ignore_fields")
    return set(DEFAULT_IGNORE_FIELDS if value is None else value)


def _fields(model, names) -> dict[str, Any]:
    """{name: field} for the names that are fields of ``model`` (checks.E003 reports the
    others; a typo in a setting must never make the site's own save() raise)."""
    out = {}
    for name in names or ():
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        if getattr(field, "attname", None):
            out[field.name] = field
    return out


def _watched_values(instance, watch) -> dict[str, Any]:
    return {n: getattr(instance, f.attname) for n, f in _fields(type(instance), watch).items()}


def _changed(instance, binding: dict[str, Any], update_fields) -> bool:
    """Whether an update is worth an event (``ignore_fields`` / ``watch_fields``).

    ``update_fields`` that touch only ignored fields (by default ``last_login``, which
    Django writes at every login) send nothing. With ``watch_fields``, an update sends
    only when one of them changed: told by ``update_fields``, or, for a plain save(), by
    comparing with the values read just before it.
    """
    watch = set(_fields(type(instance), binding.get("watch_fields")))
    if update_fields is not None:
        touched = set(_fields(type(instance), update_fields))
        if touched and touched <= _ignored(binding):
            return False
        if watch and not touched & watch:
            return False
    if watch:
        before = getattr(instance, "_webhooks_app_before", None)
        if before is not None:
            return before != _watched_values(instance, watch)
    return True


def _binding(label: str) -> dict[str, Any] | None:
    """The binding as the settings say now (they are read live, like every setting)."""
    return app_settings.MODEL_EVENTS.get(label)


def _binding_handler(label: str):
    def serializer_of(binding: dict[str, Any]):
        serializer = binding.get("serializer")
        return import_string(serializer) if isinstance(serializer, str) else serializer

    def data_for(binding: dict[str, Any], instance) -> Any:
        serialize = serializer_of(binding)
        if serialize:
            return serialize(instance)
        return serialize_instance(instance, binding.get("fields"))

    def tenant_for(binding: dict[str, Any], instance) -> str | None:
        tenant_of = binding.get("tenant")
        if isinstance(tenant_of, str) and "." in tenant_of:
            tenant_of = import_string(tenant_of)
        if callable(tenant_of):
            return tenant_of(instance)
        if isinstance(tenant_of, str):
            value = getattr(instance, tenant_of, None)
            return None if value is None else str(value)
        return None

    def before_save(sender, instance, raw: bool = False, update_fields=None, **kwargs) -> None:
        binding = _binding(label) or {}
        instance.__dict__.pop("_webhooks_app_before", None)
        if raw or not binding.get("updated") or instance._state.adding:
            return
        if update_fields is not None or instance.pk is None:
            return  # update_fields tell what changes
        watch = _fields(type(instance), binding.get("watch_fields"))
        if not watch:
            return
        names = {f.attname: name for name, f in watch.items()}
        before = (
            type(instance)
            ._base_manager.using(kwargs.get("using"))
            .filter(pk=instance.pk)
            .values(*names)
            .first()
        )
        if before is not None:
            instance._webhooks_app_before = {names[k]: v for k, v in before.items()}

    def on_save(
        sender, instance, created: bool, raw: bool = False, update_fields=None, **kwargs
    ) -> None:
        binding = _binding(label)
        if raw or binding is None:
            return  # loaddata, or the binding was removed
        event_type = binding.get("created" if created else "updated")
        if not created and event_type and not _changed(instance, binding, update_fields):
            return
        if event_type:
            from .events import emit

            emit(event_type, data_for(binding, instance), tenant=tenant_for(binding, instance))

    def on_delete(sender, instance, **kwargs) -> None:
        binding = _binding(label)
        event_type = binding and binding.get("deleted")
        if event_type:
            from .events import emit

            emit(event_type, data_for(binding, instance), tenant=tenant_for(binding, instance))

    return before_save, on_save, on_delete


_connected: list = []


def connect_model_signals() -> None:
    """Bind ``WEBHOOKS_APP['MODEL_EVENTS']``: {"app.Model": {"created": "type", ...}}."""
    for label in app_settings.MODEL_EVENTS:
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):
            continue  # checks.E003 reports it
        before_save, on_save, on_delete = _binding_handler(label)
        _connected.append((before_save, on_save, on_delete))  # signals hold weak references
        pre_save.connect(before_save, sender=model, dispatch_uid=f"webhooks_app.pre.{label}")
        post_save.connect(on_save, sender=model, dispatch_uid=f"webhooks_app.save.{label}")
        post_delete.connect(on_delete, sender=model, dispatch_uid=f"webhooks_app.delete.{label}")


def notify(endpoint, subject: str, body: str) -> None:
    """Email the endpoint's notify_email, if any; a mail failure is logged, never raised
    (notices are sent from sender threads and on-commit hooks)."""
    if not endpoint.notify_email:
        return
    # Django refuses a header with a line break (BadHeaderError): an endpoint name with
    # a newline must not silently drop the notice, so the subject becomes one line.
    subject = " ".join(str(subject).split())[:200]
    try:
        send_mail(subject, body, None, [endpoint.notify_email])
    except Exception as exc:
        logger.warning("notice %r for endpoint %s not sent: %s", subject, endpoint.pk, exc)


def notify_failure(sender, delivery, **kwargs) -> None:
    """One email per endpoint per NOTIFY_INTERVAL, the rest in a digest (notices.py)."""
    from . import notices

    notices.delivery_failed(delivery)


def notify_disabled(sender, endpoint, reason: str, **kwargs) -> None:
    logger.warning("webhook endpoint %s disabled: %s", endpoint.pk, reason)
    notify(
        endpoint,
        f"Webhook disabled: {endpoint}",
        f"The webhook {endpoint} ({endpoint.url}) was disabled: {reason}\n"
        "Fix the receiver, then enable the webhook again.",
    )
