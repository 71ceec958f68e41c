"""Whether a tenant has the webhooks feature (e.g. by plan): one rule for every path.

``WEBHOOKS_APP["FEATURE_GATE"]`` is a ``callable(request, tenant) -> bool``. The API and
the portal call it with the request; the delivery engine, which has no request, asks at
send time with ``request=None`` — or calls ``WEBHOOKS_APP["TENANT_GATE"]``, a
``callable(tenant) -> bool``, when the site sets one (for gates that read the request).
A tenant refused at send time gets its deliveries recorded as failed with
:data:`FEATURE_UNAVAILABLE`; they can be replayed once the plan allows webhooks again.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy as _

from .conf import app_settings

logger = logging.getLogger("webhooks_app.gating")

FEATURE_UNAVAILABLE = _("Webhooks are not available on your plan. Upgrade to use webhooks.")
# Recorded on deliveries (plain text in the database, not translated per reader).
FEATURE_UNAVAILABLE_AT_SEND = (
    "Not sent: webhooks are not available on this account's plan. Replay this delivery "
    "once the plan includes webhooks."
)


def load_hook(name: str) -> Any:
    """The callable a ``WEBHOOKS_APP[name]`` setting names (a dotted path or the callable
    itself), or None when unset; ImproperlyConfigured names the setting on a typo."""
    path = getattr(app_settings, name)
    if not path:
        return None
    if not isinstance(path, str):
        return path
    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"WEBHOOKS_APP[{name!r}] = {path!r} cannot be imported: {exc}"
        ) from exc


def feature_enabled(tenant: str | None, request: Any = None) -> bool:
    """True if ``tenant`` may use webhooks; ``request=None`` when no request exists."""
    if request is None:
        tenant_gate = load_hook("TENANT_GATE")
        if tenant_gate is not None:
            return bool(tenant_gate(tenant))
    gate = load_hook("FEATURE_GATE")
    if gate is None:
        return True
    return bool(gate(request, tenant))


def sending_allowed(tenant: str) -> bool:
    """The engine's check before sending a tenant's deliveries; a gate that raises counts
    as a refusal (the deliveries are recorded failed and replayable, never stranded)."""
    try:
        return feature_enabled(tenant, None)
    except Exception:
        logger.exception("the feature gate raised for tenant %r; not sending", tenant)
        return False
