"""Who may use the webhooks API: the configured DRF classes, a tenant, and the feature gate."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.settings import api_settings

from .. import gating
from ..conf import app_settings
from .tenancy import resolve_tenant


class HasTenant(BasePermission):
    """The resolver found a tenant for this request (a user without one gets a 403)."""

    message = "This account has no webhooks tenant."
    code = "no_tenant"

    def has_permission(self, request: Any, view: Any) -> bool:
        return resolve_tenant(request) is not None


class HasWebhooksFeature(BasePermission):
    """``WEBHOOKS_APP["FEATURE_GATE"]`` allows this tenant (e.g. webhooks on higher plans)."""

    message = gating.FEATURE_UNAVAILABLE
    code = "feature_unavailable"

    def has_permission(self, request: Any, view: Any) -> bool:
        return gating.feature_enabled(resolve_tenant(request), request)


# Checked in this order, each only after the previous one passed, so the resolver and the
# gate never see an anonymous request. A list rather than ``&``: DRF's composed permission
# drops the member's ``message``, and the plan gate's 403 must say why.
TENANT_ACCESS: tuple[type[BasePermission], ...] = (IsAuthenticated, HasTenant, HasWebhooksFeature)


def _load(paths: list[Any]) -> list[Any]:
    return [import_string(p) if isinstance(p, str) else p for p in paths]


def api_authentication_classes() -> list[Any]:
    """``API_AUTHENTICATION_CLASSES``, or the project's DRF defaults."""
    configured = app_settings.API_AUTHENTICATION_CLASSES
    if configured is None:
        return list(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    return _load(configured)


def api_permission_classes() -> list[Any]:
    """The configured (or project default) classes, then authentication, tenant and gate.

    The tenant and gate checks are always appended: a site's own permission classes can
    narrow access but never skip tenant isolation.
    """
    configured = app_settings.API_PERMISSION_CLASSES
    base = (
        list(api_settings.DEFAULT_PERMISSION_CLASSES) if configured is None else _load(configured)
    )
    # AllowAny (DRF's default default) is a no-op in this AND; left in, it would also make
    # the schema advertise anonymous access.
    return [*(c for c in base if c is not AllowAny), *TENANT_ACCESS]
