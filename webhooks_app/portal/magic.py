"""Magic links: signed (django.core.signing), expiring, single-use portal URLs.

The token carries the tenant, a random nonce, its expiry and an optional next page,
signed with SECRET_KEY under a salt of its own. Redeeming writes the nonce to
``MagicLinkUse`` (unique), so a second use fails on the constraint, even in a race.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

from django.core import signing
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _

from ..api.tenancy import MAX_TENANT_LENGTH
from ..models import MagicLinkUse

SALT = "webhooks_app.portal.magic_link"
MAX_EXPIRES_IN = timedelta(days=7)


class InvalidLink(Exception):
    """Why a link does not open the portal (the message is shown to the visitor)."""


def make_token(
    tenant: str, *, expires_in: timedelta = timedelta(hours=1), next: str | None = None
) -> str:
    if not isinstance(tenant, str) or len(tenant) > MAX_TENANT_LENGTH:
        raise ValueError(f"tenant must be text of at most {MAX_TENANT_LENGTH} characters")
    if not timedelta(0) < expires_in <= MAX_EXPIRES_IN:
        raise ValueError("expires_in must be more than 0 and at most 7 days")
    if next is not None and not is_portal_path(next):
        raise ValueError("next must be a path inside the portal")
    payload = {
        "t": tenant,
        "n": secrets.token_urlsafe(24),
        "e": int(time.time() + expires_in.total_seconds()),
    }
    if next:
        payload["x"] = next
    return signing.dumps(payload, salt=SALT, compress=True)


def make_link(
    tenant: str,
    *,
    expires_in: timedelta = timedelta(hours=1),
    next: str | None = None,
    base_url: str = "",
) -> str:
    token = make_token(tenant, expires_in=expires_in, next=next)
    return base_url.rstrip("/") + reverse("webhooks_portal:magic", args=[token])


def is_portal_path(path: str) -> bool:
    root = reverse("webhooks_portal:list")
    return (
        isinstance(path, str)
        and path.startswith(root)
        and "//" not in path
        and "\\" not in path
        # Browsers drop tabs and newlines from URLs ("/\t/evil.example" becomes
        # "//evil.example" when the portal is mounted at the root): only printable text.
        and path.isprintable()
        and " " not in path
        and url_has_allowed_host_and_scheme(path, allowed_hosts=None)
    )


def read_token(token: str) -> dict:
    """The token's payload if it is genuine, unexpired and unused; else InvalidLink."""
    try:
        payload = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        raise InvalidLink(_("This link is not valid. Ask for a new one.")) from None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("t"), str)
        or not isinstance(payload.get("n"), str)
        or not isinstance(payload.get("e"), int)
    ):
        raise InvalidLink(_("This link is not valid. Ask for a new one."))
    if payload["e"] < time.time():
        raise InvalidLink(_("This link has expired. Ask for a new one."))
    if MagicLinkUse.objects.filter(nonce=payload["n"]).exists():
        raise InvalidLink(_("This link was already used. Each link opens the portal once."))
    return payload


def redeem(token: str) -> dict:
    """Mark the link used (once, atomically) and return its payload; else InvalidLink."""
    payload = read_token(token)
    try:
        with transaction.atomic():
            MagicLinkUse.objects.create(
                nonce=payload["n"],
                tenant=payload["t"],
                expires_at=datetime.fromtimestamp(payload["e"], UTC),
            )
    except IntegrityError:
        raise InvalidLink(
            _("This link was already used. Each link opens the portal once.")
        ) from None
    MagicLinkUse.objects.filter(expires_at__lt=datetime.now(UTC) - timedelta(days=1)).delete()
    return payload
