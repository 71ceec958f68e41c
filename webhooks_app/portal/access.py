"""Who a portal request acts for: its tenant, the feature gate and PORTAL_PERMISSION.

A session opened by a magic link carries its tenant (and no user); otherwise the user
must be logged in and the tenant is ``TENANT_RESOLVER``'s, exactly as in the API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from .. import gating
from ..api.tenancy import MAX_TENANT_LENGTH, resolve_tenant
from ..conf import app_settings

SESSION_KEY = "webhooks_app_portal"


@dataclass
class Access:
    tenant: str | None
    magic: bool = False  # opened by a magic link (no Django user involved)
    refusal: str = ""  # why the request may not use the portal ("" if it may)
    login_required: bool = False


def magic_session(request: HttpRequest) -> str | None:
    """The tenant of a live magic-link session, or None."""
    session = getattr(request, "session", None)
    data = session.get(SESSION_KEY) if session is not None else None
    if not isinstance(data, dict):
        return None
    tenant, expires = data.get("tenant"), data.get("expires", 0)
    if not isinstance(tenant, str) or len(tenant) > MAX_TENANT_LENGTH:
        return None
    if not isinstance(expires, int | float) or expires < time.time():
        session.pop(SESSION_KEY, None)
        return None
    # Django's login() keeps an anonymous session's data: someone who logs in later in
    # this browser (a shared computer) must not inherit the link's tenant.
    if data.get("user") != _user_key(request):
        session.pop(SESSION_KEY, None)
        return None
    return tenant


def _user_key(request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    return str(user.pk) if user is not None and user.is_authenticated else None


def start_magic_session(request: HttpRequest, tenant: str) -> None:
    # A new session key: a session id known before the link was opened is worth nothing.
    request.session.cycle_key()
    request.session[SESSION_KEY] = {
        "tenant": tenant,
        "expires": int(time.time() + app_settings.PORTAL_SESSION_SECONDS),
        "user": _user_key(request),  # who was logged in (or None) when it was opened
    }


def end_magic_session(request: HttpRequest) -> None:
    request.session.pop(SESSION_KEY, None)


def default_permission(request: HttpRequest, tenant: str) -> bool:
    """Any authenticated user the resolver puts in ``tenant``."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated)


def _permission() -> Any:
    return gating.load_hook("PORTAL_PERMISSION") or default_permission


def portal_access(request: HttpRequest) -> Access:
    """Resolve and check, in order: tenant (session or user), feature gate, permission."""
    tenant = magic_session(request)
    if tenant is not None:
        access = Access(tenant, magic=True)
    else:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return Access(None, login_required=True)
        tenant = resolve_tenant(request)
        if tenant is None:
            return Access(None, refusal=str(_("This account has no webhooks tenant.")))
        access = Access(tenant)
    # A magic session acts for the link's tenant, not for whoever may be logged in: a
    # gate that reads the request (its user's plan) would judge the wrong account, so
    # the tenant-only TENANT_GATE decides when the site has one (as at send time).
    gate_request = None if access.magic and gating.load_hook("TENANT_GATE") else request
    if not gating.feature_enabled(tenant, gate_request):
        access.refusal = str(gating.FEATURE_UNAVAILABLE)
    # A magic link is the permission itself: it was issued for this tenant by the site.
    elif not access.magic and not _permission()(request, tenant):
        access.refusal = str(_("You are not allowed to manage this account's webhooks."))
    return access
