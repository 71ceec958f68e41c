"""Encryption of endpoint secrets and header values at rest (Fernet; keys read live)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from .conf import app_settings


def _derived_key(secret_key: str) -> str:
    digest = hashlib.sha256(b"webhooks_app.secret-at-rest:" + secret_key.encode())
    return base64.urlsafe_b64encode(digest.digest()).decode()


def _fernet() -> MultiFernet:
    keys = app_settings.ENCRYPTION_KEYS
    if not keys:
        # Keys derived from SECRET_KEY, so a default install needs no extra setting; the
        # SECRET_KEY_FALLBACKS still decrypt, so rotating SECRET_KEY the Django way keeps
        # secrets readable until `manage.py webhooks_rotate_keys` re-encrypts them.
        fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", None) or []
        keys = [_derived_key(k) for k in [settings.SECRET_KEY, *fallbacks]]
    return MultiFernet([Fernet(k) for k in keys])


def encrypt(plaintext: str) -> str:
    """Encrypt a secret for storage."""
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """Decrypt a stored secret; raises ValueError (never echoing the token) on failure."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError):
        raise ValueError(
            "An endpoint secret could not be decrypted: check WEBHOOKS_APP['ENCRYPTION_KEYS'] "
            "(or SECRET_KEY_FALLBACKS, if SECRET_KEY changed)."
        ) from None


def reencrypt(token: str) -> str:
    """``token`` encrypted again with the first key (ValueError if no key decrypts it)."""
    try:
        return _fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, ValueError):
        raise ValueError("A stored value could not be decrypted with any configured key.") from None
