"""Which tenant a REST API request acts for.

``WEBHOOKS_APP["TENANT_RESOLVER"]`` names a ``callable(request) -> str | None``; the API
calls it once per request, after authentication, and filters every query by the result.
Returning ``None`` means "this user has no webhooks account": the request gets a 403.

The default, :func:`default_tenant_resolver`, maps the authenticated user to a tenant:

1. ``user.webhooks_tenant`` if the user object has it (a model field, a property, or an
   attribute set by middleware); a callable is called with no arguments. This is the
   hook for sites whose users belong to an account, team or organisation, e.g.
   ``webhooks_tenant = property(lambda self: f"org_{self.organisation_id}")``.
2. Otherwise ``str(user.pk)``: every user is a tenant of their own. Two users never share
   endpoints unless the site says so; this is the safe default for a multi-user site.

A single-tenant site, where the API should manage the same endpoints as the admin (the
default tenant ``""``), sets ``"TENANT_RESOLVER":
"webhooks_app.api.tenancy.single_tenant_resolver"``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ..conf import app_settings

# Endpoint.tenant / Delivery.tenant are CharField(max_length=100).
MAX_TENANT_LENGTH = 100
_CACHE_ATTR = "_webhooks_app_tenant"


def default_tenant_resolver(request: Any) -> str | None:
    """``user.webhooks_tenant`` when the user has one, else ``str(user.pk)``."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    tenant = getattr(user, "webhooks_tenant", None)
    if callable(tenant):
        tenant = tenant()
    if tenant is not None:
        return str(tenant)
    return str(user.pk)


def single_tenant_resolver(request: Any) -> str | None:
    """Every authenticated user acts for the default tenant ``""`` (single-tenant sites)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return ""


def resolve_tenant(request: Any) -> str | None:
    """The tenant of ``request`` from the configured resolver, computed once per request."""
    cached = getattr(request, _CACHE_ATTR, _CACHE_ATTR)
    if cached is not _CACHE_ATTR:
        return cached
    path = app_settings.TENANT_RESOLVER
    try:
        resolver = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"WEBHOOKS_APP['TENANT_RESOLVER'] = {path!r} cannot be imported: {exc}"
        ) from exc
    tenant = resolver(request)
    if tenant is not None and (not isinstance(tenant, str) or len(tenant) > MAX_TENANT_LENGTH):
        # A misconfigured resolver must never widen access, so refuse loudly.
        raise ImproperlyConfigured(
            f"WEBHOOKS_APP['TENANT_RESOLVER'] ({path}) returned {tenant!r}; it must return "
            f"None or text of at most {MAX_TENANT_LENGTH} characters."
        )
    setattr(request, _CACHE_ATTR, tenant)
    return tenant
