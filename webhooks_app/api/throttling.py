"""Rate limits for the actions that send HTTP requests: test deliveries and replays."""

from __future__ import annotations

import hashlib
from typing import Any

from rest_framework.throttling import SimpleRateThrottle

from ..conf import app_settings
from .tenancy import resolve_tenant


class WebhooksActionThrottle(SimpleRateThrottle):
    """``API_THROTTLE_RATE`` per tenant and per ``throttle_scope`` of the view's action.

    Keyed by tenant, not user: the limit protects the tenant's receivers and our
    senders, and a tenant's many users share it. The rate is read on every request
    (DRF's ScopedRateThrottle reads it once at import, which breaks override_settings).
    """

    def __init__(self) -> None:
        # SimpleRateThrottle.__init__ reads the rate; ours depends on the view's scope.
        pass

    def allow_request(self, request: Any, view: Any) -> bool:
        self.scope = getattr(view, "throttle_scope", None)
        self.rate = app_settings.API_THROTTLE_RATE
        if not self.scope or not self.rate:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def tenant(self, request: Any) -> str | None:
        return resolve_tenant(request)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        tenant = self.tenant(request)
        if tenant is None:
            return None
        # Hashed: a tenant key may hold characters some cache backends refuse in keys.
        ident = hashlib.sha256(tenant.encode()).hexdigest()[:32]
        return self.cache_format % {"scope": f"webhooks_app.{self.scope}", "ident": ident}
