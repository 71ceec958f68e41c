"""The customer portal: webhook pages for a site's own customers, outside the admin.

Mount with ``path("webhooks/", include("webhooks_app.portal.urls"))``. Each page acts for
one tenant: the one ``TENANT_RESOLVER`` gives the logged-in user (the API's rule), or
the one a magic link (:func:`magic_link`) opened the session for.
"""

from __future__ import annotations

from datetime import timedelta


def magic_link(
    tenant: str,
    *,
    expires_in: timedelta = timedelta(hours=1),
    next: str | None = None,
    base_url: str = "",
) -> str:
    """A signed, single-use URL opening the portal for ``tenant`` alone (no user needed)."""
    from .magic import make_link

    return make_link(tenant, expires_in=expires_in, next=next, base_url=base_url)
